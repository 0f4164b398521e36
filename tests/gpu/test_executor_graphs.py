"""GPU tests of the in-flight executor's CUDA-graph decode steps (runtime.cuda_graphs.DecodeGraphRunner):
the tokens and log-probabilities of concurrent requests are those of the eager executor, steps
of several batch and K/V-length buckets are captured once and replayed, and the pad block stays
out of the cache manager's hands."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def engine_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from trtdsl.server.testing import build_tiny_engine
    # head_dim 64 so the CUDA attention kernels (not the reference) run, as in production.
    return build_tiny_engine(tmp_path_factory.mktemp("graphs") / "engine", hidden_size=256, num_heads=4,
                             num_kv_heads=2, intermediate_size=512, max_batch_size=8, max_input_len=700,
                             max_seq_len=1024, max_num_tokens=1024, tokens_per_block=16, dtype="float16")


def _requests():  # type: ignore[no-untyped-def]
    from trtdsl.runtime.executor import GenerationRequest
    g = torch.Generator().manual_seed(7)
    lens = [3, 40, 17, 600, 9]  # 600 + new tokens crosses the first K/V bucket (512)
    news = [30, 12, 25, 20, 5]  # different ends: the batch shrinks through several buckets
    return [GenerationRequest(torch.randint(3, 270, (n,), generator=g).tolist(), max_new_tokens=m, logprobs=0)
            for n, m in zip(lens, news)]


def _generate(engine_dir: Path, cuda_graphs: bool):  # type: ignore[no-untyped-def]
    from trtdsl.runtime.executor import Executor
    with Executor(engine_dir, device="cuda", cuda_graphs=cuda_graphs, kv_cache_max_tokens=4096) as ex:
        results = ex.generate(_requests())
        return results, ex.step_runner, ex.kv_cache.num_blocks, ex.kv_pool.shape[1]


@cuda
def test_graph_steps_match_eager_steps(engine_dir: Path) -> None:
    eager, _, _, _ = _generate(engine_dir, cuda_graphs=False)
    graphs, runner, managed, pool_blocks = _generate(engine_dir, cuda_graphs=True)
    for e, g in zip(eager, graphs):
        assert g.output_token_ids == e.output_token_ids
        assert max(abs(a - b) for a, b in zip(g.logprobs, e.logprobs)) < 2e-2
    assert runner.replays > 0
    keys = set(runner.graphs)
    assert len({b for b, _ in keys}) >= 2, f"expected several batch buckets, got {sorted(keys)}"
    assert {kv for _, kv in keys} >= {512, 1024}, f"expected both K/V buckets, got {sorted(keys)}"
    # An explicit token budget stays usable in full; the pad block comes on top.
    assert managed == 4096 // 16 and pool_blocks == managed + 1


@cuda
def test_graphs_are_reused_across_requests(engine_dir: Path) -> None:
    from trtdsl.runtime.executor import Executor, GenerationRequest
    with Executor(engine_dir, device="cuda", kv_cache_max_tokens=2048) as ex:
        first = ex.generate([GenerationRequest([5, 6, 7], max_new_tokens=8)])[0]
        captured = dict(ex.step_runner.graphs)
        second = ex.generate([GenerationRequest([5, 6, 7], max_new_tokens=8)])[0]
        assert second.output_token_ids == first.output_token_ids
        assert ex.step_runner.graphs == captured  # same bucket: replayed, not captured again
        assert ex.stats().kv.used_blocks == 0


@cuda
def test_startup_capture_covers_every_bucket(engine_dir: Path) -> None:
    from trtdsl.runtime.executor import Executor, GenerationRequest
    with Executor(engine_dir, device="cuda", kv_cache_max_tokens=2048, cuda_graph_capture="startup",
                  cuda_graph_batch_sizes=[1, 4, 8]) as ex:
        runner = ex.step_runner
        assert set(runner.graphs) == {(b, kv) for b in (1, 4, 8) for kv in (512, 1024)}
        assert ex.kv_pool[:, :-1].abs().sum() == 0  # capture steps wrote only the pad block
        captured = dict(runner.graphs)
        results = ex.generate([GenerationRequest([5, 6, 7 + i], max_new_tokens=6) for i in range(3)])
        assert all(len(r.output_token_ids) == 6 for r in results)
        assert runner.graphs == captured and runner.replays > 0
