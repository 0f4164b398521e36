"""The in-flight batching executor against Hugging Face (greedy tokens) and against itself run
one request at a time: batching, prefix reuse and preemption must not change any token."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from trtdsl.errors import ConfigError
from trtdsl.runtime import Executor
from trtdsl.runtime.executor import GenerationRequest, QueueFullError
from trtdsl.runtime.sampling import SamplingParams

PROMPTS = [[5, 17, 99, 3], [200, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], [42] * 19, [7, 8],
           list(range(30, 60)), [250, 251, 252, 253, 254, 255]]
NEW = 10


@pytest.fixture(scope="module")
def executor(tiny_engine):
    ex = Executor(tiny_engine, kv_cache_max_tokens=2048, seed=0)
    yield ex
    ex.shutdown()


@pytest.fixture(scope="module")
def alone(executor):
    """Each prompt run alone (nothing else in flight)."""
    return [executor.generate([GenerationRequest(p, NEW)])[0].output_token_ids for p in PROMPTS]


def test_alone_matches_hugging_face(alone, hf_greedy):
    for prompt, tokens in zip(PROMPTS[:3], alone[:3]):
        assert list(tokens) == hf_greedy(prompt, NEW)


def test_concurrent_requests_match_alone(executor, alone):
    results = executor.generate([GenerationRequest(p, NEW) for p in PROMPTS])
    assert [r.output_token_ids for r in results] == alone
    assert all(r.finish_reason == "length" for r in results)
    # Submitted from several threads at once: same tokens.
    outs: dict[int, tuple[int, ...]] = {}

    def worker(i: int) -> None:
        outs[i] = executor.result(executor.submit(GenerationRequest(PROMPTS[i], NEW))).output_token_ids

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [outs[i] for i in range(len(PROMPTS))] == alone


def test_shared_system_prompt_hits_prefix_cache(tiny_engine, executor):
    system = list(range(100, 140))  # 5 full blocks of 8
    prompts = [system + [i, i + 1, i + 2] for i in range(4)]
    with Executor(tiny_engine, kv_cache_max_tokens=2048, enable_prefix_reuse=False) as plain:
        expected = [r.output_token_ids for r in plain.generate([GenerationRequest(p, 6) for p in prompts])]
        assert plain.stats().kv.reused_tokens == 0
    before = executor.stats().kv.reused_tokens
    first = executor.generate([GenerationRequest(prompts[0], 6)])
    rest = executor.generate([GenerationRequest(p, 6) for p in prompts[1:]])
    assert [r.output_token_ids for r in first + rest] == expected
    assert all(r.num_cached_tokens == len(system) for r in rest)
    assert executor.stats().kv.reused_tokens - before >= 3 * len(system)


def test_preemption_under_tiny_kv_budget(tiny_engine, alone):
    # 6 blocks of 8 tokens: the six requests (up to 40 tokens each) cannot all stay resident.
    with Executor(tiny_engine, kv_cache_max_tokens=48) as small:
        results = small.generate([GenerationRequest(p, NEW) for p in PROMPTS])
        stats = small.stats()
    assert [r.output_token_ids for r in results] == alone
    assert stats.preemptions > 0
    assert stats.kv.used_blocks == 0


def test_cancel_frees_blocks(executor):
    rid = executor.submit(GenerationRequest([1, 2, 3], 200))
    first = next(executor.stream(rid))
    assert len(first.token_ids) == 1
    assert executor.cancel(rid)
    result = executor.result(rid, timeout=10)
    assert result.finish_reason == "cancelled" and len(result.output_token_ids) < 200
    deadline = time.monotonic() + 5
    while executor.stats().kv.used_blocks and time.monotonic() < deadline:
        time.sleep(0.01)
    stats = executor.stats()
    assert stats.kv.used_blocks == 0 and stats.running_requests == 0
    assert not executor.cancel(rid)  # already finished


def test_stream_astream_and_result_agree(executor, alone):
    rid = executor.submit(GenerationRequest(PROMPTS[1], NEW))
    streamed = [t for out in executor.stream(rid) for t in out.token_ids]

    async def collect() -> list[int]:
        rid2 = executor.submit(GenerationRequest(PROMPTS[1], NEW))
        return [t async for out in executor.astream(rid2) for t in out.token_ids]

    assert streamed == list(executor.result(rid).output_token_ids) == list(alone[1])
    assert asyncio.run(collect()) == streamed


def test_end_id_and_stop_sequences(executor, alone):
    tokens = alone[0]
    r = executor.generate([GenerationRequest(PROMPTS[0], NEW, end_id=tokens[3])])[0]
    assert r.output_token_ids == tokens[:tokens.index(tokens[3]) + 1] and r.finish_reason == "stop"
    r = executor.generate([GenerationRequest(PROMPTS[0], NEW, stop_token_ids=[tokens[4:6]])])[0]
    assert r.output_token_ids == tokens[:6] and r.finish_reason == "stop"


def test_seeded_sampling_is_reproducible_in_any_batch(executor):
    params = SamplingParams(temperature=1.0, top_p=0.9, seed=1234)
    solo = executor.generate([GenerationRequest(PROMPTS[2], 12, sampling=params)])[0].output_token_ids
    mixed = executor.generate([GenerationRequest(p, 12) for p in PROMPTS[:2]]
                              + [GenerationRequest(PROMPTS[2], 12, sampling=params)])[-1].output_token_ids
    assert solo == mixed
    other = executor.generate([GenerationRequest(PROMPTS[2], 12, sampling=SamplingParams(seed=99))])[0]
    assert other.output_token_ids != solo


def test_logprobs_are_the_model_distribution(executor, hf_model):
    import torch
    r = executor.generate([GenerationRequest(PROMPTS[0], 1, logprobs=3)])[0]
    with torch.no_grad():
        ref = hf_model(torch.tensor([PROMPTS[0]])).logits[0, -1].float().log_softmax(-1)
    assert r.logprobs[0] == pytest.approx(ref[r.output_token_ids[0]].item(), abs=1e-4)
    top = ref.topk(3)
    assert list(r.top_logprobs[0]) == top.indices.tolist()


def test_invalid_requests_are_rejected_with_the_field(executor):
    with pytest.raises(ConfigError, match="max_input_len"):
        executor.submit(GenerationRequest([1] * 500, 4))
    with pytest.raises(ConfigError, match="max_seq_len"):
        executor.submit(GenerationRequest([1] * 100, 200))
    with pytest.raises(ConfigError, match="outside the vocabulary"):
        executor.submit(GenerationRequest([1, 100000], 4))
    with pytest.raises(ConfigError, match="max_new_tokens"):
        GenerationRequest([1], 0)
    with pytest.raises(ConfigError, match="prompt_token_ids is empty"):
        GenerationRequest([], 3)


def test_bounded_queue_raises_queue_full(tiny_engine):
    with Executor(tiny_engine, max_batch_size=1, max_queue_size=1) as ex:
        busy = ex.submit(GenerationRequest([1, 2], 200))
        next(ex.stream(busy))  # running now, so the queue is empty
        ex.submit(GenerationRequest([3], 4))
        with pytest.raises(QueueFullError):
            ex.submit(GenerationRequest([4], 4))
        ex.cancel(busy)


def test_engine_limits_are_checked(tiny_engine):
    with pytest.raises(ConfigError, match="max_batch_size=64"):
        Executor(tiny_engine, max_batch_size=64)
    with pytest.raises(ConfigError, match="kv_cache_max_tokens"):
        Executor(tiny_engine, kv_cache_max_tokens=10**7)
