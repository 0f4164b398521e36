"""The quantized GEMM plugins, one per GEMM kind, each with a plain-torch reference (what the CPU
executor runs and what CUDA kernels registered later under the same name are tested against).

=========================  ====================================================  ===================
plugin                     inputs                                                 fields
=========================  ====================================================  ===================
``trtdsl.weight_only_gemm`` ``x [..., k]`` float, ``qweight`` int8 ``[n, k]`` or  ``bits`` (8 / 4),
                           int4 ``[n, k // 2]`` (packed), ``scales`` float32      ``group_size``,
                           ``[n, num_groups]``, optional ``zeros`` float32        ``in_features``
                           ``[n, num_groups]`` (asymmetric: ``w = q * s + z``)
``trtdsl.fp8_gemm``        ``x [..., k]`` float, ``weight`` fp8 ``[n, k]``,        -
                           ``weight_scale`` float32 ``[n]`` or ``[1]``,
                           ``input_scale`` float32 ``[1]`` (static, calibrated);
                           without ``input_scale`` x is scaled per token
                           (dynamic: ``max|x_row| / 448``)
``trtdsl.int8_gemm``       ``x [..., k]`` float, ``weight`` int8 ``[n, k]``,       -
                           ``weight_scale`` float32 ``[n]``; activations are
                           quantized per token, dynamically
=========================  ====================================================  ===================

Every output is ``x.shape[:-1] + (n,)`` in ``x``'s dtype (``y = x W^T`` of the dequantized weights).
``trtdsl.fp8_gemm`` also takes an fp8 ``x``: e4m3 codes of ``x / input_scale`` already (made by a
quantizing norm / SwiGLU, ``trtdsl.passes.fp8_act_fuse``), with the static input list (and optionally a
fifth input, ``bias [n]`` in the output dtype, added to the rounded output; or three more, ``bias``, the
low-rank branch's ``c [..., r]`` and ``lowrank_weight [r, n]``, whose ``c @ lowrank_weight`` is added
before the bias, ``QuantConfig.fp8_lowrank``) and the field ``out_dtype`` (a float :class:`DType`)
giving the output dtype.
Formats are those of :mod:`trtdsl.quantization.numerics`.
"""

from __future__ import annotations

from typing import Any

import torch

from ..dtypes import DType
from ..errors import DTypeError, PluginError, ShapeError
from ..ir.symbolic import dim_equal
from ..plugins.registry import PluginSpec, register_plugin, registered_plugins
from .numerics import (FP8_MAX, dequantize_weight, num_groups, quantize_fp8, quantize_per_token_fp8,
                       quantize_per_token_group_fp8, quantize_per_token_int8, unpack_int4)

__all__ = ["WEIGHT_ONLY_GEMM", "FP8_GEMM", "INT8_GEMM", "check_plugin", "weight_only_gemm_reference",
           "fp8_gemm_reference", "int8_gemm_reference"]

WEIGHT_ONLY_GEMM = "trtdsl.weight_only_gemm"
FP8_GEMM = "trtdsl.fp8_gemm"
INT8_GEMM = "trtdsl.int8_gemm"
_ACT_DTYPES = (DType.float32, DType.float16, DType.bfloat16)


def _describe(tensors: list) -> str:
    return ", ".join(f"{t.name!r}: {t.dtype.value}{tuple(t.shape)}" for t in tensors)


def check_plugin(cond: bool, plugin: str, problem: str, ins: list, kind: type = ShapeError) -> None:
    """Raise ``kind`` naming ``plugin``, the problem and the inputs (name, dtype, shape) unless ``cond``:
    the shape rules' one error format (also :mod:`trtdsl.passes.fp8_act_fuse`'s and ``int4_tile_gemm``'s)."""
    if not cond:
        raise kind(f"{plugin}: {problem}\n  inputs: {_describe(ins)}")


def _check_common(plugin: str, ins: list, n_inputs: int | tuple[int, ...], w_dtype: DType,
                  k_stored: Any) -> tuple:
    counts = n_inputs if isinstance(n_inputs, tuple) else (n_inputs,)
    check_plugin(len(ins) in counts, plugin, f"expects {' or '.join(map(str, counts))} inputs, got {len(ins)}",
                 ins)
    x, w = ins[0], ins[1]
    check_plugin(x.dtype in _ACT_DTYPES, plugin, f"activation must be float32/float16/bfloat16, got "
                 f"{x.dtype.value}", ins, DTypeError)
    check_plugin(w.dtype is w_dtype, plugin, f"weight must be {w_dtype.value}, got {w.dtype.value}", ins,
                 DTypeError)
    check_plugin(w.ndim == 2 and x.ndim >= 1, plugin, "weight must be 2-D and x at least 1-D", ins)
    check_plugin(dim_equal(w.shape[1], k_stored), plugin, f"weight has {w.shape[1]} stored input columns, "
                 f"expected {k_stored}", ins)
    for t in ins[2:]:
        check_plugin(t.dtype is DType.float32, plugin, f"scale {t.name!r} must be float32", ins, DTypeError)
    return x, w


def _weight_only_shape(ins: list, fields: dict) -> list:
    bits, k, group = fields["bits"], fields["in_features"], fields["group_size"]
    check_plugin(bits in (4, 8), WEIGHT_ONLY_GEMM, f"bits must be 4 or 8, got {bits}", ins)
    check_plugin(dim_equal(ins[0].shape[-1], k), WEIGHT_ONLY_GEMM,
                 f"x has {ins[0].shape[-1]} features, the weight {k}", ins)
    x, w = _check_common(WEIGHT_ONLY_GEMM, ins, (3, 4), DType.int4 if bits == 4 else DType.int8,
                         k // 2 if bits == 4 else k)
    for t in ins[2:]:  # scales and, for the asymmetric format, zeros
        check_plugin(tuple(t.shape) == (w.shape[0], num_groups(k, group)), WEIGHT_ONLY_GEMM,
                     f"{t.name!r} must be [{w.shape[0]}, {num_groups(k, group)}] (scales / zeros)", ins)
    return [(x.dtype, tuple(x.shape[:-1]) + (w.shape[0],))]


def weight_only_gemm_reference(ins: list, fields: dict, hints: dict | None = None) -> torch.Tensor:
    """Dequantize the weights to float32 (``q * s``, plus ``z`` with zeros), multiply in float32,
    return in x's dtype."""
    x, qweight, scales = ins[:3]
    codes = unpack_int4(qweight) if fields["bits"] == 4 else qweight
    w = dequantize_weight(codes, scales, fields["group_size"], ins[3] if len(ins) == 4 else None)
    return (x.float() @ w.T).to(x.dtype)


def _fp8_prequantized_shape(ins: list, fields: dict) -> list:
    """``x`` already holds e4m3 codes of ``x / input_scale`` (a quantizing norm / SwiGLU made them,
    ``trtdsl/passes/fp8_act_fuse.py``): the static input list only, output dtype from ``out_dtype``."""
    check_plugin(len(ins) in (4, 5, 7), FP8_GEMM, f"an fp8 x (already quantized) needs the static input list (x, "
                 f"weight, weight_scale, input_scale; optionally bias, or bias, c and lowrank_weight): its input_scale "
                 f"says what the codes mean; got {len(ins)} inputs", ins)
    out_dtype = fields.get("out_dtype")
    check_plugin(out_dtype in _ACT_DTYPES, FP8_GEMM, f"an fp8 x needs the field out_dtype (float32/float16/bfloat16), "
                 f"got {out_dtype!r}", ins, DTypeError)
    w = ins[1]
    check_plugin(w.dtype is DType.fp8, FP8_GEMM, f"weight must be fp8, got {w.dtype.value}", ins, DTypeError)
    check_plugin(w.ndim == 2 and ins[0].ndim >= 1 and dim_equal(w.shape[1], ins[0].shape[-1]), FP8_GEMM,
                 f"weight must be 2-D [n, {ins[0].shape[-1]}]", ins)
    for t in ins[2:4]:
        check_plugin(t.dtype is DType.float32, FP8_GEMM, f"scale {t.name!r} must be float32", ins, DTypeError)
    check_plugin(tuple(ins[2].shape) in ((w.shape[0],), (1,)), FP8_GEMM, "weight_scale must be [n] or [1]", ins)
    check_plugin(tuple(ins[3].shape) == (1,), FP8_GEMM, "input_scale must be [1]", ins)
    if len(ins) >= 5:
        bias = ins[4]
        check_plugin(bias.dtype is out_dtype and tuple(bias.shape) == (w.shape[0],), FP8_GEMM,
                     f"bias {bias.name!r} must be [{w.shape[0]}] in the output dtype {out_dtype.value}, got "
                     f"{bias.dtype.value}{tuple(bias.shape)}", ins, DTypeError)
    if len(ins) == 7:
        c, lw = ins[5], ins[6]
        check_plugin(c.dtype is out_dtype and lw.dtype is out_dtype, FP8_GEMM, f"c {c.name!r} and lowrank_weight "
                     f"{lw.name!r} must be in the output dtype {out_dtype.value}", ins, DTypeError)
        check_plugin(c.ndim == ins[0].ndim and tuple(c.shape[:-1]) == tuple(ins[0].shape[:-1]) and lw.ndim == 2
                     and dim_equal(lw.shape[0], c.shape[-1]) and dim_equal(lw.shape[1], w.shape[0]), FP8_GEMM,
                     f"c must be [..., r] over x's rows and lowrank_weight [r, {w.shape[0]}], got "
                     f"{tuple(c.shape)} and {tuple(lw.shape)}", ins)
    return [(out_dtype, tuple(ins[0].shape[:-1]) + (w.shape[0],))]


def _fp8_shape(ins: list, fields: dict) -> list:
    if ins and ins[0].dtype is DType.fp8:
        return _fp8_prequantized_shape(ins, fields)
    check_plugin(fields.get("out_dtype") in (None, ins[0].dtype), FP8_GEMM, f"out_dtype {fields.get('out_dtype')!r} "
                 f"differs from x's dtype: only an fp8 (already quantized) x takes another output dtype", ins,
                 DTypeError)
    x, w = _check_common(FP8_GEMM, ins, (3, 4), DType.fp8, ins[0].shape[-1])
    check_plugin(tuple(ins[2].shape) in ((w.shape[0],), (1,)), FP8_GEMM, "weight_scale must be [n] or [1]", ins)
    check_plugin(len(ins) == 3 or tuple(ins[3].shape) == (1,), FP8_GEMM, "input_scale must be [1]", ins)
    group = fields.get("act_group_size", 0)
    check_plugin(isinstance(group, int) and group >= 0, FP8_GEMM,
                 f"act_group_size must be an int >= 0 (0 = one scale per token), got {group!r}", ins, PluginError)
    if group:
        check_plugin(len(ins) == 3, FP8_GEMM, f"act_group_size {group} needs dynamic activation scales (no "
                     f"input_scale input)", ins)
        check_plugin(isinstance(w.shape[1], int) and w.shape[1] % group == 0, FP8_GEMM,
                     f"act_group_size {group} must divide in_features {w.shape[1]}", ins)
    return [(x.dtype, tuple(x.shape[:-1]) + (w.shape[0],))]


def fp8_gemm_reference(ins: list, fields: dict, hints: dict | None = None) -> torch.Tensor:
    """Quantize x to e4m3 with the static input scale (saturating) or, without one, per token
    (dynamic; with the field ``act_group_size`` per token and block of that many channels),
    multiply the e4m3 values exactly in float32 (what ``torch._scaled_mm`` accumulates in), then
    apply both scales (a block's scale to its block's partial sum)."""
    x, w, w_scale = ins[:3]
    group = int(fields.get("act_group_size", 0) or 0)
    if group and x.dtype != torch.float8_e4m3fn and len(ins) == 3:
        xq, x_scale = quantize_per_token_group_fp8(x, group)
        blocks = xq.float().reshape(*x.shape[:-1], -1, group)                  # [..., G, g]
        partial = torch.einsum("...bg,nbg->...nb", blocks, w.float().reshape(w.shape[0], -1, group))
        acc = (partial * x_scale.unsqueeze(-2)).sum(-1)                        # [..., n]
        return (acc * w_scale.float()).to(x.dtype)
    out_dtype = x.dtype
    if x.dtype == torch.float8_e4m3fn:  # codes of x / input_scale, quantized by the producer
        x_scale, xq, out_dtype = ins[3], x, fields["out_dtype"].torch
    elif len(ins) == 4:
        x_scale = ins[3]
        xq = quantize_fp8(x, x_scale)
    else:
        xq, x_scale = quantize_per_token_fp8(x)
    acc = xq.float() @ w.float().T
    out = (acc * (x_scale.float() * w_scale.float())).to(out_dtype)
    if len(ins) == 7:  # the low-rank branch's c @ (W U)^T, added as its matmul and add layers would
        out = out + torch.matmul(ins[5], ins[6])
    return out + ins[4] if len(ins) >= 5 else out  # codes' bias: added to the rounded output, as an add layer


def _int8_shape(ins: list, fields: dict) -> list:
    x, w = _check_common(INT8_GEMM, ins, 3, DType.int8, ins[0].shape[-1])
    check_plugin(tuple(ins[2].shape) == (w.shape[0],), INT8_GEMM, "weight_scale must be [n]", ins)
    return [(x.dtype, tuple(x.shape[:-1]) + (w.shape[0],))]


# float32 holds every integer below 2**24 exactly, and a dot product of 1024 int8 pairs stays below
# 1024 * 127 * 127 < 2**24: so float32 GEMMs over 1024-wide slices of K are exact integer sums.
_EXACT_K = 1024


def int8_gemm_reference(ins: list, fields: dict, hints: dict | None = None) -> torch.Tensor:
    """Per-token dynamic int8 activations times per-channel int8 weights. The int32 accumulator is
    emulated exactly: exact float32 GEMMs over K slices, summed in int32; then scaled."""
    x, w, w_scale = ins
    xq, x_scale = quantize_per_token_int8(x)
    xf, wf = xq.float(), w.float()
    acc = torch.zeros(*xq.shape[:-1], w.shape[0], dtype=torch.int32, device=x.device)
    for k0 in range(0, xq.shape[-1], _EXACT_K):
        acc += (xf[..., k0:k0 + _EXACT_K] @ wf[:, k0:k0 + _EXACT_K].T).to(torch.int32)
    return (acc.float() * x_scale * w_scale.float()).to(x.dtype)


def register() -> None:
    """Register the three GEMM plugins. Idempotent: an existing spec is kept, so CUDA
    implementations registered against it survive a re-import."""
    specs = [
        PluginSpec(WEIGHT_ONLY_GEMM, _weight_only_shape, weight_only_gemm_reference,
                   doc="int8/int4 weight-only GEMM (W8A16 / W4A16, group-wise scales)"),
        PluginSpec(FP8_GEMM, _fp8_shape, fp8_gemm_reference,
                   doc=f"FP8 e4m3 W8A8 GEMM, static per-tensor or dynamic per-token (or per token "
                              f"and act_group_size channels) input scale (max {FP8_MAX})"),
        PluginSpec(INT8_GEMM, _int8_shape, int8_gemm_reference,
                   doc="SmoothQuant int8 W8A8 GEMM, per-token activations, per-channel weights"),
    ]
    known = registered_plugins()
    for spec in specs:
        if spec.name not in known:
            register_plugin(spec)


register()
