"""GPU tests of programmatic dependent launch (``plugins_cuda/include/trtdsl/pdl.cuh``): a decode-layer
chain of our PDL kernels (fused residual RMSNorm, int4 GEMVs on CUDA cores and tensor cores, SwiGLU,
the fp8 quantizers and GEMV), each fed by a torch kernel that rewrites its input just before it, gives
the plain-torch references' results and, captured in a CUDA graph with PDL on and replayed on new
inputs, bitwise the results of eager launches with PDL off. A kernel that read its input before
griddepcontrol.wait would see the previous replay's values and fail the bitwise comparison."""

from __future__ import annotations

import pytest
import torch

from trtdsl.quantization import numerics
from trtdsl.quantization.plugins import fp8_gemm_reference, weight_only_gemm_reference

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
fp8 = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9),
                         reason="needs an sm_89+ GPU for FP8")

H, INTER, GROUP = 1024, 2048, 128  # hidden, intermediate, int4 group (int4_awq's format)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30)).item()


@pytest.fixture()
def pdl_restored():  # type: ignore[no-untyped-def]
    from trtdsl.plugins.cuda.quant_ops import programmatic_launch_enabled, set_programmatic_launch
    before = programmatic_launch_enabled()
    yield set_programmatic_launch
    set_programmatic_launch(before)


def _int4(n: int, k: int, g: torch.Generator) -> dict:
    codes = torch.randint(-8, 8, (n, k), dtype=torch.int8, device="cuda", generator=g)
    scales = torch.rand(n, k // GROUP, device="cuda", generator=g) * 0.02 + 1e-3
    zeros = (torch.rand(n, k // GROUP, device="cuda", generator=g) - 0.5) * 0.1
    return {"qweight": numerics.pack_int4(codes), "scales": scales, "zeros": zeros}


def _layer(dtype: torch.dtype) -> dict:
    g = torch.Generator(device="cuda").manual_seed(3)
    w = {"norm": (torch.rand(H, device="cuda", generator=g) + 0.5).to(dtype),
         "gate_up": _int4(2 * INTER, H, g), "down": _int4(H, INTER, g)}
    w["fp8_w"] = (torch.randn(H, H, device="cuda", generator=g) * 0.1).to(torch.float8_e4m3fn)
    w["fp8_ws"] = torch.rand(H, device="cuda", generator=g) * 0.01 + 1e-3
    w["fp8_in"] = torch.tensor([0.02], device="cuda")
    return w


def _chain(src: torch.Tensor, res_src: torch.Tensor, w: dict, tc: bool) -> dict:
    """One MLP-shaped step. Every input is first rewritten by a torch kernel (the predecessor the
    PDL kernel must wait for); configs pin the CUDA-core (1) or tensor-core (10, 11) int4 GEMV."""
    from trtdsl.plugins.cuda.ops import rmsnorm, swiglu
    from trtdsl.plugins.cuda.quant_ops import (fp8_gemv, fp8_gemv_static, quantize_fp8, quantize_per_token_fp8,
                                               weight_only_gemv)
    x, res = src * 1.0, res_src * 1.0
    h, r = rmsnorm(x, w["norm"], 1e-5, residual=res)
    gu, dn = w["gate_up"], w["down"]
    a = weight_only_gemv(h, gu["qweight"], gu["scales"], 4, GROUP, H // GROUP, gu["zeros"],
                         config=10 if tc else 1)
    s = swiglu(a)
    y = weight_only_gemv(s, dn["qweight"], dn["scales"], 4, GROUP, INTER // GROUP, dn["zeros"],
                         config=11 if tc else 1)
    out = {"h": h, "r": r, "a": a, "s": s, "y": y}
    if torch.cuda.get_device_capability() >= (8, 9):
        yq = quantize_fp8(y, w["fp8_in"])
        out["f_static"] = fp8_gemv(yq, w["fp8_w"], w["fp8_in"], w["fp8_ws"], y.dtype)
        out["f_fused"] = fp8_gemv_static(y, w["fp8_w"], w["fp8_in"], w["fp8_ws"])
        dq, ds = quantize_per_token_fp8(y)
        out["f_dynamic"] = fp8_gemv(dq, w["fp8_w"], ds, w["fp8_ws"], y.dtype)
    return out


def _check_reference(src: torch.Tensor, res_src: torch.Tensor, w: dict, out: dict) -> None:
    """Each stage against the torch reference on the kernel's own input (stage errors don't compound)."""
    tol = 1e-2 if src.dtype == torch.bfloat16 else 2e-3
    r = (src.float() + res_src.float()).to(src.dtype)
    assert torch.equal(out["r"], r)
    rf = r.float()
    h = (rf * torch.rsqrt(rf.pow(2).mean(-1, keepdim=True) + 1e-5) * w["norm"].float()).to(src.dtype)
    assert rel_err(out["h"], h) < tol

    def wo(x: torch.Tensor, p: dict, k: int) -> torch.Tensor:
        return weight_only_gemm_reference([x, p["qweight"], p["scales"], p["zeros"]],
                                          {"bits": 4, "group_size": GROUP, "in_features": k})

    assert rel_err(out["a"], wo(out["h"], w["gate_up"], H)) < tol
    gate, up = out["a"].float().chunk(2, -1)
    assert rel_err(out["s"], (torch.nn.functional.silu(gate) * up).to(src.dtype)) < tol
    assert rel_err(out["y"], wo(out["s"], w["down"], INTER)) < tol
    if "f_static" in out:
        fields = {"in_features": H}
        ref = fp8_gemm_reference([out["y"], w["fp8_w"], w["fp8_ws"], w["fp8_in"]], fields)
        assert rel_err(out["f_static"], ref) < tol
        assert torch.equal(out["f_fused"], out["f_static"])
        ref = fp8_gemm_reference([out["y"], w["fp8_w"], w["fp8_ws"]], fields)
        assert rel_err(out["f_dynamic"], ref) < tol


@cuda
def test_switch_round_trips(pdl_restored) -> None:  # type: ignore[no-untyped-def]
    from trtdsl.plugins.cuda.quant_ops import programmatic_launch_enabled
    set_pdl = pdl_restored
    set_pdl(False)
    assert not programmatic_launch_enabled()
    assert set_pdl(True) is False
    assert programmatic_launch_enabled()
    assert set_pdl(True) is True


@cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("tc", [False, True], ids=["cuda_core", "tensor_core"])
@pytest.mark.parametrize("m", [1, 5])
def test_graph_with_pdl_matches_eager_without(pdl_restored, dtype: torch.dtype, tc: bool, m: int) -> None:  # type: ignore[no-untyped-def]
    set_pdl = pdl_restored
    w = _layer(dtype)
    g = torch.Generator(device="cuda").manual_seed(11)
    src = torch.randn(m, H, device="cuda", dtype=dtype, generator=g)
    res_src = torch.randn(m, H, device="cuda", dtype=dtype, generator=g)

    set_pdl(True)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        _chain(src, res_src, w, tc)  # warm-up (library load, first launches) outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = _chain(src, res_src, w, tc)

    set_pdl(False)
    for step in range(4):  # new inputs each replay: stale reads would show
        src.copy_(torch.randn(m, H, device="cuda", dtype=dtype, generator=g) * (1 + step))
        res_src.copy_(torch.randn(m, H, device="cuda", dtype=dtype, generator=g))
        graph.replay()
        eager = _chain(src, res_src, w, tc)
        torch.cuda.synchronize()
        for name, value in eager.items():
            assert torch.equal(captured[name], value), (name, step)
    _check_reference(src, res_src, w, eager)


@cuda
def test_eager_pdl_back_to_back_matches(pdl_restored) -> None:  # type: ignore[no-untyped-def]
    """Eager launches with PDL on (no graph): many chains queued without synchronizing, each reading
    buffers the previous chain's kernels just wrote, equal to PDL off."""
    set_pdl = pdl_restored
    dtype = torch.bfloat16
    w = _layer(dtype)
    g = torch.Generator(device="cuda").manual_seed(5)
    inputs = [(torch.randn(2, H, device="cuda", dtype=dtype, generator=g),
               torch.randn(2, H, device="cuda", dtype=dtype, generator=g)) for _ in range(6)]

    def run() -> list[torch.Tensor]:
        outs, y = [], None
        for x, r in inputs:
            o = _chain(x if y is None else x + y, r, w, tc=True)
            y = o["y"]
            outs.append(y)
        return outs

    set_pdl(True)
    on = run()
    set_pdl(False)
    off = run()
    torch.cuda.synchronize()
    for a, b in zip(on, off):
        assert torch.equal(a, b)
