"""GPTQ-style error-compensating rounding (Frantar et al., 2022) for the existing weight formats.

Round-to-nearest quantizes every weight on its own. GPTQ rounds the input columns one at a time and
pushes each column's rounding error onto the columns not yet rounded, weighted by the inverse Hessian
``H = X^T X`` of the calibration activations, so the *output* error ``||X (W - Q)^T||`` shrinks while
the stored format (codes, per-group/per-channel scales, zeros) stays exactly what round-to-nearest
would store: scales are fixed from the original weights before the sweep ("static groups"), so the
kernels and their input formats are untouched.

* The sweep is blocked ("lazy batch" updates): inside a block of ``block`` columns the error is
  propagated column by column, to the rest of the matrix once per block as one GEMM. The result is
  the column-by-column one up to float rounding order, in seconds instead of minutes.
* ``act_order`` visits the columns by decreasing Hessian diagonal (the most active inputs first,
  while the most columns are left to absorb their error); every column still uses its own group's
  scale, so the stored format does not change.
* ``damp`` adds ``damp * mean(diag H)`` to the diagonal (GPTQ's 1 %): it keeps ``H`` invertible and
  limits how far the error is pushed.
"""

from __future__ import annotations

from typing import Callable

import torch

from . import numerics as nq

__all__ = ["hessian", "damped", "gptq_int", "gptq_fp8", "refit_scales", "refine_grid", "output_error"]

RoundColumn = Callable[[int, torch.Tensor], torch.Tensor]
#: ``(first column, current weights of the group [n, g]) -> (scales [n], zeros [n] or None)``
GroupParams = Callable[[int, torch.Tensor], "tuple[torch.Tensor, torch.Tensor | None]"]


def damped(h: torch.Tensor, damp: float = 0.01) -> torch.Tensor:
    """A float64 copy of ``h [k, k]`` with unused channels (zero diagonal) given a unit diagonal and
    ``damp * mean(diag)`` added to the diagonal."""
    h = h.double().clone()
    diag = torch.diagonal(h)
    diag[diag == 0] = 1.0
    h += torch.eye(h.shape[0], dtype=h.dtype) * (damp * float(diag.mean()))
    return h


def hessian(x: torch.Tensor, damp: float = 0.01) -> torch.Tensor:
    """``X^T X / N`` of calibration rows ``x [N, k]`` (float64), damped as :func:`damped`."""
    x = x.double().reshape(-1, x.shape[-1])
    return damped(x.T @ x / max(x.shape[0], 1), damp)


def _inverse_cholesky(h: torch.Tensor) -> torch.Tensor:
    """Upper Cholesky factor of ``H^-1`` (GPTQ's numerically stable form of the update weights)."""
    hinv = torch.cholesky_inverse(torch.linalg.cholesky(h))
    return torch.linalg.cholesky(hinv, upper=True)


def _sweep(w: torch.Tensor, u: torch.Tensor, round_column: RoundColumn, block: int = 128,
           groups: list[torch.Tensor] | None = None,
           on_group: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Round the columns of ``w [n, k]`` left to right with ``round_column(col_index, column) ->
    rounded column`` (float, dequantized), each error propagated to the later columns through the
    upper Cholesky factor ``u`` of ``H^-1``, in blocks of ``block`` columns. Works in ``w``'s dtype
    when it is float64, else float32. ``groups[g]`` lists the (sweep) positions of group ``g``'s
    columns: ``on_group(g, current)`` is called just before the first of them is rounded, with
    ``current [n, len(groups[g])]`` their weights as updated by every column rounded so far
    (including the updates the blocked sweep has not yet applied to later blocks). Returns the
    dequantized result."""
    dtype = torch.float64 if w.dtype == torch.float64 else torch.float32
    w, u = w.to(dtype).clone(), u.to(dtype)
    n, k = w.shape
    q = torch.empty_like(w)
    starts = {int(cols.min()): g for g, cols in enumerate(groups)} if groups and on_group else {}
    for b0 in range(0, k, block):
        b1 = min(b0 + block, k)
        wb, ub = w[:, b0:b1], u[b0:b1, b0:b1]  # views: updates land in w
        errs = torch.empty(n, b1 - b0, dtype=dtype)
        for j in range(b1 - b0):
            if b0 + j in starts:
                assert groups is not None and on_group is not None
                g = starts[b0 + j]
                cols = groups[g]
                current = w[:, cols]  # a copy (advanced indexing)
                late = cols >= b1  # not yet updated by this block's errors: apply them here
                if j and bool(late.any()):
                    current[:, late] -= errs[:, :j] @ u[b0:b0 + j, cols[late]]
                on_group(g, current)
            q[:, b0 + j] = round_column(b0 + j, wb[:, j])
            errs[:, j] = (wb[:, j] - q[:, b0 + j]) / ub[j, j]
            wb[:, j + 1:] -= errs[:, j:j + 1] * ub[j:j + 1, j + 1:]
        w[:, b1:] -= errs @ u[b0:b1, b1:]  # the whole block's errors onto every later column at once
    return q


def _ordered_sweep(w: torch.Tensor, h: torch.Tensor, round_column: RoundColumn, act_order: bool,
                   block: int) -> None:
    """:func:`_sweep` over ``w`` in natural or act order; ``round_column`` always receives the
    *original* column index (so each column keeps its own group's scale)."""
    if not act_order:
        _sweep(w, _inverse_cholesky(h), round_column, block)
        return
    perm = torch.argsort(torch.diagonal(h), descending=True, stable=True)
    hp = h[perm][:, perm]
    _sweep(w[:, perm], _inverse_cholesky(hp), lambda j, col: round_column(int(perm[j]), col), block)


def gptq_int(w: torch.Tensor, h: torch.Tensor, bits: int, group_size: int, zero_point: bool,
             clip: torch.Tensor | None = None, *, act_order: bool = False, block: int = 128,
             group_params: GroupParams | None = None,
             grid: tuple[torch.Tensor, torch.Tensor | None] | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """GPTQ rounding onto the int grid of :func:`~trtdsl.quantization.numerics.quantize_weight`
    (symmetric) or ``quantize_weight_asym`` (``zero_point``). ``h`` is the (damped) Hessian.

    Static groups (default): the scales (and zeros, and ``clip``) are those round-to-nearest computes
    from ``w``. ``group_params`` instead computes each group's scales/zeros when the sweep reaches
    it, from the group's weights as updated by the earlier columns (GPTQ's original per-group
    scales; needs ``group_size > 0``; with ``act_order`` a group's scales are computed when the
    sweep reaches the first of its columns in that order, from all of them as updated so far).
    Returns ``(codes, scales, zeros or None)``, the scales and zeros ``[n, num_groups]`` either way. ``grid`` gives the static ``(scales,
    zeros)`` instead of round-to-nearest's (e.g. :func:`refit_scales`'s)."""
    w = w.float()
    n, k = w.shape
    if zero_point:
        _, scales, zeros = nq.quantize_weight_asym(w, bits, group_size, clip)
        lo_code, hi_code = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    else:
        _, scales = nq.quantize_weight(w, bits, group_size, clip)
        zeros = None
        hi_code = {8: nq.INT8_MAX, 4: nq.INT4_MAX}[bits]
        lo_code = -hi_code
    if grid is not None:
        scales = grid[0].float().clone()
        zeros = None if grid[1] is None else grid[1].float().clone()
    perm = torch.argsort(torch.diagonal(h), descending=True, stable=True) if act_order else \
        torch.arange(k)
    groups, on_group = None, None
    if group_params is not None:
        if group_size == 0:
            raise ValueError("gptq_int: per-group scales from updated weights need group_size > 0")
        position = torch.empty(k, dtype=torch.long)
        position[perm] = torch.arange(k)  # sweep position of each original column
        groups = [position[j:j + group_size] for j in range(0, k, group_size)]

        def on_group(g: int, wg: torch.Tensor) -> None:  # wg: the group's columns in original order
            g_scales, g_zeros = group_params(g * group_size, wg.float())
            scales[:, g] = g_scales
            if zeros is not None:
                assert g_zeros is not None
                zeros[:, g] = g_zeros

    codes = torch.empty(w.shape, dtype=torch.int8)

    def round_column(j: int, col: torch.Tensor) -> torch.Tensor:
        j = int(perm[j])  # the original column: its own group's scale
        g = 0 if group_size == 0 else j // group_size  # read at call time: on_group may have set it
        s_j = scales[:, g]
        z_j = zeros[:, g] if zeros is not None else torch.zeros_like(s_j)
        c = torch.round((col.float() - z_j) / s_j).clamp(lo_code, hi_code)
        codes[:, j] = c.to(torch.int8)
        return c * s_j + z_j

    hp = h[perm][:, perm] if act_order else h
    _sweep(w[:, perm] if act_order else w, _inverse_cholesky(hp), round_column, block, groups, on_group)
    return codes, scales, zeros


def gptq_fp8(w: torch.Tensor, h: torch.Tensor, scale: torch.Tensor, *, act_order: bool = False,
             block: int = 128) -> torch.Tensor:
    """GPTQ rounding onto e4m3 with the per-channel (``[n]``) or per-tensor (``[1]``) ``scale``
    (saturating as :func:`~trtdsl.quantization.numerics.quantize_fp8`). Returns the e4m3 codes."""
    w = w.float()
    col_scale = scale.float().expand(w.shape[0]) if scale.numel() == 1 else scale.float()
    codes = torch.empty(w.shape, dtype=torch.float8_e4m3fn)

    def round_column(j: int, col: torch.Tensor) -> torch.Tensor:
        c = nq.quantize_fp8(col, col_scale)
        codes[:, j] = c
        return c.float() * col_scale

    _ordered_sweep(w, h, round_column, act_order, block)
    return codes


def output_error(w: torch.Tensor, q: torch.Tensor, h: torch.Tensor) -> float:
    """``sum_rows (w - q) H (w - q)^T``: the output error ``||X (W - Q)^T||^2 / N`` of the GEMM."""
    d = (w.double() - q.double())
    return float(((d @ h.double()) * d).sum())


def refit_scales(w: torch.Tensor, codes: torch.Tensor, h: torch.Tensor, group_size: int,
                 zeros: torch.Tensor | None, scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Least-squares ``(scale, zero)`` of every group for fixed integer ``codes [n, k]``: per row,
    the ``2 G`` (``G`` without zeros) values minimizing ``(w - q) H (w - q)^T`` with
    ``q = codes * scale + zero`` groupwise -- the exact optimum of the output error for these codes
    (rounding chose the codes for the old grid; the grid that best fits them is usually a little
    different). ``scales`` / ``zeros`` (the current grid) anchor a tiny ridge, which decides only
    degenerate groups (all codes equal). Returns the new ``(scales, zeros or None)``."""
    n, k = w.shape
    gs = group_size or k
    groups = nq.num_groups(k, group_size)
    pad = groups * gs - k
    hd = torch.nn.functional.pad(h.double(), (0, pad, 0, pad))  # zero rows: padding adds nothing
    c = torch.nn.functional.pad(codes.double(), (0, pad))
    hw = torch.nn.functional.pad(w.double(), (0, pad)) @ hd  # [n, K]
    hg = hd.view(groups, gs, groups * gs)
    # p[r, g, j] = sum_{i in g} c[r, i] H[i, j]; blocks of A^T H A with A = [codes | ones] per group.
    p = torch.einsum("ngi,gij->ngj", c.view(n, groups, gs), hg)
    m_cc = torch.einsum("nghi,nhi->ngh", p.view(n, groups, groups, gs), c.view(n, groups, gs))
    blocks = [m_cc]
    b = [(c * hw).view(n, groups, gs).sum(2)]
    if zeros is not None:
        m_c1 = p.view(n, groups, groups, gs).sum(3)  # sum_{i in g, j in h} c_i H_ij
        m_11 = hg.view(groups, gs, groups, gs).sum((1, 3)).expand(n, groups, groups)
        blocks = [torch.cat([m_cc, m_c1], 2), torch.cat([m_c1.transpose(1, 2), m_11], 2)]
        b.append(hw.view(n, groups, gs).sum(2))
    m = torch.cat(blocks, 1)
    rhs = torch.cat(b, 1)
    old = torch.cat([scales.double()] + ([zeros.double()] if zeros is not None else []), 1)
    ridge = 1e-9 * torch.diagonal(m, dim1=1, dim2=2).mean(1).clamp_min(1e-30)[:, None]
    eye = torch.eye(m.shape[1], dtype=torch.float64)
    theta = torch.linalg.solve(m + ridge[:, :, None] * eye, rhs + ridge * old)
    ok = torch.isfinite(theta).view(n, -1, groups).all(1) & (theta[:, :groups] > 0)
    # Keep the old grid where the fit failed or flipped a scale's sign (that would reverse the codes).
    new_scales = torch.where(ok, theta[:, :groups].float(), scales.float())
    if zeros is None:
        return new_scales, None
    return new_scales, torch.where(ok, theta[:, groups:].float(), zeros.float())


def refine_grid(w: torch.Tensor, h: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor,
                zeros: torch.Tensor | None, group_size: int, rounds: int,
                reround: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``rounds`` alternations of :func:`refit_scales` (the best grid for the codes) and
    ``reround(scales, zeros) -> codes`` (the codes for the new grid: round to nearest, or a GPTQ
    sweep), keeping the lowest output error ``(w - q) H (w - q)^T`` seen (re-rounding by GPTQ is
    greedy and may not improve; a refit never makes it worse). Returns ``(codes, scales, zeros)``."""
    def err(c: torch.Tensor, s: torch.Tensor, z: torch.Tensor | None) -> float:
        return output_error(w, nq.dequantize_weight(c, s, group_size, z), h)

    best = (codes, scales, zeros)
    best_err = err(*best)
    for i in range(rounds):
        if i:
            codes = reround(scales, zeros)
        scales, zeros = refit_scales(w, codes, h, group_size, zeros, scales)
        e = err(codes, scales, zeros)
        if e < best_err:
            best, best_err = (codes, scales, zeros), e
    return best
