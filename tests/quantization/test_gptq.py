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


def _column_by_column(w: torch.Tensor, h: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """GPTQ straight from the paper's equations (float64, no blocks, no Cholesky trick): after
    rounding column j, ``W[:, j+1:] -= err_j * Hinv[j, j+1:] / Hinv[j, j]`` and column j is removed
    from the inverse Hessian. Symmetric int codes on the RTN scales of ``w``."""
    w = w.double().clone()
    _, scales = nq.quantize_weight(w.float(), bits, group_size)
    s = nq.expand_group_scales(scales, w.shape[1], group_size).double()
    qmax = 2 ** (bits - 1) - 1
    hinv = torch.linalg.inv(h.double())
    codes = torch.empty(w.shape, dtype=torch.int8)
    for j in range(w.shape[1]):
        c = torch.round(w[:, j] / s[:, j]).clamp(-qmax, qmax)
        codes[:, j] = c.to(torch.int8)
        err = (w[:, j] - c * s[:, j]) / hinv[j, j]
        w[:, j + 1:] -= err[:, None] * hinv[j, j + 1:][None, :]
        hinv = hinv - hinv[:, j:j + 1] @ hinv[j:j + 1, :] / hinv[j, j]  # eliminate column j
    return codes


@pytest.mark.parametrize("block", [1, 16, 128])
def test_blocked_sweep_equals_the_column_by_column_algorithm(block: int) -> None:
    x, w = correlated_rows(5, k=80), torch.randn(24, 80, generator=torch.Generator().manual_seed(6))
    h = gptq.hessian(x)
    expected = _column_by_column(w, h, 4, 16)
    _, scales = nq.quantize_weight(w, 4, 16)
    s_full = nq.expand_group_scales(scales, 80, 16).double()
    codes = torch.empty(w.shape, dtype=torch.int8)

    def round_column(j: int, col: torch.Tensor) -> torch.Tensor:
        c = torch.round(col / s_full[:, j]).clamp(-7, 7)
        codes[:, j] = c.to(torch.int8)
        return c * s_full[:, j]

    gptq._sweep(w.double(), gptq._inverse_cholesky(h), round_column, block=block)
    assert torch.equal(codes, expected)
    # The float32 path used by the pass: the same codes but for rare ties.
    codes32, _, _ = gptq.gptq_int(w, h, 4, 16, False, block=block)
    assert float((codes32 != expected).float().mean()) < 0.01


@pytest.mark.parametrize("zero_point", [True, False])
def test_act_order_keeps_the_format_and_lowers_output_error(zero_point: bool) -> None:
    x, w = correlated_rows(7), torch.randn(48, 96, generator=torch.Generator().manual_seed(8))
    h = gptq.hessian(x)
    codes, scales, zeros = gptq.gptq_int(w, h, 4, 32, zero_point, act_order=True)
    rtn = nq.fake_quantize_weight(w, 4, 32, zero_point=zero_point)
    ref_scales = (nq.quantize_weight_asym(w, 4, 32) if zero_point else nq.quantize_weight(w, 4, 32))[1]
    torch.testing.assert_close(scales, ref_scales, rtol=0, atol=0)  # static groups: RTN's scales
    natural, _, _ = gptq.gptq_int(w, h, 4, 32, zero_point)
    assert not torch.equal(codes, natural)  # the order changed what was rounded which way
    held_out = correlated_rows(7, rows=512)[256:]
    q = nq.dequantize_weight(codes, scales, 32, zeros)
    assert _out_err(held_out, w, q) < 0.97 * _out_err(held_out, w, rtn)
    fp8 = gptq.gptq_fp8(w, h, w.abs().amax(dim=1) / nq.FP8_MAX, act_order=True)
    assert fp8.dtype == torch.float8_e4m3fn and fp8.shape == w.shape


def test_calibration_hessian_sums_every_row_and_gptq_requires_it() -> None:
    from trtdsl.quantization import calibrate
    mlp = build_mlp()
    feeds = [{"x": activations(s, rows=64)} for s in range(4)]
    stats = calibrate(mlp, feeds, max_rows=16, progress=False, hessians=True)
    # The gate/up input is rms_norm(x) * w: recompute it in plain torch over all 256 rows.
    w = {layer.attrs["weight_name"]: layer.attrs["value"] for layer in mlp.layers
         if layer.kind is LayerKind.CONSTANT and "weight_name" in layer.attrs}
    x = torch.cat([f["x"] for f in feeds])
    n = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w["norm.weight"]
    name = next(k for k, v in stats.xtx.items() if v.shape[0] == n.shape[1])
    assert stats.samples[name].shape[0] == 16 and stats.rows[name] == 256
    torch.testing.assert_close(stats.second_moment(name), (n.double().T @ n.double()) / 256,
                               rtol=1e-5, atol=1e-6)
    without = calibrate(mlp, feeds, progress=False)
    assert without.second_moment(name) is None
    with pytest.raises(ConfigError, match="hessians=True"):
        quantize_network(mlp, "int4_wo", calibration=without, gptq=True, progress=False)
    qnet = quantize_network(mlp, "int4_awq", calibration=stats, gptq=True, gptq_act_order=True,
                            group_size=32, progress=False)
    assert qnet.metadata["quantization"]["gptq_act_order"] is True
    with pytest.raises(ConfigError, match="gptq_damp"):
        QuantConfig(mode="int4_wo", gptq=True, gptq_damp=0.0)


def test_dynamic_groups_take_scales_from_the_updated_weights() -> None:
    x, w = correlated_rows(9), torch.randn(32, 96, generator=torch.Generator().manual_seed(10))
    h = gptq.hessian(x)
    seen: list[tuple[int, torch.Tensor]] = []

    def minmax(j: int, wg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seen.append((j, wg.clone()))
        _, s, z = nq.quantize_weight_asym(wg, 4, 0)
        return s[:, 0], z[:, 0]

    codes, scales, zeros = gptq.gptq_int(w, h, 4, 32, True, group_params=minmax, block=64)
    assert [j for j, _ in seen] == [0, 32, 64]
    torch.testing.assert_close(seen[0][1], w[:, :32])  # nothing rounded before the first group
    assert not torch.allclose(seen[1][1], w[:, 32:64])  # later groups carry the earlier errors
    for j, wg in seen:  # stored scales/zeros are the ones computed from the updated weights
        _, s, z = nq.quantize_weight_asym(wg, 4, 0)
        torch.testing.assert_close(scales[:, j // 32], s[:, 0])
        torch.testing.assert_close(zeros[:, j // 32], z[:, 0])
    assert int(codes.min()) >= -8 and int(codes.max()) <= 7
    held_out = correlated_rows(9, rows=512)[256:]
    rtn = nq.fake_quantize_weight(w, 4, 32, zero_point=True)
    q = nq.dequantize_weight(codes, scales, 32, zeros)
    assert _out_err(held_out, w, q) < 0.97 * _out_err(held_out, w, rtn)


def test_equivalent_rows_reproduce_the_second_moment() -> None:
    from trtdsl.quantization.quantize import _equivalent_rows
    x = correlated_rows(11, rows=300, k=40)
    h = x.double().T @ x.double() / 300
    r = _equivalent_rows(h)
    torch.testing.assert_close(r.double().T @ r.double(), h, rtol=1e-5, atol=1e-6)
    h[:, 3] = h[3, :] = 0  # a dead channel: singular, still reproduced
    r = _equivalent_rows(h)
    torch.testing.assert_close(r.double().T @ r.double(), h, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("options", [{"awq_all_rows": True},
                                     {"gptq": True, "gptq_static_groups": False},
                                     {"gptq": True, "gptq_static_groups": False, "gptq_act_order": True},
                                     {"gptq": True, "awq_all_rows": True, "gptq_act_order": True}])
def test_awq_variants_stay_close(options: dict) -> None:
    mlp = build_mlp()
    feeds = [{"x": activations(s, rows=64)} for s in range(4)]
    qnet = quantize_network(mlp, "int4_awq", calibration_feeds=feeds, group_size=32, progress=False,
                            **options)
    rtn = quantize_network(mlp, "int4_wo", group_size=32, progress=False)
    x = activations(99)
    ref = _plain_torch_mlp(mlp, x)
    err = float((_run(qnet, x) - ref).norm() / ref.norm())
    err_rtn = float((_run(rtn, x) - ref).norm() / ref.norm())
    assert err < err_rtn, (err, err_rtn)
    with pytest.raises(ConfigError, match="gptq_static_groups"):
        QuantConfig(mode="int4_awq", gptq=True, gptq_static_groups=False, group_size=0)
