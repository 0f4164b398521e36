"""QuantConfig.grid_refit: least-squares (scale, zero) per group for fixed codes, alternated with
re-rounding; checked against a dense per-row least-squares solve and the output error."""

from __future__ import annotations

import pytest
import torch

from trtdsl.errors import ConfigError
from trtdsl.ir.network import LayerKind
from trtdsl.quantization import QuantConfig, quantize_network
from trtdsl.quantization import gptq
from trtdsl.quantization import numerics as nq

from test_gptq import correlated_rows
from test_pass import _run, activations, build_mlp


def _dense_refit(w: torch.Tensor, codes: torch.Tensor, h: torch.Tensor, group_size: int,
                 zero_point: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The same least squares, one row at a time with an explicit design matrix (independent check)."""
    n, k = w.shape
    groups = nq.num_groups(k, group_size)
    gid = torch.arange(k) // group_size
    chol = torch.linalg.cholesky(h.double())  # (w - A t)^T H (w - A t) = ||L^T (w - A t)||^2
    scales, zeros = torch.empty(n, groups), torch.empty(n, groups)
    for r in range(n):
        onehot = torch.nn.functional.one_hot(gid, groups).double()  # [k, G]
        a = onehot * codes[r].double()[:, None]
        if zero_point:
            a = torch.cat([a, onehot], 1)
        t = torch.linalg.lstsq(chol.T @ a, chol.T @ w[r].double()[:, None]).solution[:, 0]
        scales[r] = t[:groups].float()
        if zero_point:
            zeros[r] = t[groups:].float()
    return scales, zeros if zero_point else None


@pytest.mark.parametrize("zero_point,k,group_size", [(True, 96, 32), (False, 96, 32), (True, 80, 32)])
def test_refit_is_the_least_squares_grid(zero_point: bool, k: int, group_size: int) -> None:
    # k = 80: a last group shorter than the others (SmolLM2's 576 at group 128).
    x, w = correlated_rows(5, k=k), torch.randn(12, k, generator=torch.Generator().manual_seed(6))
    h = gptq.hessian(x)
    if zero_point:
        codes, scales, zeros = nq.quantize_weight_asym(w, 4, group_size)
    else:
        (codes, scales), zeros = nq.quantize_weight(w, 4, group_size), None
    new_s, new_z = gptq.refit_scales(w, codes, h, group_size, zeros, scales)
    want_s, want_z = _dense_refit(w, codes, h, group_size, zero_point)
    torch.testing.assert_close(new_s, want_s, rtol=1e-4, atol=1e-6)
    if zero_point:
        torch.testing.assert_close(new_z, want_z, rtol=1e-4, atol=1e-6)
    before = gptq.output_error(w, nq.dequantize_weight(codes, scales, group_size, zeros), h)
    after = gptq.output_error(w, nq.dequantize_weight(codes, new_s, group_size, new_z), h)
    assert after < 0.95 * before


def test_round_to_grid_is_rtn_on_rtn_grid() -> None:
    w = torch.randn(8, 64, generator=torch.Generator().manual_seed(7))
    codes, scales, zeros = nq.quantize_weight_asym(w, 4, 32)
    assert torch.equal(nq.round_to_grid(w, 4, 32, scales, zeros), codes)
    codes, scales = nq.quantize_weight(w, 8, 32)
    assert torch.equal(nq.round_to_grid(w, 8, 32, scales), codes)


@pytest.mark.parametrize("use_gptq", [False, True])
def test_refine_grid_lowers_held_out_output_error(use_gptq: bool) -> None:
    x, w = correlated_rows(8), torch.randn(32, 96, generator=torch.Generator().manual_seed(9))
    h = gptq.hessian(x)
    if use_gptq:
        codes, scales, zeros = gptq.gptq_int(w, h, 4, 32, True)

        def reround(s: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
            return gptq.gptq_int(w, h, 4, 32, True, grid=(s, z))[0]
    else:
        codes, scales, zeros = nq.quantize_weight_asym(w, 4, 32)

        def reround(s: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
            return nq.round_to_grid(w, 4, 32, s, z)
    base = nq.dequantize_weight(codes, scales, 32, zeros)
    c2, s2, z2 = gptq.refine_grid(w, h, codes, scales, zeros, 32, 3, reround)
    refined = nq.dequantize_weight(c2, s2, 32, z2)
    held_out = correlated_rows(8, rows=512)[256:]

    def err(q: torch.Tensor) -> float:
        return float((held_out @ (q - w).T).pow(2).mean())
    assert err(refined) < 0.95 * err(base)


def test_grid_refit_in_the_pass_keeps_the_format_and_lowers_error() -> None:
    feeds = [{"x": activations(s, rows=64)} for s in range(4)]
    plain = quantize_network(build_mlp(), "int4_wo", calibration_feeds=feeds, group_size=32, progress=False)
    refit = quantize_network(build_mlp(), "int4_wo", calibration_feeds=feeds, group_size=32, progress=False,
                             grid_refit=2)
    shapes = [[tuple(t.shape) for t in la.inputs] for la in refit.layers if la.kind is LayerKind.PLUGIN]
    assert shapes == [[tuple(t.shape) for t in la.inputs] for la in plain.layers if la.kind is LayerKind.PLUGIN]
    x = activations(99)
    want = _run(build_mlp(), x)
    err = {name: float((_run(net, x) - want).pow(2).mean()) for name, net in (("plain", plain), ("refit", refit))}
    assert err["refit"] < 0.9 * err["plain"], err


def test_grid_refit_config_errors() -> None:
    with pytest.raises(ConfigError, match="grid_refit"):
        QuantConfig(mode="fp8", grid_refit=1)
    with pytest.raises(ConfigError, match="grid_refit"):
        QuantConfig(mode="int4_wo", grid_refit=-1)
    assert QuantConfig(mode="int4_wo", grid_refit=1).needs_hessians
