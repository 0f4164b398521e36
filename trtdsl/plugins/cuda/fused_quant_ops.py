"""CUDA side of the fp8 activation fusion (``trtdsl/passes/fp8_act_fuse.py``): the quantizing RMSNorm /
add+RMSNorm / SwiGLU kernels (``plugins_cuda/src/norm_quant.cu``), the attentions writing codes (the fused
decode kernel's ``out_scale``, over a float or a quantized cache) and ``trtdsl.fp8_gemm`` on an
already-quantized (fp8) ``x``, which skips the quantizer kernel.

Bitwise contract on the GPU: a fused network computes what the unfused one does there. The codes
equal ``quantize_fp8`` of the unfused kernels' outputs (same expressions, launch shapes and rounding),
and :func:`fp8_gemm_codes` runs the GEMM path ``quant_ops.fp8_gemm`` would run after its quantizer
(FP8 GEMV for few rows, else ``torch._scaled_mm`` with the same scales). Where the unfused CUDA path
falls back to a torch reference (fp32 activations, axes other than the last), so does this one.
Nothing here synchronizes (CUDA-graph capturable)."""

from __future__ import annotations

import ctypes
from functools import lru_cache
from typing import Any, Callable

import torch

from trtdsl.errors import PluginError

from ..registry import get_plugin
from ._lib import call, register_signatures
from .lowrank_ops import rmsnorm_fp8_lowrank, swiglu_fp8_lowrank
from .ops import (_DTYPE_CODES, _HALF_TYPES, _check, _check_norm_inputs, _check_static_scale, _check_swiglu_input,
                  _stream)

__all__ = ["rmsnorm_fp8", "swiglu_fp8", "fp8_gemm_codes", "register_fused_quant_implementations"]

_P, _I, _I64, _F = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_float
register_signatures({  # plugins.h, "Quantizing RMSNorm / SwiGLU"
    "trtdsl_rmsnorm_fp8": [_P, _P, _P, _P, _P, _P, _P, _I64, _I64, _I64, _I64, _I64, _I64, _F, _I, _P],
    "trtdsl_swiglu_fp8": [_P, _P, _P, _I64, _I64, _I64, _I64, _I, _P],
})
_FP8 = torch.float8_e4m3fn
FusedImpl = Callable[[list, dict, dict], Any]


def rmsnorm_fp8(x: torch.Tensor, weight: torch.Tensor, input_scale: torch.Tensor, eps: float = 1e-6,
                residual: torch.Tensor | None = None,
                mean: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """e4m3 codes of ``rmsnorm(x) / input_scale`` over the last dim (``ops.rmsnorm``'s value, rounded to
    x's dtype, then ``quantize_fp8``); with ``residual``, normalizes ``x + residual`` and returns
    ``(codes, x + residual)``; with ``mean [hidden]`` (x's dtype), codes of ``(rmsnorm(x) - mean) /
    input_scale``, the difference rounded to x's dtype as a separate subtraction's."""
    op = "rmsnorm_fp8"
    hidden = _check_norm_inputs(op, x, weight, residual)
    _check_static_scale(op, "input_scale", input_scale, x.device)
    if mean is not None:
        _check(op, "mean", mean, x.device, (x.dtype,), ndim=1)
        if mean.shape[0] != hidden:
            raise PluginError(f"{op}: mean has {mean.shape[0]} elements but x's last dim is {hidden}")
        mean = mean.contiguous()
    out = torch.empty(x.shape, dtype=_FP8, device=x.device)
    total = None if residual is None else torch.empty_like(x)
    rows = x.numel() // max(hidden, 1)
    if rows:
        call("trtdsl_rmsnorm_fp8", x.data_ptr(), residual.data_ptr() if residual is not None else None,
             weight.data_ptr(), input_scale.data_ptr(), mean.data_ptr() if mean is not None else None, out.data_ptr(),
             total.data_ptr() if total is not None else None, rows, hidden, hidden, hidden, hidden, hidden,
             float(eps), _DTYPE_CODES[x.dtype], _stream(x))
    return out if total is None else (out, total)


def swiglu_fp8(x: torch.Tensor, input_scale: torch.Tensor) -> torch.Tensor:
    """e4m3 codes of ``silu(gate) * up / input_scale`` of ``x [..., 2 * inter]`` (gate then up):
    ``ops.swiglu``'s value, rounded to x's dtype, then ``quantize_fp8``."""
    op = "swiglu_fp8"
    inter = _check_swiglu_input(op, x)
    _check_static_scale(op, "input_scale", input_scale, x.device)
    out = torch.empty(*x.shape[:-1], inter, dtype=_FP8, device=x.device)
    rows = x.numel() // max(2 * inter, 1)
    if rows and inter:
        call("trtdsl_swiglu_fp8", x.data_ptr(), input_scale.data_ptr(), out.data_ptr(), rows, inter, 2 * inter,
             inter, _DTYPE_CODES[x.dtype], _stream(x))
    return out


@lru_cache(maxsize=None)
def _has_fp8(device_index: int) -> bool:
    return torch.cuda.get_device_capability(device_index) >= (8, 9)


_ONES: dict[torch.device, torch.Tensor] = {}


def _one(device: torch.device) -> torch.Tensor:
    """A float32 1.0 per device, made once (a fresh one per call would be a host-to-device copy)."""
    if device not in _ONES:
        _ONES[device] = torch.ones((), dtype=torch.float32, device=device)
    return _ONES[device]


def _scaled_mm_codes(xq: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
                     input_scale: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """cuBLASLt on codes, with the scales ``quant_ops._scaled_mm_static`` passes for the same GEMM."""
    wt, n = weight.t(), weight.shape[0]
    if weight_scale.shape[0] == 1:
        return torch._scaled_mm(xq, wt, scale_a=input_scale.reshape(()), scale_b=weight_scale.reshape(()),
                                out_dtype=out_dtype)
    if out_dtype == torch.bfloat16:  # rowwise scaling (bf16 output only)
        return torch._scaled_mm(xq, wt, scale_a=input_scale.reshape(1, 1).expand(xq.shape[0], 1).contiguous(),
                                scale_b=weight_scale.reshape(1, n), out_dtype=torch.bfloat16)
    acc = torch._scaled_mm(xq, wt, scale_a=input_scale.reshape(()), scale_b=_one(xq.device), out_dtype=torch.float32)
    return (acc * weight_scale).to(out_dtype)


def fp8_gemm_codes(xq: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor, input_scale: torch.Tensor,
                   out_dtype: torch.dtype, bias: torch.Tensor | None = None,
                   lowrank: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor | None:
    """``trtdsl.fp8_gemm`` on codes ``xq`` of ``x / input_scale``: the FP8 GEMV up to ``FP8_GEMV_MAX_M``
    rows, else ``torch._scaled_mm``; None where ``quant_ops.fp8_gemm`` would not run a kernel either
    (the caller then runs the reference). ``lowrank = (c [..., r], w [r, n])``'s ``c @ w`` and then
    ``bias [n]`` (out_dtype) are added to the rounded output, as separate layers would: in the GEMV's
    epilogue, after ``_scaled_mm`` by torch."""
    from .quant_ops import fp8_gemv, fp8_gemv_supported
    n, k = weight.shape
    if xq.shape[-1] != k:
        raise PluginError(f"fp8_gemm: x has {xq.shape[-1]} features, the weight {k}")
    x2 = xq.reshape(-1, k)
    m = x2.shape[0]
    if m == 0:
        return torch.empty(*xq.shape[:-1], n, dtype=out_dtype, device=xq.device)
    if fp8_gemv_supported(m, k, weight):
        c2 = None if lowrank is None else (lowrank[0].reshape(m, -1), lowrank[1])
        out = fp8_gemv(x2.contiguous(), weight.contiguous(), input_scale.reshape(1), weight_scale, out_dtype,
                       bias=bias, lowrank=c2)
        return out.view(*xq.shape[:-1], n)
    if out_dtype in _HALF_TYPES and k % 16 == 0 and n % 16 == 0 and _has_fp8(xq.device.index or 0):
        out = _scaled_mm_codes(x2.contiguous(), weight, weight_scale, input_scale, out_dtype)
        if lowrank is not None:
            out = out + lowrank[0].reshape(m, -1) @ lowrank[1]
        return (out if bias is None else out + bias).view(*xq.shape[:-1], n)
    return None


# -- plugin implementations ---------------------------------------------------------------------------
def _last_axis(x: torch.Tensor, fields: dict) -> bool:
    return x.dtype in _HALF_TYPES and tuple(fields["axes"]) == (x.dim() - 1,)


def _rms_norm_fp8_cuda(ins: list, fields: dict, hints: dict) -> Any:
    x, weight, scale, *extra = ins  # mean: a centered input's (fp8_center_inputs); basis: its low-rank split
    from ...passes.fp8_act_fuse import rms_norm_fp8_reference
    if not _last_axis(x, fields):  # as the unfused RMSNorm layer: no kernel there either
        return rms_norm_fp8_reference(ins, fields, hints)
    if len(extra) == 2:
        out = rmsnorm_fp8_lowrank(x, weight.reshape(-1), scale, fields["epsilon"], extra[0].reshape(-1), extra[1])
        return list(out) if out is not None else rms_norm_fp8_reference(ins, fields, hints)
    out = rmsnorm_fp8(x.contiguous(), weight.reshape(-1), scale, fields["epsilon"],
                      mean=extra[0].reshape(-1) if extra else None)
    assert isinstance(out, torch.Tensor)
    return out


def _add_rms_norm_fp8_cuda(ins: list, fields: dict, hints: dict) -> list:
    a, b, weight, scale, *extra = ins
    from ...passes.fp8_act_fuse import add_rms_norm_fp8_reference
    if not _last_axis(a, fields):
        return add_rms_norm_fp8_reference(ins, fields, hints)
    if len(extra) == 2:
        out = rmsnorm_fp8_lowrank(a, weight.reshape(-1), scale, fields["epsilon"], extra[0].reshape(-1), extra[1],
                                  residual=b)
        return list(out) if out is not None else add_rms_norm_fp8_reference(ins, fields, hints)
    codes, total = rmsnorm_fp8(a.contiguous(), weight.reshape(-1), scale, fields["epsilon"], residual=b.contiguous(),
                               mean=extra[0].reshape(-1) if extra else None)
    return [codes, total]


def _swiglu_fp8_cuda(ins: list, fields: dict, hints: dict) -> Any:
    x, scale, *extra = ins
    from ...passes.fp8_act_fuse import swiglu_fp8_reference
    if x.dtype not in _HALF_TYPES:
        return swiglu_fp8_reference(ins, fields, hints)
    if extra:
        out = swiglu_fp8_lowrank(x, scale, extra[0].reshape(-1), extra[1], fields.get("lowrank_blocks", 0))
        return list(out) if out is not None else swiglu_fp8_reference(ins, fields, hints)
    return swiglu_fp8(x.contiguous(), scale)


def _attention_fp8_cuda(ins: list, fields: dict, hints: dict) -> torch.Tensor:
    from .builtin import attention_cuda  # the fused decode kernel writes the codes itself
    return attention_cuda(ins[:-1], fields, hints, out_scale=ins[-1])


def _attention_quant_kv_fp8_cuda(ins: list, fields: dict, hints: dict) -> torch.Tensor:
    from .builtin import attention_quant_kv_cuda  # likewise over a quantized cache
    return attention_quant_kv_cuda(ins[:-1], fields, hints, out_scale=ins[-1])


def _fp8_gemm_with_codes(base: FusedImpl) -> FusedImpl:
    """``trtdsl.fp8_gemm``'s CUDA implementation: ``base`` (the quantizing one) for float ``x``, the
    quantizer-free path for codes."""
    def impl(ins: list, fields: dict, hints: dict) -> Any:
        if ins[0].dtype != _FP8:
            return base(ins, fields, hints)
        xq, weight, weight_scale, input_scale, *extra = ins  # bias (a centered input's W mean), c, (W U)^T
        out = fp8_gemm_codes(xq, weight, weight_scale, input_scale, fields["out_dtype"].torch,
                             bias=extra[0].reshape(-1) if extra else None,
                             lowrank=(extra[1], extra[2]) if len(extra) == 3 else None)
        if out is None:
            from ...quantization.plugins import fp8_gemm_reference
            return fp8_gemm_reference(ins, fields, hints)
        return out
    impl.__name__ = impl.__qualname__ = "fp8_gemm_cuda"
    return impl


def register_fused_quant_implementations(fp8_gemm_impl: FusedImpl) -> None:
    """Attach the quantizing norm / SwiGLU kernels and ``trtdsl.fp8_gemm``'s path for codes (on top of
    ``fp8_gemm_impl``, its CUDA implementation for float inputs). Idempotent."""
    from ...passes import fp8_act_fuse as fuse
    from ...quantization.plugins import FP8_GEMM
    get_plugin(fuse.RMS_NORM_FP8).implementations["cuda"] = _rms_norm_fp8_cuda
    get_plugin(fuse.ADD_RMS_NORM_FP8).implementations["cuda"] = _add_rms_norm_fp8_cuda
    get_plugin(fuse.SWIGLU_FP8).implementations["cuda"] = _swiglu_fp8_cuda
    get_plugin(fuse.ATTENTION_FP8).implementations["cuda"] = _attention_fp8_cuda
    get_plugin(fuse.ATTENTION_QUANT_KV_FP8).implementations["cuda"] = _attention_quant_kv_fp8_cuda
    get_plugin(FP8_GEMM).implementations["cuda"] = _fp8_gemm_with_codes(fp8_gemm_impl)
