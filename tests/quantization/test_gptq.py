"""GPTQ rounding (QuantConfig.gptq): same stored formats as round-to-nearest, smaller output error."""

from __future__ import annotations

import pytest
import torch

from trtdsl.errors import ConfigError
from trtdsl.ir.network import LayerKind
from trtdsl.quantization import QuantConfig, quantize_network
from trtdsl.quantization import gptq
from trtdsl.quantization import numerics as nq

from test_pass import _plain_torch_mlp, _run, activations, build_mlp


def correlated_rows(seed: int, rows: int = 256, k: int = 96) -> torch.Tensor:
    # Correlated channels of unequal scale, as LLM activations have: what GPTQ's Hessian exploits.
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(k, k, generator=g) / k ** 0.5 + torch.eye(k)
    return (torch.randn(rows, k, generator=g) @ mix) * torch.logspace(-0.5, 0.5, k)


def _out_err(x: torch.Tensor, w: torch.Tensor, q: torch.Tensor) -> float:
    return float((x @ q.T - x @ w.T).pow(2).mean())


@pytest.mark.parametrize("bits,group_size,zero_point", [(4, 32, True), (4, 0, False), (8, 32, False)])
def test_gptq_int_keeps_rtn_grid_and_lowers_output_error(bits: int, group_size: int,
                                                         zero_point: bool) -> None:
    x, w = correlated_rows(0), torch.randn(48, 96, generator=torch.Generator().manual_seed(1))
    codes, scales, zeros = gptq.gptq_int(w, gptq.hessian(x), bits, group_size, zero_point)
    if zero_point:
        rtn_codes, rtn_scales, rtn_zeros = nq.quantize_weight_asym(w, bits, group_size)
        torch.testing.assert_close(zeros, rtn_zeros, rtol=0, atol=0)
    else:
        (rtn_codes, rtn_scales), rtn_zeros = nq.quantize_weight(w, bits, group_size), None
    torch.testing.assert_close(scales, rtn_scales, rtol=0, atol=0)  # the format is RTN's
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if zero_point else (-(2 ** (bits - 1) - 1),
                                                                             2 ** (bits - 1) - 1)
    assert codes.dtype == torch.int8 and int(codes.min()) >= lo and int(codes.max()) <= hi
    assert not torch.equal(codes, rtn_codes)
    q = nq.dequantize_weight(codes, scales, group_size, zeros)
    rtn = nq.dequantize_weight(rtn_codes, rtn_scales, group_size, rtn_zeros)
    held_out = correlated_rows(0, rows=512)[256:]  # same distribution, rows GPTQ did not see
    assert _out_err(held_out, w, q) < 0.97 * _out_err(held_out, w, rtn)


def test_gptq_with_an_identity_hessian_is_round_to_nearest() -> None:
    # Uncorrelated, equal-variance inputs: no error is worth moving, so GPTQ must not move any.
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(2))
    codes, _, _ = gptq.gptq_int(w, torch.eye(64, dtype=torch.float64), 4, 32, True)
    assert torch.equal(codes, nq.quantize_weight_asym(w, 4, 32)[0])


def test_gptq_fp8_lowers_output_error() -> None:
    x, w = correlated_rows(3), torch.randn(40, 96, generator=torch.Generator().manual_seed(4))
    scale = w.abs().amax(dim=1) / nq.FP8_MAX
    codes = gptq.gptq_fp8(w, gptq.hessian(x), scale)
    assert codes.dtype == torch.float8_e4m3fn and codes.shape == w.shape
    q = codes.float() * scale[:, None]
    rtn = nq.quantize_fp8(w, scale[:, None]).float() * scale[:, None]
    held_out = correlated_rows(3, rows=512)[256:]
    assert _out_err(held_out, w, q) < 0.9 * _out_err(held_out, w, rtn)


@pytest.mark.parametrize("mode,plugin,n_inputs", [("int4_awq", "trtdsl.weight_only_gemm", 4),
                                                  ("int8_wo", "trtdsl.weight_only_gemm", 3),
                                                  ("fp8", "trtdsl.fp8_gemm", 4)])
def test_gptq_pass_writes_the_usual_plugins_and_stays_close(mode: str, plugin: str,
                                                            n_inputs: int) -> None:
    mlp = build_mlp()
    feeds = [{"x": activations(s, rows=64)} for s in range(4)]
    qnet = quantize_network(mlp, mode, calibration_feeds=feeds, group_size=32, gptq=True,
                            progress=False)
    plugins = [layer for layer in qnet.layers if layer.kind is LayerKind.PLUGIN]
    assert {layer.attrs["name"] for layer in plugins} == {plugin}
    assert all(len(layer.inputs) == n_inputs for layer in plugins)  # same formats as without GPTQ
    assert qnet.metadata["quantization"]["gptq"] is True
    x = activations(99)
    ref = _plain_torch_mlp(mlp, x)
    rtn = quantize_network(mlp, mode, calibration_feeds=feeds, group_size=32, progress=False)
    err = float((_run(qnet, x) - ref).norm() / ref.norm())
    err_rtn = float((_run(rtn, x) - ref).norm() / ref.norm())
    assert 1e-6 < err < 1.2 * err_rtn, (err, err_rtn)


def test_gptq_config_errors() -> None:
    with pytest.raises(ConfigError, match="gptq applies"):
        QuantConfig(mode="int8_sq", gptq=True)
    with pytest.raises(ConfigError, match="calibration_feeds"):  # its Hessian needs calibration
        quantize_network(build_mlp(), "int4_wo", gptq=True)
