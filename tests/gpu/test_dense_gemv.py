"""Tests of the dense decode GEMV (``trtdsl.plugins.cuda.dense_ops``) against ``F.linear`` in float32
on fresh random inputs: odd sizes (k = 1000, 4104; n = 1, 7, 4097), every m in 1..8, fp16 and bf16,
the automatic and every forced launch shape, CUDA-graph capture. Argument checks and the
``gemv_preferred`` rule also run on CPU."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from trtdsl.errors import PluginError
from trtdsl.plugins.cuda import dense_ops
from trtdsl.plugins.cuda.dense_ops import DENSE_GEMV_MAX_M, NUM_CONFIGS, dense_gemv, gemv_preferred

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DTYPES = [torch.float16, torch.bfloat16]
# Both sides sum in fp32; the kernel's order differs and its output is rounded once to fp16 / bf16.
TOL = {torch.float16: 2e-3, torch.bfloat16: 1e-2}


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref||, the norm floored at 0.1 per element: outputs here are ~N(0, 1), and a
    lone output that happens to be near zero must not turn fp32 reordering noise into a failure."""
    assert torch.isfinite(out).all(), "non-finite values (unwritten or wrong) in the kernel output"
    floor = 0.1 * ref.numel() ** 0.5
    return ((out.double() - ref.double()).norm() / ref.double().norm().clamp_min(floor)).item()


def check(m: int, k: int, n: int, dtype: torch.dtype, config: int = 0) -> None:
    x = torch.randn(m, k, device="cuda", dtype=dtype)
    w = torch.randn(n, k, device="cuda", dtype=dtype) * k**-0.5
    out = torch.full((m, n), float("nan"), device="cuda", dtype=dtype)  # poison: every element written
    dense_gemv(x, w, out=out, config=config)
    ref = F.linear(x.float(), w.float())
    assert out.dtype == dtype
    assert rel_err(out, ref) < TOL[dtype], (m, k, n, dtype, config)
    # Per-row check too: a wrong row (m mixed up) hides in a whole-matrix norm when n is small.
    for i in range(m):
        assert rel_err(out[i], ref[i]) < 3 * TOL[dtype], (i, m, k, n, dtype, config)


# ---------------------------------------------------------------- CPU: checks and the selection rule

def test_cpu_tensors_are_rejected_with_plugin_error():
    with pytest.raises(PluginError, match="x must be a CUDA tensor"):
        dense_gemv(torch.randn(1, 64, dtype=torch.bfloat16), torch.randn(8, 64, dtype=torch.bfloat16))


def test_gemv_preferred_refuses_shapes_the_kernel_cannot_take():
    for dt in DTYPES:
        assert not gemv_preferred(0, 4096, 4096, dt)
        assert not gemv_preferred(DENSE_GEMV_MAX_M + 1, 4096, 4096, dt)
        assert not gemv_preferred(1, 4096, 4100, dt)  # k % 8 != 0: no 16-byte rows
    assert not gemv_preferred(1, 4096, 4096, torch.float32)


def test_gemv_preferred_only_where_the_benchmark_measured_a_win():
    """The crossover rule must never pick the GEMV where the committed H100 benchmark measured
    cuBLAS faster (auto config, bf16)."""
    import json
    from pathlib import Path
    results = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "dense_gemv_h100.json"
    rows = json.loads(results.read_text())["results"]
    ours = {(r["m"], r["n"], r["k"]): r["speedup_vs_cublas"] for r in rows
            if r["kernel"] == "dense_gemv" and r["dtype"] == "bfloat16"}
    assert ours, "no auto-config rows in the benchmark JSON"
    picked = [(m, n, k) for (m, n, k) in ours if gemv_preferred(m, n, k, torch.bfloat16)]
    assert picked, "the rule never picks the GEMV"
    assert all(ours[key] >= 1.0 for key in picked), {key: ours[key] for key in picked if ours[key] < 1.0}
    assert not gemv_preferred(1, 4096, 4096, torch.float32) and not gemv_preferred(9, 4096, 4096, torch.bfloat16)


# ---------------------------------------------------------------- GPU numerics

@cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [1000, 4104])
@pytest.mark.parametrize("n", [1, 7, 4097])
@pytest.mark.parametrize("m", range(1, DENSE_GEMV_MAX_M + 1))
def test_odd_sizes_match_linear(m, n, k, dtype):
    check(m, k, n, dtype)


@cuda
@pytest.mark.parametrize("config", range(1, NUM_CONFIGS + 1))
@pytest.mark.parametrize("m", range(1, DENSE_GEMV_MAX_M + 1))
def test_every_launch_shape_matches_linear(m, config):
    for dtype in DTYPES:
        for k, n in ((1000, 7), (4104, 4097), (8, 3)):
            check(m, k, n, dtype, config)


@cuda
@pytest.mark.parametrize("m", [1, 8])
def test_llama_shapes(m):
    for k, n in ((4096, 4096), (14336, 4096), (4096, 6144)):
        check(m, k, n, torch.bfloat16)


@cuda
def test_batched_leading_dims_and_default_out():
    x = torch.randn(2, 3, 520, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(33, 520, device="cuda", dtype=torch.bfloat16) * 520**-0.5
    out = dense_gemv(x, w)
    assert out.shape == (2, 3, 33)
    assert rel_err(out, F.linear(x.float(), w.float())) < TOL[torch.bfloat16]


@cuda
def test_cuda_graph_replay_uses_new_inputs():
    x = torch.randn(4, 2048, device="cuda", dtype=torch.float16)
    w = torch.randn(1536, 2048, device="cuda", dtype=torch.float16) * 2048**-0.5
    out = torch.empty(4, 1536, device="cuda", dtype=torch.float16)
    dense_gemv(x, w, out=out)  # warm up (library load) outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        dense_gemv(x, w, out=out)
    for _ in range(2):
        x.copy_(torch.randn_like(x))
        w.copy_(torch.randn_like(w) * 2048**-0.5)
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        assert rel_err(out, F.linear(x.float(), w.float())) < TOL[torch.float16]


@cuda
def test_bad_inputs_raise_plugin_error():
    bf = dict(device="cuda", dtype=torch.bfloat16)
    w = torch.randn(16, 64, **bf)
    with pytest.raises(PluginError, match="rows"):
        dense_gemv(torch.randn(9, 64, **bf), w)
    with pytest.raises(PluginError, match="x must be"):
        dense_gemv(torch.randn(1, 32, **bf), w)
    with pytest.raises(PluginError, match="weight has dtype"):
        dense_gemv(torch.randn(1, 64, **bf), w.half())
    with pytest.raises(PluginError, match="x has dtype"):
        dense_gemv(torch.randn(1, 64, device="cuda"), w)
    with pytest.raises(PluginError, match="% 8"):
        dense_gemv(torch.randn(1, 60, **bf), torch.randn(16, 60, **bf))
    with pytest.raises(PluginError, match="16-byte"):
        dense_gemv(torch.randn(68, **bf)[4:].view(1, 64), w)  # starts 8 bytes into its storage
    with pytest.raises(PluginError, match="16-byte"):
        dense_gemv(torch.randn(1, 64, **bf), torch.randn(16 * 64 + 4, **bf)[4:].view(16, 64))
    with pytest.raises(PluginError, match="out has shape"):
        dense_gemv(torch.randn(1, 64, **bf), w, out=torch.empty(1, 15, **bf))
    with pytest.raises(PluginError, match="config"):
        dense_gemv(torch.randn(1, 64, **bf), w, config=NUM_CONFIGS + 1)


@cuda
def test_supported_predicate():
    bf = dict(device="cuda", dtype=torch.bfloat16)
    w = torch.randn(16, 64, **bf)
    assert dense_ops.dense_gemv_supported(torch.randn(8, 64, **bf), w)
    assert not dense_ops.dense_gemv_supported(torch.randn(9, 64, **bf), w)
    assert not dense_ops.dense_gemv_supported(torch.randn(1, 64, **bf), w.half())
    assert not dense_ops.dense_gemv_supported(torch.randn(1, 64, **bf), torch.randn(64, 16, **bf).t())
