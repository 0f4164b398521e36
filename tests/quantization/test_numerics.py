"""The quantization arithmetic and the GEMM plugin references, against plain torch."""

from __future__ import annotations

import pytest
import torch

from trtdsl.errors import ConfigError
from trtdsl.quantization import numerics as nq
from trtdsl.quantization.plugins import (fp8_gemm_reference, int8_gemm_reference,
                                         weight_only_gemm_reference)


def test_int4_pack_unpack_round_trips_every_code() -> None:
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(-8, 8, (5, 34), generator=g, dtype=torch.int8)
    codes[0, :16] = torch.arange(-8, 8, dtype=torch.int8)
    packed = nq.pack_int4(codes)
    assert packed.dtype == torch.int8 and packed.shape == (5, 17)
    assert torch.equal(nq.unpack_int4(packed), codes)


def test_int4_nibble_layout_is_low_then_high() -> None:
    # Column 0 (= 1) in the low nibble, column 1 (= -2 = 0b1110) in the high nibble: 0xE1.
    assert nq.pack_int4(torch.tensor([[1, -2]])).view(torch.uint8).tolist() == [[0xE1]]


@pytest.mark.parametrize("codes", [torch.zeros(2, 3, dtype=torch.int8), torch.tensor([[9, 0]])])
def test_int4_pack_rejects_odd_width_and_out_of_range(codes: torch.Tensor) -> None:
    with pytest.raises(ConfigError, match="pack_int4"):
        nq.pack_int4(codes)


@pytest.mark.parametrize("bits,group_size,k", [(8, 0, 64), (4, 32, 64), (4, 32, 80), (8, 64, 80)])
def test_weight_quantization_is_round_to_nearest_within_half_a_step(bits: int, group_size: int,
                                                                     k: int) -> None:
    w = torch.randn(6, k, generator=torch.Generator().manual_seed(1))
    codes, scales = nq.quantize_weight(w, bits, group_size)
    qmax = 127 if bits == 8 else 7
    g = group_size or k
    for row in range(6):  # each group's scale is its own max |w| / qmax, the last one may be short
        for j, start in enumerate(range(0, k, g)):
            block = w[row, start:start + g]
            assert scales[row, j] == pytest.approx(float(block.abs().max()) / qmax, rel=1e-6)
    deq = nq.dequantize_weight(codes, scales, group_size)
    step = nq.expand_group_scales(scales, k, group_size)
    assert codes.abs().max() <= qmax
    assert ((w - deq).abs() <= step / 2 + 1e-7).all()


def test_awq_scales_beat_round_to_nearest_on_outlier_channels() -> None:
    g = torch.Generator().manual_seed(2)
    k, n = 128, 96
    boost = torch.ones(k)
    boost[torch.randperm(k, generator=g)[:4]] = 40.0  # a few salient input channels, as in LLMs

    def acts(rows: int) -> torch.Tensor:
        return torch.randn(rows, k, generator=g) * boost

    w = torch.randn(n, k, generator=g)
    s, best, rtn = nq.awq_search_scales(acts(256), [w], group_size=64)
    assert best < rtn
    x = acts(256)  # held out: the scales must generalize, not just fit the calibration rows
    ref = x @ w.T
    rtn_err = (x @ nq.fake_quantize_weight(w, 4, 64).T - ref).pow(2).mean()
    awq_err = ((x / s) @ nq.fake_quantize_weight(w * s, 4, 64).T - ref).pow(2).mean()
    assert awq_err < 0.7 * rtn_err


def test_awq_clip_search_never_increases_the_calibration_error() -> None:
    g = torch.Generator().manual_seed(3)
    x, w = torch.randn(64, 64, generator=g), torch.randn(32, 64, generator=g)
    w[:, 0] = 8.0  # one outlier column per row stretches its group's range
    clip = nq.awq_search_clip(x, w, 32)
    assert ((clip > 0.49) & (clip <= 1.0)).all()
    err = lambda c: (x @ (w - nq.fake_quantize_weight(w, 4, 32, c)).T).pow(2).mean()  # noqa: E731
    assert err(clip) <= err(None) + 1e-9


def test_smoothquant_balances_activation_and_weight_ranges() -> None:
    g = torch.Generator().manual_seed(4)
    x = torch.randn(100, 16, generator=g) * torch.logspace(-1, 2, 16)
    w1, w2 = torch.randn(8, 16, generator=g), torch.randn(4, 16, generator=g) * 3
    s = nq.smoothquant_scales(x.abs().amax(0), [w1, w2], alpha=0.5)
    x_range = (x / s).abs().amax(0)
    w_range = (torch.cat([w1, w2]) * s).abs().amax(0)
    torch.testing.assert_close(x_range, w_range, rtol=1e-5, atol=0)  # the point of alpha = 0.5


def test_int8_gemm_reference_is_exact_for_representable_activations() -> None:
    g = torch.Generator().manual_seed(5)
    codes_x = torch.randint(-127, 128, (7, 48), generator=g)
    codes_x[:, 0] = 127  # each row's max |x| is exactly 127 codes: quantization loses nothing
    row_scale = torch.rand(7, 1, generator=g) + 0.1
    x = codes_x.float() * row_scale
    w_codes = torch.randint(-127, 128, (5, 48), generator=g, dtype=torch.int8)
    w_scale = torch.rand(5, generator=g) + 0.1
    out = int8_gemm_reference([x, w_codes, w_scale], {})
    expected = (codes_x.long() @ w_codes.long().T).double() * row_scale.double() * w_scale.double()
    torch.testing.assert_close(out.double(), expected, rtol=1e-6, atol=1e-4)


def test_fp8_gemm_reference_matches_torch_scaled_mm() -> None:
    g = torch.Generator().manual_seed(6)
    x, w = torch.randn(16, 64, generator=g) * 3, torch.randn(32, 64, generator=g)
    x_scale = (x.abs().max() / nq.FP8_MAX).reshape(1)
    w_scale = (w.abs().max() / nq.FP8_MAX).reshape(1)
    w8 = nq.quantize_fp8(w, w_scale)
    out = fp8_gemm_reference([x, w8, w_scale, x_scale], {})
    expected = torch._scaled_mm(nq.quantize_fp8(x, x_scale), w8.T, scale_a=x_scale[0],
                                scale_b=w_scale[0], out_dtype=torch.float32)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert (out - x @ w.T).norm() / (x @ w.T).norm() < 0.06  # and it is close to the float GEMM


@pytest.mark.parametrize("bits,group_size", [(8, 0), (4, 32)])
def test_weight_only_gemm_reference_uses_the_dequantized_weights(bits: int, group_size: int) -> None:
    g = torch.Generator().manual_seed(7)
    x, w = torch.randn(3, 4, 64, generator=g).to(torch.bfloat16), torch.randn(16, 64, generator=g)
    codes, scales = nq.quantize_weight(w, bits, group_size)
    qweight = nq.pack_int4(codes) if bits == 4 else codes
    out = weight_only_gemm_reference([x, qweight, scales], {"bits": bits, "group_size": group_size,
                                                            "in_features": 64})
    assert out.dtype == torch.bfloat16 and out.shape == (3, 4, 16)
    deq = codes.float() * scales.repeat_interleave(group_size or 64, dim=1)
    torch.testing.assert_close(out, torch.nn.functional.linear(x.float(), deq).to(torch.bfloat16))
