"""CUDA kernels of fp8's low-rank branch (``QuantConfig.fp8_lowrank``; ``plugins_cuda/include/trtdsl/
lowrank_quant.cuh``): the quantizing RMSNorm / SwiGLU that also split their output into the branch's
coefficients ``c = (v - mean) U`` and the codes of the rest ``(v - mean) - c U^T``. The GEMMs add
``c (W U)^T`` in the FP8 GEMV's epilogue (``quant_ops.fp8_gemv(lowrank=...)``).

Each function returns None where the kernels are not built for the inputs (fp32, a rank other than 2, 4
or 8, widths that are not a multiple of 8 or constants not 16-byte aligned, norm rows over 4096 values,
SwiGLU rows over 32768, for the SwiGLU a GPU below sm_90: it splits a row over a thread-block cluster);
the plugin implementations then run the reference. A block-diagonal SwiGLU basis
(``QuantConfig.fp8_lowrank_blocks``, ranks 1, 2, 4 or 8 per chunk, chunks of at most 4096 values) needs
no cluster: one thread block per chunk."""

from __future__ import annotations

import ctypes
from functools import lru_cache

import torch

from trtdsl.errors import PluginError
from trtdsl.quantization.numerics import lowrank_block_chunks

from ._lib import call, register_signatures
from .ops import (_DTYPE_CODES, _HALF_TYPES, _check, _check_norm_inputs, _check_static_scale, _check_swiglu_input,
                  _stream)

__all__ = ["LOWRANK_KERNEL_RANKS", "rmsnorm_fp8_lowrank", "swiglu_fp8_lowrank"]

_P, _I, _I64, _F = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_float
register_signatures({  # plugins.h, "The low-rank split"
    "trtdsl_rmsnorm_fp8_lowrank": [_P, _P, _P, _P, _P, _P, _I64, _P, _P, _P, _I64, _I64, _I64, _I64, _I64, _I64,
                                   _F, _I, _P],
    "trtdsl_swiglu_fp8_lowrank": [_P, _P, _P, _P, _I64, _P, _P, _I64, _I64, _I64, _I64, _I, _I, _P],
})
LOWRANK_KERNEL_RANKS = (2, 4, 8)
BLOCK_KERNEL_RANKS = (1, 2, 4, 8)  # per chunk of a block-diagonal SwiGLU basis
_VEC = 8  # 16-bit values per 16-byte vector: one per thread
_MAX_VECS = 512  # kLowRankMaxVecs: vectors per block (the norm's row, an eighth of the SwiGLU's)
_SWIGLU_SPLIT = 8  # kLowRankSwigluSplit
_FP8 = torch.float8_e4m3fn


@lru_cache(maxsize=None)
def _has_clusters(device_index: int) -> bool:
    """Thread-block clusters (sm_90+), which the SwiGLU kernel splits a row over."""
    return torch.cuda.get_device_capability(device_index) >= (9, 0)


def _check_branch(op: str, x: torch.Tensor, k: int, input_scale: torch.Tensor, mean: torch.Tensor,
                  basis: torch.Tensor, max_width: int, ranks: tuple[int, ...] = LOWRANK_KERNEL_RANKS) -> bool:
    """Validate the branch's constants (PluginError); whether the kernel is built for them (16-bit
    values in 16-byte vectors, rows of at most ``max_width`` values, a rank in ``ranks``)."""
    _check_static_scale(op, "input_scale", input_scale, x.device)
    _check(op, "mean", mean, x.device, (x.dtype,), ndim=1)
    _check(op, "basis", basis, x.device, (x.dtype,), ndim=2)
    if mean.shape[0] != k or basis.shape[0] != k:
        raise PluginError(f"{op}: mean {tuple(mean.shape)} and basis {tuple(basis.shape)} must have {k} rows, "
                          f"the input's width")
    return (x.is_cuda and x.dtype in _HALF_TYPES and basis.shape[1] in ranks and k % _VEC == 0
            and k <= max_width and basis.is_contiguous() and mean.is_contiguous()
            and mean.data_ptr() % 16 == 0 and basis.data_ptr() % 16 == 0)


def rmsnorm_fp8_lowrank(x: torch.Tensor, weight: torch.Tensor, input_scale: torch.Tensor, eps: float,
                        mean: torch.Tensor, basis: torch.Tensor, residual: torch.Tensor | None = None
                        ) -> tuple[torch.Tensor, ...] | None:
    """``(codes, c)`` (with ``residual``: ``(codes, x + residual, c)``) of the RMSNorm of ``x`` (plus
    ``residual``) over its last dim, centered on ``mean [k]`` and split along ``basis [k, r]``; None
    where the kernel is not built for the inputs."""
    op = "rmsnorm_fp8_lowrank"
    k = _check_norm_inputs(op, x, weight, residual)
    if not _check_branch(op, x, k, input_scale, mean, basis, _MAX_VECS * _VEC):
        return None
    x = x.contiguous()
    residual = None if residual is None else residual.contiguous()
    if any(t.data_ptr() % 16 for t in (x, weight) + (() if residual is None else (residual,))):
        return None
    rows = x.numel() // max(k, 1)
    out = torch.empty(x.shape, dtype=_FP8, device=x.device)
    c = torch.empty(*x.shape[:-1], basis.shape[1], dtype=x.dtype, device=x.device)
    total = None if residual is None else torch.empty_like(x)
    if rows:
        call("trtdsl_rmsnorm_fp8_lowrank", x.data_ptr(), None if residual is None else residual.data_ptr(),
             weight.data_ptr(), input_scale.data_ptr(), mean.data_ptr(), basis.data_ptr(), basis.shape[1],
             out.data_ptr(), c.data_ptr(), None if total is None else total.data_ptr(), rows, k, k, k, k, k,
             float(eps), _DTYPE_CODES[x.dtype], _stream(x))
    return (out, c) if total is None else (out, total, c)


def swiglu_fp8_lowrank(x: torch.Tensor, input_scale: torch.Tensor, mean: torch.Tensor, basis: torch.Tensor,
                       blocks: int = 0) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(codes, c)`` of ``silu(gate) * up`` of ``x [..., 2 * inter]`` (gate then up), centered on
    ``mean [inter]`` and split along ``basis [inter, r]``; None where the kernel is not built for them.
    ``blocks > 0``: ``basis`` is a block-diagonal one given compactly (``lowrank_block_chunks``: chunk b's
    own r columns in its rows) and ``c`` is ``[..., blocks * r]``; one thread block per chunk, no cluster."""
    op = "swiglu_fp8_lowrank"
    inter = _check_swiglu_input(op, x)
    width = (blocks or _SWIGLU_SPLIT) * _MAX_VECS * _VEC
    if blocks:
        if blocks < 0 or len(lowrank_block_chunks(inter, blocks)) != blocks:
            raise PluginError(f"{op}: {blocks} blocks of whole 8-value vectors do not fit a width of {inter}")
        if not _check_branch(op, x, inter, input_scale, mean, basis, width, BLOCK_KERNEL_RANKS):
            return None
    elif (not _check_branch(op, x, inter, input_scale, mean, basis, width)
            or not _has_clusters(x.device.index or 0)):
        return None
    x = x.contiguous()
    if x.data_ptr() % 16:
        return None
    rows = x.numel() // max(2 * inter, 1)
    out = torch.empty(*x.shape[:-1], inter, dtype=_FP8, device=x.device)
    c = torch.empty(*x.shape[:-1], max(blocks, 1) * basis.shape[1], dtype=x.dtype, device=x.device)
    if rows:
        call("trtdsl_swiglu_fp8_lowrank", x.data_ptr(), input_scale.data_ptr(), mean.data_ptr(), basis.data_ptr(),
             basis.shape[1], out.data_ptr(), c.data_ptr(), rows, inter, 2 * inter, inter, blocks,
             _DTYPE_CODES[x.dtype], _stream(x))
    return out, c
