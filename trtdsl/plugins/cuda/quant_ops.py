"""Torch bindings of the quantized GEMM kernels (``plugins_cuda/src/quant_gemm.cu``) and the cuBLASLt
paths around them. Formats are those of :mod:`trtdsl.quantization.numerics`; semantics are the torch
references in :mod:`trtdsl.quantization.plugins`.

* ``weight_only_gemm``: ``m <= GEMV_MAX_M`` rows (decode) run the GEMV kernel that streams the packed
  weights once and dequantizes in registers; larger ``m`` dequantizes into an fp16/bf16 buffer and calls
  cuBLAS (``F.linear``). ``m`` is a host-side shape, so the choice needs no synchronization.
* ``fp8_gemm``: a fused quantize kernel (static input scale) then ``torch._scaled_mm`` (cuBLASLt).
* ``int8_gemm``: a per-token quantize kernel, ``torch._int_mm`` (int32 out; cuBLASLt wants > 16
  rows, so short inputs are zero-padded by the quantizer itself), then a fused scale epilogue.

Like :mod:`.ops`, nothing here reads device values or synchronizes (CUDA-graph capturable)."""

from __future__ import annotations

import ctypes

import torch
import torch.nn.functional as F

from trtdsl.errors import PluginError

from ._lib import call, register_signatures
from .ops import _DTYPE_CODES, _HALF_TYPES, _check, _stream

__all__ = ["GEMV_MAX_M", "GEMV_KERNEL_MAX_M", "gemv_supported", "weight_only_gemm", "weight_only_gemv", "dequantize_weight", "quantize_fp8",
           "fp8_gemm", "quantize_per_token_int8", "int8_gemm"]

# The GEMV kernel takes up to 16 rows (kGemvMaxM in quant_gemm.cuh) but runs on CUDA cores: on H100
# it beats bf16 cuBLAS only up to a few rows (docs/quant_kernels.md), so larger m dequantizes.
GEMV_KERNEL_MAX_M = 16
GEMV_MAX_M = 4
INT_MM_MIN_M = 24  # torch._int_mm (cuBLASLt int8) needs more than 16 rows; 8-aligned for its tiles

_P, _I, _I64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64
# Argument types of the launchers declared in plugins.h (kept next to it: change both together).
_SIGNATURES: dict[str, list] = {
    "trtdsl_weight_only_gemv": [_P, _P, _P, _P, _I64, _I64, _I64, _I, _I, _I, _I, _P],
    "trtdsl_weight_only_dequantize": [_P, _P, _P, _I64, _I64, _I, _I, _I, _I, _P],
    "trtdsl_quantize_fp8": [_P, _P, _P, _I64, _I64, _I64, _I, _P],
    "trtdsl_quantize_per_token_int8": [_P, _P, _P, _I64, _I64, _I64, _I, _P],
    "trtdsl_int8_gemm_epilogue": [_P, _I64, _P, _P, _P, _I64, _I64, _I, _P],
}
register_signatures(_SIGNATURES)


def _as_2d(op: str, x: torch.Tensor, k: int) -> torch.Tensor:
    _check(op, "x", x, dtypes=_DTYPE_CODES, contiguous=False)
    if x.dim() == 0 or x.shape[-1] != k:
        raise PluginError(f"{op}: x must be [..., {k}], got shape {tuple(x.shape)}")
    return x.reshape(-1, k).contiguous()


def _num_groups(k: int, group_size: int) -> int:
    return 1 if group_size == 0 else -(-k // group_size)


def _check_weight_only(op: str, x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, bits: int,
                       group_size: int, k: int) -> int:
    if bits not in (4, 8):
        raise PluginError(f"{op}: bits must be 4 or 8, got {bits}")
    if group_size < 0 or (bits == 4 and k % 2):
        raise PluginError(f"{op}: group_size {group_size} must be >= 0 and int4 in_features ({k}) even")
    _check(op, "qweight", qweight, x.device, (torch.int8, torch.uint8), ndim=2)
    if qweight.shape[1] != (k // 2 if bits == 4 else k):
        raise PluginError(f"{op}: qweight has shape {tuple(qweight.shape)}; expected [n, "
                          f"{k // 2 if bits == 4 else k}] for {bits}-bit in_features={k}")
    groups = _num_groups(k, group_size)
    _check(op, "scales", scales, x.device, (torch.float32,), ndim=2)
    if tuple(scales.shape) != (qweight.shape[0], groups):
        raise PluginError(f"{op}: scales has shape {tuple(scales.shape)}, expected "
                          f"({qweight.shape[0]}, {groups})")
    return groups


def dequantize_weight(qweight: torch.Tensor, scales: torch.Tensor, bits: int, group_size: int,
                      in_features: int, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """``codes * scales`` as a ``[n, in_features]`` tensor of ``dtype`` (fp32/fp16/bf16)."""
    op = "dequantize_weight"
    probe = torch.empty(0, in_features, dtype=dtype, device=qweight.device)
    groups = _check_weight_only(op, probe, qweight, scales, bits, group_size, in_features)
    out = torch.empty(qweight.shape[0], in_features, dtype=dtype, device=qweight.device)
    call("trtdsl_weight_only_dequantize", qweight.data_ptr(), scales.data_ptr(), out.data_ptr(),
          qweight.shape[0], in_features, bits, group_size, groups, _DTYPE_CODES[dtype], _stream(qweight))
    return out


def gemv_supported(x2: torch.Tensor, bits: int, group_size: int, k: int, max_m: int = GEMV_MAX_M) -> bool:
    """Whether the GEMV kernel takes these rows / shapes (else the dequantize + cuBLAS path)."""
    epv = 16 if bits == 8 else 32  # codes per 16-byte weight load
    return (1 <= x2.shape[0] <= max_m and x2.dtype in _HALF_TYPES and k % epv == 0
            and (group_size == 0 or group_size % epv == 0) and x2.data_ptr() % 16 == 0)


def weight_only_gemv(x2: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, bits: int,
                     group_size: int, groups: int) -> torch.Tensor:
    """The decode kernel on ``x2 [m <= 16, k]`` (callers check :func:`gemv_supported` with
    ``max_m=GEMV_KERNEL_MAX_M``)."""
    m, k = x2.shape
    n = qweight.shape[0]
    out = x2.new_empty(m, n)
    call("trtdsl_weight_only_gemv", x2.data_ptr(), qweight.data_ptr(), scales.data_ptr(), out.data_ptr(),
          m, n, k, bits, group_size, groups, _DTYPE_CODES[x2.dtype], _stream(x2))
    return out


def weight_only_gemm(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, bits: int,
                     group_size: int, in_features: int) -> torch.Tensor:
    """``x W^T`` with int8 / packed-int4 weights and group-wise scales; ``x [..., k]`` fp16/bf16
    (fp32 runs through the dequantize path in fp32)."""
    op = "weight_only_gemm"
    x2 = _as_2d(op, x, in_features)
    groups = _check_weight_only(op, x2, qweight, scales, bits, group_size, in_features)
    n = qweight.shape[0]
    if x2.shape[0] == 0:
        return x.new_empty(*x.shape[:-1], n)
    if gemv_supported(x2, bits, group_size, in_features):
        out = weight_only_gemv(x2, qweight.contiguous(), scales.contiguous(), bits, group_size, groups)
    else:
        w = dequantize_weight(qweight.contiguous(), scales.contiguous(), bits, group_size, in_features, x2.dtype)
        out = F.linear(x2, w)
    return out.view(*x.shape[:-1], n)


def quantize_fp8(x2: torch.Tensor, scale: torch.Tensor, pad_rows_to: int = 1) -> torch.Tensor:
    """e4m3 codes of ``x2 / scale`` ([m, k] -> [ceil(m / pad_rows_to) * pad_rows_to, k], zero padding)."""
    op = "quantize_fp8"
    _check(op, "x", x2, dtypes=_DTYPE_CODES, ndim=2)
    _check(op, "input_scale", scale, x2.device, (torch.float32,))
    m, k = x2.shape
    rows = -(-m // pad_rows_to) * pad_rows_to
    out = torch.empty(rows, k, dtype=torch.float8_e4m3fn, device=x2.device)
    call("trtdsl_quantize_fp8", x2.data_ptr(), scale.data_ptr(), out.data_ptr(), m, rows, k,
          _DTYPE_CODES[x2.dtype], _stream(x2))
    return out


def fp8_gemm(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor, input_scale: torch.Tensor,
             pad_rows_to: int = 1) -> torch.Tensor:
    """FP8 W8A8 ``x W^T``: static per-tensor input scale, per-tensor ``[1]`` or per-channel ``[n]``
    weight scale. Needs k and n multiples of 16 (cuBLASLt) and an sm_89+ GPU."""
    op = "fp8_gemm"
    _check(op, "weight", weight, dtypes=(torch.float8_e4m3fn,), ndim=2)
    n, k = weight.shape
    x2 = _as_2d(op, x, k)
    if k % 16 or n % 16:
        raise PluginError(f"{op}: cuBLASLt FP8 needs in/out features divisible by 16, got k={k}, n={n}")
    _check(op, "weight_scale", weight_scale, x2.device, (torch.float32,), ndim=1)
    if weight_scale.shape[0] not in (1, n):
        raise PluginError(f"{op}: weight_scale must be [1] or [{n}], got {tuple(weight_scale.shape)}")
    m = x2.shape[0]
    xq = quantize_fp8(x2, input_scale.reshape(1), pad_rows_to)
    wt = weight.t()  # [k, n] column-major: the layout cuBLASLt's fp8 GEMM wants
    if weight_scale.shape[0] == 1:
        out = torch._scaled_mm(xq, wt, scale_a=input_scale.reshape(()), scale_b=weight_scale.reshape(()),
                               out_dtype=x2.dtype)
    elif x2.dtype == torch.bfloat16:  # rowwise scaling (bf16 output only)
        out = torch._scaled_mm(xq, wt, scale_a=input_scale.reshape(1, 1).expand(xq.shape[0], 1).contiguous(),
                               scale_b=weight_scale.reshape(1, n), out_dtype=torch.bfloat16)
    else:  # fp16/fp32 with per-channel scales: fp32 result, channel scale applied after
        acc = torch._scaled_mm(xq, wt, scale_a=input_scale.reshape(()), scale_b=_ONE.get(x2.device),
                               out_dtype=torch.float32)
        out = (acc * weight_scale).to(x2.dtype)
    return out[:m].view(*x.shape[:-1], n)


class _Ones:
    """One float32 ``1.0`` per device, made once (a fresh tensor per call would be an H2D copy)."""

    def __init__(self) -> None:
        self._by_device: dict[torch.device, torch.Tensor] = {}

    def get(self, device: torch.device) -> torch.Tensor:
        if device not in self._by_device:
            self._by_device[device] = torch.ones((), dtype=torch.float32, device=device)
        return self._by_device[device]


_ONE = _Ones()


def quantize_per_token_int8(x2: torch.Tensor, min_rows: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row int8 codes (padding rows zero) and scales ``[m, 1]``. With ``min_rows``, the codes have
    ``max(m, min_rows)`` rows rounded up to a multiple of 8 (the ``torch._int_mm`` operand)."""
    op = "quantize_per_token_int8"
    _check(op, "x", x2, dtypes=_DTYPE_CODES, ndim=2)
    m, k = x2.shape
    rows = max(m, min_rows)
    rows = -(-rows // 8) * 8 if min_rows else rows
    codes = torch.empty(rows, k, dtype=torch.int8, device=x2.device)
    scales = torch.empty(m, 1, dtype=torch.float32, device=x2.device)
    call("trtdsl_quantize_per_token_int8", x2.data_ptr(), codes.data_ptr(), scales.data_ptr(), m, rows, k,
          _DTYPE_CODES[x2.dtype], _stream(x2))
    return codes, scales


def int8_gemm(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor) -> torch.Tensor:
    """SmoothQuant W8A8: per-token dynamic int8 activations, per-channel int8 weights, int32 accumulate
    (exact), scaled in float32 and cast to x's dtype. Needs k and n multiples of 8 (cuBLASLt)."""
    op = "int8_gemm"
    _check(op, "weight", weight, dtypes=(torch.int8,), ndim=2)
    n, k = weight.shape
    x2 = _as_2d(op, x, k)
    if k % 8 or n % 8:
        raise PluginError(f"{op}: cuBLASLt int8 needs in/out features divisible by 8, got k={k}, n={n}")
    _check(op, "weight_scale", weight_scale, x2.device, (torch.float32,), ndim=1)
    if weight_scale.shape[0] != n:
        raise PluginError(f"{op}: weight_scale must be [{n}], got {tuple(weight_scale.shape)}")
    m = x2.shape[0]
    out = x2.new_empty(m, n)
    if m == 0:
        return out.view(*x.shape[:-1], n)
    codes, x_scales = quantize_per_token_int8(x2, INT_MM_MIN_M)
    acc = torch._int_mm(codes, weight.t())  # [rows, n] int32; weight [n, k] row-major = column-major B
    call("trtdsl_int8_gemm_epilogue", acc.data_ptr(), acc.stride(0), x_scales.data_ptr(),
          weight_scale.data_ptr(), out.data_ptr(), m, n, _DTYPE_CODES[x2.dtype], _stream(x2))
    return out.view(*x.shape[:-1], n)
