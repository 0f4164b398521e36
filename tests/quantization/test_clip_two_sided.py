"""AWQ clip search with separate factors for the two ends of a group's range (awq_clip_two_sided)."""

from __future__ import annotations

import torch

from trtdsl.quantization import quantize_network
from trtdsl.quantization import numerics as nq

from test_pass import _run, activations, build_mlp


def _group_errors(x: torch.Tensor, w: torch.Tensor, q: torch.Tensor, gs: int) -> torch.Tensor:
    d = (w - q).view(w.shape[0], -1, gs)
    return torch.einsum("Ngc,ngc->Nng", x.view(x.shape[0], -1, gs), d).pow(2).mean(0)


def test_two_sided_grid_and_search() -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 64, generator=g) + torch.rand(16, 1, generator=g)  # off-centre groups
    x = torch.randn(96, 64, generator=g) * torch.logspace(-1, 1, 64)
    lo = torch.full((16, 2), 0.8)
    hi = torch.full((16, 2), 0.6)
    codes, scales, zeros = nq.quantize_weight_asym(w, 4, 32, torch.stack([lo, hi]))
    wmin, wmax = w.view(16, 2, 32).amin(2), w.view(16, 2, 32).amax(2)
    mid, half = (wmin + wmax) / 2, (wmax - wmin) / 2
    torch.testing.assert_close(scales, (half * 0.6 + half * 0.8) / 15)  # [mid - 0.8 h, mid + 0.6 h]
    torch.testing.assert_close(zeros, mid - 0.8 * half + 8 * scales)
    sym = nq.awq_search_clip(x, w, 32, zero_point=True, max_rows=96)
    pair = nq.awq_search_clip(x, w, 32, zero_point=True, max_rows=96, two_sided=True)
    assert sym.shape == (16, 2) and pair.shape == (2, 16, 2)
    err_sym = _group_errors(x, w, nq.fake_quantize_weight(w, 4, 32, sym, zero_point=True), 32)
    err_pair = _group_errors(x, w, nq.fake_quantize_weight(w, 4, 32, pair, zero_point=True), 32)
    assert bool((err_pair <= err_sym * (1 + 1e-6)).all()) and float(err_pair.sum()) < 0.97 * float(err_sym.sum())
    assert not torch.equal(pair[0], pair[1])
    # Brute force over the whole 11 x 11 grid bounds what the coordinate search can reach.
    ratios = [1.0 - 0.05 * i for i in range(11)]
    brute = torch.stack([_group_errors(x, w, nq.fake_quantize_weight(
        w, 4, 32, torch.stack([torch.full((16, 2), a), torch.full((16, 2), b)]), zero_point=True), 32)
        for a in ratios for b in ratios]).amin(0)
    assert bool((brute <= err_pair * (1 + 1e-6)).all())


def test_two_sided_clip_in_the_pass() -> None:
    feeds = [{"x": activations(s, rows=64)} for s in range(4)]
    kw = dict(calibration_feeds=feeds, progress=False, group_size=32, awq_grid=5)
    one = quantize_network(build_mlp(), "int4_awq", **kw)
    two = quantize_network(build_mlp(), "int4_awq", awq_clip_two_sided=True, **kw)
    x = activations(99)
    ref = _run(build_mlp(), x)
    err_one, err_two = (float((_run(n, x) - ref).pow(2).mean()) for n in (one, two))
    assert err_two < err_one, (err_two, err_one)
