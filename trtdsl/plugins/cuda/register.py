"""CUDA implementations of the quantized GEMM plugins (``trtdsl.weight_only_gemm``, ``trtdsl.fp8_gemm``,
``trtdsl.int8_gemm``; see :mod:`trtdsl.quantization.plugins`; ``trtdsl.int4_tile_gemm``,
:mod:`trtdsl.passes.int4_tile_gemm`, and its deferred-norm pair, :mod:`trtdsl.passes.deferred_norm`),
every input format included: weight-only with or without zeros, FP8 with a static or a dynamic
(per-token) activation scale.

``register_cuda_implementations()`` sets ``get_plugin(name).implementations["cuda"]`` for the three, each
with the reference's signature ``(ins, fields, hints) -> tensor``. Cases the kernels do not cover
(fp32 activations, shapes cuBLASLt rejects, FP8 on GPUs older than sm_89) run the torch reference on
the GPU, so every network the reference runs also runs here."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import torch

from ..registry import get_plugin

__all__ = ["register_cuda_implementations"]

_HALF = (torch.float16, torch.bfloat16)


@lru_cache(maxsize=None)
def _has_fp8(device_index: int) -> bool:
    return torch.cuda.get_device_capability(device_index) >= (8, 9)


def _weight_only_cuda(ins: list[torch.Tensor], fields: dict[str, Any], hints: dict[str, Any]) -> torch.Tensor:
    from .quant_ops import weight_only_gemm
    x, qweight, scales = ins[:3]
    zeros = ins[3] if len(ins) == 4 else None  # the asymmetric format: w = code * scale + zero
    return weight_only_gemm(x, qweight, scales, int(fields["bits"]), int(fields["group_size"]),
                            int(fields["in_features"]), zeros)


def _fp8_cuda(ins: list[torch.Tensor], fields: dict[str, Any], hints: dict[str, Any]) -> torch.Tensor:
    from ...quantization.plugins import fp8_gemm_reference
    from .quant_ops import FP8_GEMV_MAX_M, fp8_gemm
    x, w, w_scale = ins[:3]
    x_scale = ins[3] if len(ins) == 4 else None  # None: dynamic per-token activation scales
    n, k = w.shape
    rows = x.numel() // k if k else 0
    gemv = 1 <= rows <= FP8_GEMV_MAX_M and k % 16 == 0  # the FP8 GEMV: any n, any activation dtype
    scaled_mm = x.dtype in _HALF and k % 16 == 0 and n % 16 == 0 and _has_fp8(x.device.index or 0)
    # Per-token-block activation scales (act_group_size) have no kernel yet: the reference runs them.
    if not (gemv or scaled_mm) or fields.get("act_group_size"):
        return fp8_gemm_reference(ins, fields, hints)
    return fp8_gemm(x, w, w_scale, x_scale)


def _int8_cuda(ins: list[torch.Tensor], fields: dict[str, Any], hints: dict[str, Any]) -> torch.Tensor:
    from ...quantization.plugins import int8_gemm_reference
    from .quant_ops import int8_gemm, int8_gemv_supported
    x, w, w_scale = ins
    n, k = w.shape
    rows = x.numel() // k if k else 0
    if x.dtype not in _HALF or ((k % 8 or n % 8) and not int8_gemv_supported(rows, k, w)):
        return int8_gemm_reference(ins, fields, hints)  # no kernel: _int_mm needs k, n % 8, the GEMV k % 16
    return int8_gemm(x, w, w_scale)


def _int4_tile_cuda(ins: list[torch.Tensor], fields: dict[str, Any], hints: dict[str, Any]) -> torch.Tensor:
    from ...passes.int4_tile_gemm import int4_tile_gemm_reference
    from .quant_ops import int4_tile_gemm
    x, qpacked, sz = ins
    if x.dtype not in _HALF:
        return int4_tile_gemm_reference(ins, fields, hints)  # fp32 activations: no kernel
    return int4_tile_gemm(x, qpacked, sz, int(fields["out_features"]), int(fields["in_features"]),
                          int(fields["group_size"]), bool(fields["swiglu"]))


def _add_norm_cuda(ins: list[torch.Tensor], fields: dict[str, Any], hints: dict[str, Any]) -> list:
    """The deferred norm's producer (``trtdsl/passes/deferred_norm.py``): the GEMV's epilogue up to
    ``max_deferred_rows`` rows, else the tile GEMM then the add + RMSNorm kernel."""
    from ...passes.deferred_norm import add_norm_reference
    from ...quantization.int4_tiles import num_tiles
    from .ops import rmsnorm
    from .quant_ops import int4_tile_gemm, int4_tile_gemv_add_norm
    x, qpacked, sz, residual, gamma = ins
    n, k, group = int(fields["out_features"]), int(fields["in_features"]), int(fields["group_size"])
    rows = x.numel() // k if k else 0
    if x.dtype not in _HALF or rows == 0:
        return add_norm_reference(ins, fields, hints)
    if rows <= int(fields["max_deferred_rows"]):
        return list(int4_tile_gemv_add_norm(x, qpacked, sz, n, k, group, residual, gamma))
    y = int4_tile_gemm(x, qpacked, sz, n, k, group)
    normed, total = rmsnorm(y, gamma.reshape(-1), float(fields["epsilon"]), residual=residual.contiguous())
    return [normed, total, torch.zeros(*y.shape[:-1], num_tiles(n), dtype=torch.float32, device=y.device)]


def _normed_cuda(ins: list[torch.Tensor], fields: dict[str, Any], hints: dict[str, Any]) -> torch.Tensor:
    """The deferred norm's consumer: the GEMV with the row scale up to ``max_deferred_rows`` rows, else the
    plain tile GEMM (its x is then the norm's output)."""
    from ...passes.deferred_norm import normed_reference
    from .quant_ops import int4_tile_gemm, int4_tile_gemv_normed
    x, qpacked, sz, ssq = ins
    n, k, group = int(fields["out_features"]), int(fields["in_features"]), int(fields["group_size"])
    rows = x.numel() // k if k else 0
    if x.dtype not in _HALF or rows == 0:
        return normed_reference(ins, fields, hints)
    if rows <= int(fields["max_deferred_rows"]):
        return int4_tile_gemv_normed(x, qpacked, sz, n, k, group, bool(fields["swiglu"]), ssq,
                                     float(fields["epsilon"]))
    return int4_tile_gemm(x, qpacked, sz, n, k, group, bool(fields["swiglu"]))


def register_cuda_implementations() -> None:
    """Attach the quantized GEMM kernels to their plugins (idempotent)."""
    from ...quantization.plugins import FP8_GEMM, INT8_GEMM, WEIGHT_ONLY_GEMM
    get_plugin(WEIGHT_ONLY_GEMM).implementations["cuda"] = _weight_only_cuda
    get_plugin(FP8_GEMM).implementations["cuda"] = _fp8_cuda
    get_plugin(INT8_GEMM).implementations["cuda"] = _int8_cuda
    from ...passes.int4_tile_gemm import INT4_TILE_GEMM
    get_plugin(INT4_TILE_GEMM).implementations["cuda"] = _int4_tile_cuda
    from ...passes.deferred_norm import ADD_NORM, NORMED
    get_plugin(ADD_NORM).implementations["cuda"] = _add_norm_cuda
    get_plugin(NORMED).implementations["cuda"] = _normed_cuda
    # fp8 activation fusion (fused_quant_ops.py): quantizing norm / SwiGLU kernels, and fp8_gemm on codes
    from .fused_quant_ops import register_fused_quant_implementations
    register_fused_quant_implementations(_fp8_cuda)
