"""Scheduler: exact batches, chunking, FCFS, limits, preemption, cancellation, prefix hits."""

from __future__ import annotations

import random

import pytest
import torch

from trtdsl.errors import ConfigError
from trtdsl.runtime.kv_cache import KVCacheManager
from trtdsl.runtime.scheduler import (
    FinishReason,
    Request,
    RequestState,
    ScheduledBatch,
    Scheduler,
    SchedulerError,
)


def _make(num_blocks: int, tpb: int, *, reuse: bool = False, **kw) -> Scheduler:
    kw.setdefault("max_batch_size", 8)
    kw.setdefault("max_num_tokens", 64)
    return Scheduler(KVCacheManager(num_blocks, tpb, enable_prefix_reuse=reuse), **kw)


def _view(batch: ScheduledBatch) -> list[tuple]:
    """(id, token_ids, past_len, block_table, samples) of each scheduled sequence."""
    return [(s.request_id, s.token_ids, s.past_len, s.block_table, s.samples)
            for s in batch.sequences]


def _step(sched: Scheduler, sampled: dict) -> tuple[ScheduledBatch, list[Request]]:
    batch = sched.schedule()
    sched.check_invariants()
    finished = sched.update(batch, sampled)
    sched.check_invariants()
    return batch, finished


def test_first_steps_exact_batches_fcfs_and_generation_first():
    sched = _make(16, 4, max_num_tokens=8)
    a = Request("a", [1, 2, 3, 4, 5], max_new_tokens=3)
    b = Request("b", [6, 7], max_new_tokens=3)
    c = Request("c", [8, 9, 10], max_new_tokens=3)
    for r in (a, b, c):
        sched.add_request(r)
    batch, _ = _step(sched, {"a": 100, "b": 200, "c": 999})
    assert _view(batch) == [
        ("a", [1, 2, 3, 4, 5], 0, [0, 1], True),
        ("b", [6, 7], 0, [2], True),
        ("c", [8], 0, [3], False),          # chunked: only 1 token of budget left
    ]
    assert (a.output_token_ids, b.output_token_ids, c.output_token_ids) == ([100], [200], [])
    assert c.num_computed_tokens == 1
    batch, _ = _step(sched, {"a": 101, "b": 201, "c": 300})
    assert _view(batch) == [
        ("a", [100], 5, [0, 1], True),
        ("b", [200], 2, [2], True),
        ("c", [9, 10], 1, [3], True),
    ]
    x = batch.to_step_inputs()
    assert x.input_ids.tolist() == [100, 200, 9, 10]
    assert x.position_ids.tolist() == [5, 2, 1, 2]
    assert x.past_lens.tolist() == [5, 2, 1]
    assert x.block_tables.tolist() == [[0, 1], [2, 0], [3, 0]]
    assert x.last_token_ids.tolist() == [0, 1, 3]
    assert x.input_ids.dtype == torch.int32
    assert c.output_token_ids == [300]


def test_chunked_long_prompt_spans_steps_and_blocks_followers():
    sched = _make(16, 4, max_num_tokens=4)
    a = Request("a", list(range(10)), max_new_tokens=2)
    b = Request("b", [50, 51, 52], max_new_tokens=2)
    sched.add_request(a)
    sched.add_request(b)
    views = []
    for sampled in ({}, {}, {"a": 90}, {"a": 91, "b": 80}):
        batch, _ = _step(sched, sampled)
        views.append(_view(batch))
    assert views == [
        [("a", [0, 1, 2, 3], 0, [0, 1, 2], False)],
        [("a", [4, 5, 6, 7], 4, [0, 1, 2], False)],
        [("a", [8, 9], 8, [0, 1, 2], True), ("b", [50, 51], 0, [3], False)],
        [("a", [90], 10, [0, 1, 2], True), ("b", [52], 2, [3], True)],
    ]
    assert a.state is RequestState.FINISHED and a.finish_reason is FinishReason.LENGTH
    assert a.output_token_ids == [90, 91]
    assert b.output_token_ids == [80]


def test_unchunked_context_waits_for_a_step_with_room_strict_fcfs():
    sched = _make(16, 4, max_num_tokens=6, enable_chunked_context=False)
    a = Request("a", [1, 2, 3, 4], max_new_tokens=3)
    b = Request("b", [5, 6, 7, 8], max_new_tokens=3)
    c = Request("c", [9], max_new_tokens=3)
    for r in (a, b, c):
        sched.add_request(r)
    batch, _ = _step(sched, {"a": 10})
    assert [s.request_id for s in batch.sequences] == ["a"]   # c fits but must not pass b
    batch, _ = _step(sched, {"a": 11, "b": 20, "c": 30})
    assert _view(batch) == [("a", [10], 4, [0, 1], True), ("b", [5, 6, 7, 8], 0, [2], True),
                            ("c", [9], 0, [3], True)]
    with pytest.raises(ConfigError, match="max_num_tokens"):
        sched.add_request(Request("d", [1] * 5, max_new_tokens=3))  # 5 + 3 - 1 > 6


def test_finish_reasons_outputs_and_blocks_freed():
    sched = _make(16, 2)
    e = Request("e", [1, 2, 3], max_new_tokens=10, end_id=0)
    s = Request("s", [4, 7], max_new_tokens=10, stop_token_ids=[[7, 8], [9, 9, 9]])
    n = Request("n", [5], max_new_tokens=2)
    for r in (e, s, n):
        sched.add_request(r)
    # The prompt of "s" ends with 7: a first output 8 must not match the stop sequence [7, 8].
    _, fin = _step(sched, {"e": 3, "s": 8, "n": 1})
    assert fin == []
    _, fin = _step(sched, {"e": 0, "s": 7, "n": 2})
    assert fin == [e, n]
    assert (e.finish_reason, e.output_token_ids) == (FinishReason.STOP, [3, 0])
    assert (n.finish_reason, n.output_token_ids) == (FinishReason.LENGTH, [1, 2])
    _, fin = _step(sched, {"s": 8})
    assert fin == [s]
    assert (s.finish_reason, s.output_token_ids) == (FinishReason.STOP, [8, 7, 8])
    assert not sched.has_unfinished_requests()
    assert sched.kv_cache.num_free_blocks == 16
    assert sched.kv_cache.stats().used_blocks == 0


def test_max_utilization_preempts_latest_and_recomputes_prompt_plus_output():
    sched = _make(4, 2)
    a = Request("a", [1, 2, 3], max_new_tokens=4)
    b = Request("b", [4, 5, 6], max_new_tokens=4)
    sched.add_request(a)
    sched.add_request(b)
    batches = []
    for sampled in ({"a": 10, "b": 20}, {"a": 11, "b": 21}, {"a": 12}, {"a": 13}, {"b": 22},
                    {"b": 23}):
        batch, _ = _step(sched, sampled)
        batches.append(batch)
    views = [_view(bt) for bt in batches]
    assert views[0] == [("a", [1, 2, 3], 0, [0, 1], True), ("b", [4, 5, 6], 0, [2, 3], True)]
    assert views[1] == [("a", [10], 3, [0, 1], True), ("b", [20], 3, [2, 3], True)]
    # a needs a 3rd block: b (most recently admitted) is preempted; b's tail block 3 goes to a.
    assert views[2] == [("a", [11], 4, [0, 1, 3], True)]
    assert batches[2].preempted == [b]
    assert b.num_preemptions == 1
    # b does not fit again until a finishes (length) and frees its blocks.
    assert views[3] == [("a", [12], 5, [0, 1, 3], True)]
    assert views[4] == [("b", [4, 5, 6, 20, 21], 0, [2, 3, 1], True)]
    assert views[5] == [("b", [22], 5, [2, 3, 1], True)]
    assert a.output_token_ids == [10, 11, 12, 13] and a.finish_reason is FinishReason.LENGTH
    assert b.output_token_ids == [20, 21, 22, 23] and b.finish_reason is FinishReason.LENGTH
    assert sched.num_preemptions == 1


def test_preempted_request_waits_at_front_of_queue():
    sched = _make(4, 2)
    a = Request("a", [1, 2, 3], max_new_tokens=4)
    b = Request("b", [4, 5, 6, 7], max_new_tokens=2)
    c = Request("c", [9], max_new_tokens=2)
    for r in (a, b):
        sched.add_request(r)
    _step(sched, {"a": 10, "b": 20})
    sched.add_request(c)
    # b needs a 3rd block and is itself the most recently admitted: it preempts itself.
    batch = sched.schedule()
    assert _view(batch) == [("a", [10], 3, [0, 1], True)]
    assert batch.preempted == [b]
    assert b.state is RequestState.PREEMPTED and b.num_computed_tokens == 0
    assert sched.waiting == (b, c)      # c, though it would fit, is not admitted this step
    sched.check_invariants()
    sched.update(batch, {"a": 11})
    batch = sched.schedule()
    # a 3 + 2 computed tokens need 3 blocks; b's 5 tokens (3 blocks) do not fit: strict FCFS.
    assert [s.request_id for s in batch.sequences] == ["a"]


def test_guaranteed_no_evict_reserves_up_front_and_never_preempts():
    sched = _make(6, 2, policy="guaranteed_no_evict")
    a = Request("a", [1, 2, 3], max_new_tokens=4)   # reserves 3 + 4 - 1 = 6 tokens = 3 blocks
    b = Request("b", [4, 5, 6], max_new_tokens=4)
    c = Request("c", [7], max_new_tokens=2)
    for r in (a, b, c):
        sched.add_request(r)
    batch, _ = _step(sched, {"a": 10, "b": 20})
    assert _view(batch) == [("a", [1, 2, 3], 0, [0, 1, 2], True),
                            ("b", [4, 5, 6], 0, [3, 4, 5], True)]
    assert sched.waiting == (c,)
    steps = 1
    while sched.has_unfinished_requests():
        batch = sched.schedule()
        sched.update(batch, {s.request_id: 1 for s in batch.sequences})
        sched.check_invariants()
        assert batch.preempted == []
        steps += 1
        if c.state is RequestState.WAITING:
            assert [s.request_id for s in batch.sequences] == ["a", "b"]
    assert sched.num_preemptions == 0
    assert [len(r.output_token_ids) for r in (a, b, c)] == [4, 4, 2]
    assert steps == 6  # 4 steps for a and b, then 2 for c


def test_max_utilization_admits_what_fits_now():
    sched = _make(6, 2)
    for rid, prompt in (("a", [1, 2, 3]), ("b", [4, 5, 6]), ("c", [7])):
        sched.add_request(Request(rid, prompt, max_new_tokens=4))
    batch = sched.schedule()
    assert [(s.request_id, s.block_table) for s in batch.sequences] == [
        ("a", [0, 1]), ("b", [2, 3]), ("c", [4])]


def test_max_batch_size_limits_running_requests():
    sched = _make(16, 4, max_batch_size=2)
    reqs = [Request(i, [i + 1], max_new_tokens=2) for i in range(3)]
    for r in reqs:
        sched.add_request(r)
    batch, _ = _step(sched, {0: 5, 1: 5})
    assert [s.request_id for s in batch.sequences] == [0, 1]
    batch, fin = _step(sched, {0: 6, 1: 6})
    assert [s.request_id for s in batch.sequences] == [0, 1] and fin == reqs[:2]
    batch, _ = _step(sched, {2: 7})
    assert [s.request_id for s in batch.sequences] == [2]


def test_cancel_frees_blocks_and_skips_pending_update():
    sched = _make(8, 2)
    a = Request("a", [1, 2, 3], max_new_tokens=5)
    b = Request("b", [4, 5], max_new_tokens=5)
    c = Request("c", [6], max_new_tokens=5)
    sched.add_request(a)
    sched.add_request(b)
    _step(sched, {"a": 10, "b": 20})
    sched.add_request(c)
    assert sched.kv_cache.num_free_blocks == 5        # a: 2 blocks, b: 1
    batch = sched.schedule()
    assert [s.request_id for s in batch.sequences] == ["a", "b", "c"]
    assert sched.kv_cache.num_free_blocks == 3        # b grew to 2 blocks, c took 1
    assert sched.cancel("b")
    assert sched.kv_cache.num_free_blocks == 5
    assert sched.update(batch, {"a": 11, "c": 30}) == []
    assert b.output_token_ids == [20] and b.finish_reason is FinishReason.CANCELLED
    sched.check_invariants()
    assert sched.cancel("c")
    assert sched.cancel("a")
    assert not sched.cancel("a") and not sched.cancel("zzz")
    assert sched.kv_cache.stats().used_blocks == 0
    d = Request("d", [1], max_new_tokens=1)
    sched.add_request(d)
    assert sched.cancel("d") and sched.waiting == () and sched.schedule().sequences == []


def test_shared_system_prompt_hits_prefix_cache():
    sched = _make(32, 4, reuse=True)
    system = list(range(100, 108))
    a = Request("a", system + [1, 2, 3], max_new_tokens=4)
    sched.add_request(a)
    _step(sched, {"a": 50})
    b = Request("b", system + [4, 5, 6], max_new_tokens=4)
    c = Request("c", system + [7, 8, 9], max_new_tokens=4)
    sched.add_request(b)
    sched.add_request(c)
    batch, _ = _step(sched, {"a": 51, "b": 60, "c": 70})
    assert _view(batch) == [
        ("a", [50], 11, [0, 1, 2], True),
        ("b", [4, 5, 6], 8, [0, 1, 3], True),
        ("c", [7, 8, 9], 8, [0, 1, 4], True),
    ]
    assert (b.num_cached_tokens, c.num_cached_tokens) == (8, 8)
    stats = sched.kv_cache.stats()
    assert (stats.looked_up_tokens, stats.reused_tokens) == (33, 16)
    assert stats.hit_rate == pytest.approx(16 / 33)
    # Requests admitted in the same step cannot share: nothing is computed yet.
    d = Request("d", [9] * 9, max_new_tokens=1)
    e = Request("e", [9] * 9, max_new_tokens=1)
    sched.add_request(d)
    sched.add_request(e)
    batch, _ = _step(sched, {"a": 1, "b": 1, "c": 1, "d": 1, "e": 1})
    assert [(s.request_id, s.past_len, s.block_table) for s in batch.sequences] == [
        ("a", 12, [0, 1, 2, 5]), ("b", 11, [0, 1, 3]), ("c", 11, [0, 1, 4]),
        ("d", 0, [6, 7, 8]), ("e", 0, [9, 10, 11])]
    # d and e finished (max_new_tokens=1): d's full blocks 6, 7 stay cached, e's were duplicates.
    f = Request("f", [9] * 9, max_new_tokens=1)
    sched.add_request(f)
    batch, _ = _step(sched, {"a": 1, "b": 1, "c": 1, "f": 1})
    assert _view(batch)[-1] == ("f", [9], 8, [6, 7, 14], True)
    assert f.num_cached_tokens == 8


def test_preempted_request_reuses_its_own_cached_blocks():
    sched = _make(4, 2, reuse=True)
    a = Request("a", [1, 2, 3], max_new_tokens=4)
    b = Request("b", [4, 5, 6], max_new_tokens=4)
    sched.add_request(a)
    sched.add_request(b)
    for sampled in ({"a": 10, "b": 20}, {"a": 11, "b": 21}, {"a": 12}, {"a": 13}):
        _step(sched, sampled)
    # b was preempted holding committed tokens [4, 5, 6, 20]: block [4, 5] survived as evictable
    # (block [6, 20] was its tail, freed first, and taken by a).
    batch = sched.schedule()
    assert _view(batch) == [("b", [6, 20, 21], 2, [2, 3, 1], True)]
    assert b.num_cached_tokens == 2


def test_request_and_update_validation():
    with pytest.raises(ConfigError):
        Request("x", [], max_new_tokens=1)
    with pytest.raises(ConfigError):
        Request("x", [1], max_new_tokens=0)
    with pytest.raises(ConfigError):
        Request("x", [1], max_new_tokens=1, stop_token_ids=[[]])
    with pytest.raises(ConfigError):
        _make(4, 2, policy="fastest")
    sched = _make(4, 2)
    with pytest.raises(ConfigError, match="4 blocks"):
        sched.add_request(Request("big", [1] * 8, max_new_tokens=2))   # 9 tokens > 8 slots
    sched.add_request(Request("a", [1, 2], max_new_tokens=3))
    with pytest.raises(SchedulerError, match="already"):
        sched.add_request(Request("a", [1], max_new_tokens=1))
    batch = sched.schedule()
    with pytest.raises(SchedulerError, match="no sampled token"):
        sched.update(batch, {})
    batch2 = sched.schedule()   # the rejected update changed nothing: same batch again
    assert _view(batch2) == _view(batch)
    sched.update(batch2, {"a": 5})
    with pytest.raises(SchedulerError, match="stale"):
        sched.update(batch, {"a": 5})


def _fake_model_token(tokens: list[int]) -> int:
    """A deterministic 'model': the next token depends only on the sequence so far."""
    return sum((i + 1) * t for i, t in enumerate(tokens)) % 13


def _simulate(num_blocks: int, max_num_tokens: int, policy: str, reuse: bool,
              chunked: bool = True) -> tuple[dict, Scheduler]:
    rng = random.Random(1)
    sched = _make(num_blocks, 4, reuse=reuse, max_batch_size=5, max_num_tokens=max_num_tokens,
                  policy=policy, enable_chunked_context=chunked)
    shared = [rng.randrange(13) for _ in range(9)]
    pending = [Request(i, (shared if i % 2 else []) + [rng.randrange(13) for _ in
                                                       range(rng.randrange(1, 12))],
                       max_new_tokens=rng.randrange(1, 10), end_id=0,
                       stop_token_ids=[[5, 5]]) for i in range(20)]
    done: dict = {}
    steps = 0
    while pending or sched.has_unfinished_requests():
        if pending and steps % 2 == 0:
            sched.add_request(pending.pop(0))
        batch = sched.schedule()
        sched.check_invariants()
        assert len(batch) <= 5 and batch.num_tokens <= max_num_tokens
        for s in batch.sequences:
            assert s.token_ids == s.request.all_token_ids[s.past_len:s.past_len + len(s.token_ids)]
            assert len(s.block_table) * 4 >= s.past_len + len(s.token_ids)
        if batch.sequences:
            batch.to_step_inputs()
        sampled = {s.request_id: _fake_model_token(s.request.all_token_ids)
                   for s in batch.sequences if s.samples}
        for r in sched.update(batch, sampled):
            done[r.request_id] = (list(r.output_token_ids), r.finish_reason)
        sched.check_invariants()
        steps += 1
        assert steps < 2000, "no progress"
    return done, sched


@pytest.mark.parametrize("policy", ["max_utilization", "guaranteed_no_evict"])
@pytest.mark.parametrize("reuse", [False, True])
def test_outputs_do_not_depend_on_budget_preemption_or_reuse(policy, reuse):
    reference, _ = _simulate(1000, 1000, "max_utilization", False)
    assert len(reference) == 20
    assert {reason for _, reason in reference.values()} == {FinishReason.STOP, FinishReason.LENGTH}
    tight, sched = _simulate(8, 5, policy, reuse)
    assert tight == reference
    if policy == "max_utilization":
        assert sched.num_preemptions > 0
    else:
        assert sched.num_preemptions == 0
    if reuse:
        assert sched.kv_cache.stats().reused_tokens > 0


def test_unchunked_simulation_matches_reference():
    reference, _ = _simulate(1000, 1000, "max_utilization", False)
    tight, sched = _simulate(10, 40, "max_utilization", True, chunked=False)
    assert tight == reference and sched.num_preemptions > 0
