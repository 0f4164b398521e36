"""GPTQ with act order and per-group scales from the updated weights (gptq_static_groups=False with
gptq_act_order=True): against a column-by-column reference in the permuted order."""

from __future__ import annotations

import pytest
import torch

from trtdsl.quantization import gptq
from trtdsl.quantization import numerics as nq

from test_gptq import _out_err, correlated_rows

GS = 16


def _minmax(j: int, wg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    _, s, z = nq.quantize_weight_asym(wg, 4, 0)
    return s[:, 0], z[:, 0]


def _reference(w: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain GPTQ in act order, one column at a time with the explicit inverse Hessian; a group's
    (scale, zero) is taken from all its columns the moment the first of them comes up."""
    k = w.shape[1]
    perm = torch.argsort(torch.diagonal(h), descending=True, stable=True)
    position = torch.empty(k, dtype=torch.long)
    position[perm] = torch.arange(k)
    wp, hinv = w.double()[:, perm].clone(), torch.linalg.inv(h.double()[perm][:, perm])
    scales = torch.full((w.shape[0], (k + GS - 1) // GS), float("nan"), dtype=torch.float64)
    zeros = scales.clone()
    codes = torch.empty(w.shape, dtype=torch.int8)
    for j in range(k):
        g = int(perm[j]) // GS
        if torch.isnan(scales[0, g]):
            s, z = _minmax(0, wp[:, position[g * GS:(g + 1) * GS]].float())
            scales[:, g], zeros[:, g] = s.double(), z.double()
        c = torch.round((wp[:, j] - zeros[:, g]) / scales[:, g]).clamp(-8, 7)
        codes[:, int(perm[j])] = c.to(torch.int8)
        err = (wp[:, j] - (c * scales[:, g] + zeros[:, g])) / hinv[j, j]
        wp[:, j + 1:] -= err[:, None] * hinv[j, j + 1:][None, :]
        hinv = hinv - hinv[:, j:j + 1] @ hinv[j:j + 1, :] / hinv[j, j]  # eliminate column j
    return codes, scales.float()


@pytest.mark.parametrize("block", [8, 32, 128])
def test_act_order_dynamic_groups_match_the_column_by_column_reference(block: int) -> None:
    # k = 72: a short last group; block 8 < GS: a group's columns straddle many blocks.
    x, w = correlated_rows(12, k=72), torch.randn(20, 72, generator=torch.Generator().manual_seed(13))
    h = gptq.hessian(x)
    want_codes, want_scales = _reference(w, h)
    codes, scales, zeros = gptq.gptq_int(w.double(), h, 4, GS, True, act_order=True, block=block,
                                         group_params=_minmax)
    assert float((codes != want_codes).float().mean()) < 0.01  # float32 vs float64: rare ties
    torch.testing.assert_close(scales, want_scales, rtol=1e-3, atol=1e-6)
    rtn_scales = nq.quantize_weight_asym(w, 4, GS)[1]
    assert not torch.allclose(scales, rtn_scales)  # the scales came from updated weights
    held_out = correlated_rows(12, rows=512, k=72)[256:]
    rtn = nq.fake_quantize_weight(w, 4, GS, zero_point=True)
    assert _out_err(held_out, w, nq.dequantize_weight(codes, scales, GS, zeros)) < \
        0.97 * _out_err(held_out, w, rtn)
