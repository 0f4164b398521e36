"""The padding of decode steps for CUDA-graph buckets (runtime.cuda_graphs), checked on the CPU by
running the padded step through the eager executor: the real rows' logits and K/V writes must be
those of the unpadded step, and padded rows may write only into the reserved pad block."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trtdsl.errors import ConfigError, ShapeError
from trtdsl.runtime.cuda_graphs import (bucket_for, default_batch_buckets, default_kv_buckets,
                                        pad_decode_step, padding_only_step)
from trtdsl.runtime.step_inputs import SequenceStep, build_step_inputs

TPB = 8


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from trtdsl.engine import Engine
    from trtdsl.server.testing import build_tiny_engine
    out = build_tiny_engine(tmp_path_factory.mktemp("pad") / "engine", max_batch_size=8,
                            max_seq_len=64, max_input_len=64, max_num_tokens=64, tokens_per_block=TPB)
    return Engine.load(out).network


def _run(network, feed, pool):  # type: ignore[no-untyped-def]
    from trtdsl.backends.torch_executor import TorchExecutor
    from trtdsl.plugins import attention  # noqa: F401  (registers the attention plugin)
    hints = {"max_q_len": int(feed["seq_lens"].max()),
             "max_kv_len": int((feed["seq_lens"] + feed["past_lens"]).max())}
    return TorchExecutor(network, "cpu").run({**feed, "kv_cache": pool}, hints)["logits"]


def test_padded_decode_step_matches_the_unpadded_one(network) -> None:  # type: ignore[no-untyped-def]
    spec = network.input_specs["kv_cache"]
    num_blocks, pad_block = 12, 11
    pool = torch.zeros(tuple(num_blocks if isinstance(d, str) else d for d in spec.shape))
    prompts = [[5, 9, 14, 3, 7], [20, 21, 22, 23, 24, 25, 26, 27, 28], [40, 41, 42]]
    tables = [[0], [1, 2], [3]]  # 5 and 3 tokens: one block each; 9 tokens: two
    _run(network, build_step_inputs([SequenceStep(p, 0, t) for p, t in zip(prompts, tables)]).as_dict(), pool)
    decode = build_step_inputs([SequenceStep([60 + i], len(p), t)
                                for i, (p, t) in enumerate(zip(prompts, tables))]).as_dict()

    pool_ref = pool.clone()
    logits_ref = _run(network, decode, pool_ref)
    padded = pad_decode_step(decode, batch=8, table_width=8, pad_block=pad_block)
    assert padded["block_tables"].shape == (8, 8) and padded["input_ids"].shape == (8,)
    pool_pad = pool.clone()
    logits_pad = _run(network, padded, pool_pad)

    assert logits_pad.shape[0] == 8
    torch.testing.assert_close(logits_pad[:3], logits_ref, rtol=1e-5, atol=1e-5)
    others = [b for b in range(num_blocks) if b != pad_block]
    # The K/V of the real rows to rounding (a GEMM over 8 rows may sum in another order than over 3,
    # seen on one CPU's BLAS), and no write anywhere the unpadded step did not write.
    torch.testing.assert_close(pool_pad[:, others], pool_ref[:, others], rtol=1e-5, atol=1e-6)
    assert torch.equal(pool_pad[:, others] != 0, pool_ref[:, others] != 0)
    assert pool_pad[:, pad_block].abs().sum() > 0, "padded rows should write their K/V into the pad block"
    assert pool_ref[:, pad_block].abs().sum() == 0


def test_padding_rejects_context_steps_and_oversized_steps() -> None:
    context = build_step_inputs([SequenceStep([1, 2], 0, [0]), SequenceStep([3], 4, [1])]).as_dict()
    with pytest.raises(ShapeError, match="only decode steps"):
        pad_decode_step(context, batch=4, table_width=4, pad_block=9)
    decode = build_step_inputs([SequenceStep([1], 3, [0, 1, 2]), SequenceStep([3], 4, [1])]).as_dict()
    with pytest.raises(ShapeError, match="does not fit"):
        pad_decode_step(decode, batch=1, table_width=4, pad_block=9)
    with pytest.raises(ShapeError, match="does not fit"):
        pad_decode_step(decode, batch=4, table_width=2, pad_block=9)


def test_buckets() -> None:
    assert default_batch_buckets(1) == (1,)
    assert default_batch_buckets(8) == (1, 2, 4, 8)
    assert default_batch_buckets(100) == (1, 2, 4, 8, 16, 32, 64, 96, 100)
    assert default_batch_buckets(256)[-3:] == (192, 224, 256)
    assert default_kv_buckets(8192) == (512, 2048, 8192)
    assert default_kv_buckets(4096) == (512, 2048, 4096)
    assert default_kv_buckets(300) == (300,)
    assert [bucket_for(v, (1, 2, 4, 8)) for v in (1, 3, 4, 5, 8)] == [1, 4, 4, 8, 8]
    with pytest.raises(ConfigError):
        bucket_for(9, (1, 2, 4, 8))
    with pytest.raises(ConfigError):
        default_batch_buckets(0)


def test_executor_refuses_cuda_graphs_on_the_cpu(tmp_path: Path) -> None:
    from trtdsl.runtime.executor import Executor
    from trtdsl.server.testing import build_tiny_engine
    engine = build_tiny_engine(tmp_path / "engine", max_batch_size=2, max_seq_len=32, max_input_len=32,
                               max_num_tokens=32)
    with pytest.raises(ConfigError, match="cuda_graphs=True needs device='cuda'"):
        Executor(engine, cuda_graphs=True)


def test_an_all_padding_step_writes_only_the_pad_block(network) -> None:  # type: ignore[no-untyped-def]
    # What DecodeGraphRunner.capture_all runs to capture a bucket before any request exists.
    spec = network.input_specs["kv_cache"]
    pool = torch.zeros(tuple(6 if isinstance(d, str) else d for d in spec.shape))
    logits = _run(network, padding_only_step(batch=4, table_width=8, pad_block=5), pool)
    assert logits.shape[0] == 4 and torch.isfinite(logits).all()
    assert pool[:, :5].abs().sum() == 0 and pool[:, 5].abs().sum() > 0
