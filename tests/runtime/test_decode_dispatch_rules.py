"""The host-side rules that pick the decode attention kernels (trtdsl/plugins/cuda/ops.py and
kv_quant_ops.py), on the CPU: the device is stood in for by its (compute capability, SM count), so CI
checks the cluster sizes and the fused / split-K choice the GPU benchmarks measured
(benchmarks/results/decode_attention_h100.json, kv_quant_attention_h100.json)."""

from __future__ import annotations

import pytest
import torch

from trtdsl.plugins.cuda import kv_quant_ops, ops

DEV = torch.device("cuda", 0)  # never touched: _sm_info is replaced


@pytest.fixture
def h100(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ops, "_sm_info", lambda device: (9, 132))


@pytest.mark.parametrize("batch,context,splits", [
    (1, 128, 1), (1, 256, 1),      # <= 2 tiles per warp of one block: no cluster
    (1, 257, 3), (1, 512, 4),      # one tile per warp
    (1, 1024, 8), (1, 8192, 8),    # at most 8 blocks
    (2, 8192, 4), (4, 8192, 2),    # at most half the SMs in all (66 blocks)
    (8, 8192, 1), (64, 8192, 1),   # 64+ blocks: one each
])
def test_cluster_size_rule(h100: None, batch: int, context: int, splits: int) -> None:
    assert ops.decode_fused_splits(batch, 32, 8, context, DEV) == splits


def test_no_clusters_below_sm90(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ops, "_sm_info", lambda device: (8, 108))
    assert ops.decode_fused_splits(1, 32, 8, 8192, DEV) == 1
    assert not ops._use_fused_decode(1, 32, 8, 8192, DEV)  # split-K spreads one sequence instead
    assert ops._use_fused_decode(1, 32, 8, 512, DEV) and ops._use_fused_decode(8, 32, 8, 8192, DEV)


def test_fused_dispatch_and_its_override(h100: None, monkeypatch: pytest.MonkeyPatch) -> None:
    assert ops._use_fused_decode(1, 32, 8, 8192, DEV)   # clusters
    assert not ops._use_fused_decode(6, 32, 8, 8192, DEV)  # 48 blocks: no room for clusters, split-K
    monkeypatch.setattr(ops, "FUSED_DECODE_SPLITS", 1)  # the dispatch as before clusters
    assert not ops._use_fused_decode(1, 32, 8, 8192, DEV) and ops._use_fused_decode(1, 32, 8, 512, DEV)


@pytest.mark.parametrize("batch,context,splits", [
    (1, 128, 1), (1, 4096, 8),     # <= 4 tiles per warp
    (1, 16384, 0),                 # 16 tiles per warp, 256 warps: split-K
    (8, 128, 1), (8, 1024, 0),     # 9 tiles per warp, 256 warps: split-K
    (32, 1024, 1), (32, 16384, 1),  # >= 1024 warps
])
def test_quantized_cache_one_launch_rule(h100: None, batch: int, context: int, splits: int) -> None:
    assert kv_quant_ops.one_launch_decode_splits(batch, 32, 8, context, DEV) == splits


def test_quantized_cache_one_launch_switch(h100: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kv_quant_ops, "ONE_LAUNCH_DECODE", False)
    assert kv_quant_ops.one_launch_decode_splits(1, 32, 8, 128, DEV) == 0
