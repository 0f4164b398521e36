"""GPTQ-style error-compensating rounding (Frantar et al., 2022) for the existing weight formats.

Round-to-nearest quantizes every weight on its own. GPTQ rounds the input columns one at a time and
pushes each column's rounding error onto the columns not yet rounded, weighted by the inverse Hessian
``H = X^T X`` of the calibration activations, so the *output* error ``||X (W - Q)^T||`` shrinks while
the stored format (codes, per-group/per-channel scales, zeros) stays exactly what round-to-nearest
would store. Scales are fixed from the original weights before the sweep (as in GPTQ without
act-order), so the kernels and their input formats are untouched.
"""

from __future__ import annotations

import torch

from . import numerics as nq

__all__ = ["hessian", "gptq_int", "gptq_fp8"]


def hessian(x: torch.Tensor, damp: float = 0.01) -> torch.Tensor:
    """``X^T X / N`` of calibration rows ``x [N, k]`` (float64), damped by ``damp * mean(diag)`` so it
    is invertible even with fewer rows than channels; unused channels get a unit diagonal."""
    x = x.double().reshape(-1, x.shape[-1])
    h = x.T @ x / max(x.shape[0], 1)
    diag = torch.diagonal(h)
    diag[diag == 0] = 1.0
    h += torch.eye(h.shape[0], dtype=h.dtype) * (damp * float(diag.mean()))
    return h


def _inverse_cholesky(h: torch.Tensor) -> torch.Tensor:
    """Upper Cholesky factor of ``H^-1`` (GPTQ's numerically stable form of the update weights)."""
    hinv = torch.cholesky_inverse(torch.linalg.cholesky(h))
    return torch.linalg.cholesky(hinv, upper=True)


def _sweep(w: torch.Tensor, h: torch.Tensor, round_column) -> torch.Tensor:
    """Round the columns of ``w [n, k]`` left to right with ``round_column(col_index, column) ->
    rounded column`` (float, dequantized), propagating each error to the later columns. Returns the
    dequantized result."""
    w = w.float().clone()  # float32 updates: the sweep is k rank-1 updates of [n, k]
    u = _inverse_cholesky(h).float()
    q = torch.empty_like(w)
    for j in range(w.shape[1]):
        q[:, j] = round_column(j, w[:, j])
        err = (w[:, j] - q[:, j]) / u[j, j]
        w[:, j + 1:] -= err[:, None] * u[j, j + 1:][None, :]
    return q


def gptq_int(w: torch.Tensor, h: torch.Tensor, bits: int, group_size: int, zero_point: bool,
             clip: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """GPTQ rounding onto the int grid of :func:`~trtdsl.quantization.numerics.quantize_weight`
    (symmetric) or ``quantize_weight_asym`` (``zero_point``), with that function's scales (and
    zeros, and ``clip``) computed from ``w``. Returns ``(codes, scales, zeros or None)``."""
    w = w.float()
    k = w.shape[1]
    if zero_point:
        _, scales, zeros = nq.quantize_weight_asym(w, bits, group_size, clip)
        lo_code, hi_code = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    else:
        _, scales = nq.quantize_weight(w, bits, group_size, clip)
        zeros = None
        hi_code = {8: nq.INT8_MAX, 4: nq.INT4_MAX}[bits]
        lo_code = -hi_code
    s_full = nq.expand_group_scales(scales, k, group_size)
    z_full = nq.expand_group_scales(zeros, k, group_size) if zeros is not None else \
        torch.zeros_like(s_full)
    codes = torch.empty(w.shape, dtype=torch.int8)

    def round_column(j: int, col: torch.Tensor) -> torch.Tensor:
        c = torch.round((col - z_full[:, j]) / s_full[:, j]).clamp(lo_code, hi_code)
        codes[:, j] = c.to(torch.int8)
        return c * s_full[:, j] + z_full[:, j]

    _sweep(w, h, round_column)
    return codes, scales, zeros


def gptq_fp8(w: torch.Tensor, h: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """GPTQ rounding onto e4m3 with the per-channel (``[n]``) or per-tensor (``[1]``) ``scale``
    (saturating as :func:`~trtdsl.quantization.numerics.quantize_fp8`). Returns the e4m3 codes."""
    w = w.float()
    col_scale = scale.float().expand(w.shape[0]) if scale.numel() == 1 else scale.float()
    codes = torch.empty(w.shape, dtype=torch.float8_e4m3fn)

    def round_column(j: int, col: torch.Tensor) -> torch.Tensor:
        c = nq.quantize_fp8(col, col_scale)
        codes[:, j] = c
        return c.float() * col_scale

    _sweep(w, h, round_column)
    return codes
