"""FP8 activation quantization fused into the layer that makes the activation.

A static-scale ``trtdsl.fp8_gemm`` quantizes its input itself (``saturate(x / input_scale)`` to e4m3),
which on the GPU is a separate small kernel before every GEMM. Where the input comes from an RMSNorm,
a ``trtdsl.add_rms_norm``, a ``trtdsl.swiglu``, a ``trtdsl.attention`` or a ``trtdsl.attention_quant_kv``
whose every consumer is such a GEMM with the same
``input_scale`` value, :func:`fuse_fp8_activations` replaces the producer by a quantizing variant that
writes the e4m3 codes directly, and the GEMMs read the codes (an fp8 ``x`` for ``trtdsl.fp8_gemm``
means "already quantized with ``input_scale``"; its field ``out_dtype`` keeps the output dtype):

============================  =======================================  ======================================
plugin                        inputs                                   outputs
============================  =======================================  ======================================
``trtdsl.rms_norm_fp8``       ``x``, ``weight``, ``input_scale [1]``,  codes of ``rms_norm(x) * weight``
                              optional ``mean [k]``                    (``- mean``)
``trtdsl.add_rms_norm_fp8``   ``a``, ``b``, ``weight``, ``input_scale``,  codes of the norm of ``a + b``
                              optional ``mean [k]``                    (``- mean``), ``a + b``
``trtdsl.swiglu_fp8``         ``x = [gate | up]``, ``input_scale``      codes of ``silu(gate) * up``
``trtdsl.attention_fp8``      the attention's 8, ``input_scale``        codes of the attention's output
``trtdsl.attention_quant_kv   attention_quant_kv's 9 or 10,             codes of the attention's output
_fp8``                        ``input_scale``
============================  =======================================  ======================================

Fields of the norms: ``axes``, ``epsilon`` (as ``trtdsl.add_rms_norm``); of the attentions, their own
(they still write this step's K/V to the cache). On the GPU the fused decode attention kernel writes
the codes itself (over a float or a quantized cache), which removes the quantizer launch before every
o_proj. The math is the unfused
layers' (the references call the same functions, so the value is rounded to the activation dtype
first), then ``numerics.quantize_fp8``, the rounding the fp8_gemm reference applies: fused and unfused
networks agree bit for bit on the torch backend, and the CUDA kernels (``plugins_cuda/src/
norm_quant.cu``) reproduce the unfused kernels' codes bit for bit.

Centered inputs (``QuantConfig.fp8_center_inputs``): a norm whose only reader subtracts a constant
per-channel mean before static fp8 GEMMs takes the mean as its last input (the subtraction goes; the
difference is rounded to the activation dtype as the subtraction did), and a GEMM on codes whose only
reader adds a constant ``[n]`` vector (the centered input's ``W mean``, or a Linear's own bias) takes it
as a fifth input, ``bias``, added to the rounded output in its epilogue. The SwiGLU and attention
producers take no mean: their centered inputs stay a subtraction and the GEMM's own quantizer.

Left alone: dynamic (per-token) fp8 GEMMs, a value with any other consumer or that is a network
output, GEMMs whose ``input_scale`` constants differ, and inputs that are not float.
"""

from __future__ import annotations

from typing import Any

import torch

from .. import functional as F
from ..dtypes import DType
from ..errors import DTypeError, ShapeError
from ..ir.network import Layer, LayerKind, Network, Tensor
from ..plugins import attention
from ..plugins.registry import PluginSpec, register_plugin, registered_plugins
from ..quantization import kv_cache
from ..quantization.numerics import quantize_fp8
from ..quantization.plugins import FP8_GEMM
from ..quantization.graph import constant_source
from . import fused_plugins
from .dce import eliminate_dead_code
from .graph import consumers, output_ids, sync_bookkeeping, toposort

__all__ = ["RMS_NORM_FP8", "ADD_RMS_NORM_FP8", "SWIGLU_FP8", "ATTENTION_FP8", "ATTENTION_QUANT_KV_FP8",
           "fuse_fp8_activations", "rms_norm_fp8_reference", "add_rms_norm_fp8_reference", "swiglu_fp8_reference",
           "attention_fp8_reference", "attention_quant_kv_fp8_reference"]

RMS_NORM_FP8 = "trtdsl.rms_norm_fp8"
ADD_RMS_NORM_FP8 = "trtdsl.add_rms_norm_fp8"
SWIGLU_FP8 = "trtdsl.swiglu_fp8"
ATTENTION_FP8 = "trtdsl.attention_fp8"
ATTENTION_QUANT_KV_FP8 = "trtdsl.attention_quant_kv_fp8"
_FLOAT = (DType.float32, DType.float16, DType.bfloat16)


# -- plugins ---------------------------------------------------------------------------------------------
def _check(cond: bool, plugin: str, problem: str, ins: list, kind: type = ShapeError) -> None:
    if not cond:
        described = ", ".join(f"{t.name!r}: {t.dtype.value}{tuple(t.shape)}" for t in ins)
        raise kind(f"{plugin}: {problem}\n  inputs: {described}")


def _check_inputs(plugin: str, ins: list, count: int, floats: int) -> None:
    """``count`` inputs: ``floats`` float activations / weights of one dtype, then ``input_scale``."""
    _check(len(ins) == count, plugin, f"expects {count} inputs, got {len(ins)}", ins)
    dtypes = {t.dtype for t in ins[:floats]}
    _check(len(dtypes) == 1 and ins[0].dtype in _FLOAT, plugin, "activations (and the norm weight) must "
           "share one float dtype (float32/float16/bfloat16)", ins, DTypeError)
    scale = ins[-1]
    _check(scale.dtype is DType.float32, plugin, f"input_scale {scale.name!r} must be float32, got "
           f"{scale.dtype.value}", ins, DTypeError)
    _check(tuple(scale.shape) == (1,), plugin, f"input_scale {scale.name!r} must be [1] (a static "
           f"per-tensor scale), got {tuple(scale.shape)}", ins)


def _check_mean(plugin: str, ins: list, count: int) -> None:
    """The ``count`` inputs of the norm (``input_scale`` last), then optionally its ``mean [k]``."""
    _check(len(ins) in (count, count + 1), plugin, f"expects {count} inputs (or {count + 1} with a mean), "
           f"got {len(ins)}", ins)
    _check_inputs(plugin, ins[:count], count, count - 1)
    if len(ins) == count + 1:
        mean, width = ins[-1], ins[0].shape[-1] if ins[0].shape else None
        _check(mean.dtype is ins[0].dtype, plugin, f"mean {mean.name!r} must have the activation's dtype "
               f"{ins[0].dtype.value}, got {mean.dtype.value}", ins, DTypeError)
        _check(tuple(mean.shape) == (width,), plugin, f"mean {mean.name!r} must be [{width}], got "
               f"{tuple(mean.shape)}", ins)


def _rms_norm_fp8_shape(ins: list, fields: dict) -> list:
    _check_mean(RMS_NORM_FP8, ins, 3)
    return [(DType.fp8, ins[0].shape)]


def _add_rms_norm_fp8_shape(ins: list, fields: dict) -> list:
    _check_mean(ADD_RMS_NORM_FP8, ins, 4)
    a, b = ins[0], ins[1]
    _check(tuple(a.shape) == tuple(b.shape), ADD_RMS_NORM_FP8, "a and b must have the same shape", ins)
    return [(DType.fp8, a.shape), (a.dtype, a.shape)]


def _swiglu_fp8_shape(ins: list, fields: dict) -> list:
    _check_inputs(SWIGLU_FP8, ins, 2, 1)
    x = ins[0]
    width = x.shape[-1] if x.shape else None
    _check(isinstance(width, int) and width % 2 == 0, SWIGLU_FP8, "x's last dim must be a static even "
           "size ([gate | up])", ins)
    return [(DType.fp8, tuple(x.shape[:-1]) + (x.shape[-1] // 2,))]


def _attention_fp8_shape(ins: list, fields: dict) -> list:
    _check(len(ins) == len(attention.INPUT_NAMES) + 1, ATTENTION_FP8, f"expects the attention's "
           f"{len(attention.INPUT_NAMES)} inputs and input_scale, got {len(ins)}", ins)
    ((_, shape),) = attention.shape_rule(ins[:-1], fields)
    _check_inputs(ATTENTION_FP8, [ins[0], ins[-1]], 2, 1)  # qkv float, input_scale float32 [1]
    return [(DType.fp8, shape)]


def _attention_quant_kv_fp8_shape(ins: list, fields: dict) -> list:
    _check(len(ins) in (10, 11), ATTENTION_QUANT_KV_FP8, f"expects {kv_cache.ATTENTION_QUANT_KV}'s 9 or 10 "
           f"inputs and input_scale, got {len(ins)}", ins)
    ((_, shape),) = kv_cache.shape_rule(ins[:-1], fields)
    _check_inputs(ATTENTION_QUANT_KV_FP8, [ins[0], ins[-1]], 2, 1)  # qkv float, input_scale float32 [1]
    return [(DType.fp8, shape)]


def _norm_fields(fields: dict) -> dict:
    return {"axes": fields["axes"], "epsilon": fields["epsilon"]}


def _centered_codes(normed: torch.Tensor, scale: torch.Tensor, mean: list) -> torch.Tensor:
    """e4m3 codes of ``normed`` (or of ``normed - mean``, rounded to normed's dtype as the subtraction
    layer rounds it) with ``scale``."""
    return quantize_fp8(normed - mean[0] if mean else normed, scale)


def rms_norm_fp8_reference(ins: list, fields: dict, hints: dict | None = None) -> torch.Tensor:
    """The RMSNorm layer's result (in x's dtype; minus ``mean`` when given), then its e4m3 codes with
    ``input_scale``."""
    from ..backends.torch_layers import LAYER_FUNCTIONS
    x, weight, scale, *mean = ins
    layer = Layer(LayerKind.NORMALIZATION, "rms_norm_fp8", [], [], {"kind": "rms", **_norm_fields(fields)})
    (normed,) = LAYER_FUNCTIONS[LayerKind.NORMALIZATION](layer, [x, weight], {}, fused_plugins._CTX)
    return _centered_codes(normed, scale, mean)


def add_rms_norm_fp8_reference(ins: list, fields: dict, hints: dict | None = None) -> list:
    """``trtdsl.add_rms_norm``'s outputs, the normalized one (minus ``mean`` when given) as e4m3 codes of
    ``normed / input_scale``."""
    a, b, weight, scale, *mean = ins
    normed, total = fused_plugins.add_rms_norm_reference([a, b, weight], _norm_fields(fields), hints or {})
    return [_centered_codes(normed, scale, mean), total]


def swiglu_fp8_reference(ins: list, fields: dict, hints: dict | None = None) -> torch.Tensor:
    """``trtdsl.swiglu``'s result (in x's dtype), then its e4m3 codes with ``input_scale``."""
    x, scale = ins
    return quantize_fp8(fused_plugins.swiglu_reference([x], {}, hints or {}), scale)


def attention_fp8_reference(ins: list, fields: dict, hints: dict | None = None) -> torch.Tensor:
    """``trtdsl.attention``'s result (in qkv's dtype; its K/V written to the cache), then its e4m3 codes."""
    return quantize_fp8(attention.reference(ins[:-1], fields, hints or {}), ins[-1])


def attention_quant_kv_fp8_reference(ins: list, fields: dict, hints: dict | None = None) -> torch.Tensor:
    """``trtdsl.attention_quant_kv``'s result (its codes written to the cache), then its e4m3 codes."""
    return quantize_fp8(kv_cache.quant_kv_attention_reference(ins[:-1], fields, hints or {}), ins[-1])


def register() -> None:
    """Register the five plugins (idempotent: kernels attached to an existing spec survive)."""
    specs = [
        PluginSpec(RMS_NORM_FP8, _rms_norm_fp8_shape, rms_norm_fp8_reference,
                   doc="RMSNorm, output as e4m3 codes of y / input_scale (static scale)"),
        PluginSpec(ADD_RMS_NORM_FP8, _add_rms_norm_fp8_shape, add_rms_norm_fp8_reference,
                   doc="residual add then RMSNorm; outputs (e4m3 codes of normed / input_scale, sum)"),
        PluginSpec(SWIGLU_FP8, _swiglu_fp8_shape, swiglu_fp8_reference,
                   doc="silu(gate) * up, output as e4m3 codes of y / input_scale (static scale)"),
        PluginSpec(ATTENTION_FP8, _attention_fp8_shape, attention_fp8_reference, version="1",
                   mutates=attention.SPEC.mutates,
                   doc="trtdsl.attention, output as e4m3 codes of y / input_scale (static scale)"),
        PluginSpec(ATTENTION_QUANT_KV_FP8, _attention_quant_kv_fp8_shape, attention_quant_kv_fp8_reference,
                   version="1", mutates=(6,),
                   doc="trtdsl.attention_quant_kv, output as e4m3 codes of y / input_scale (static scale)"),
    ]
    known = registered_plugins()
    for spec in specs:
        if spec.name not in known:
            register_plugin(spec)


register()


# -- the pass --------------------------------------------------------------------------------------------
def _quantized_output(layer: Layer) -> tuple[str, Tensor] | None:
    """(fused plugin name, the output it would quantize) if ``layer`` is a producer the pass handles."""
    if layer.kind is LayerKind.NORMALIZATION and layer.attrs.get("kind") == "rms" and len(layer.inputs) == 2:
        return RMS_NORM_FP8, layer.outputs[0]
    if layer.kind is LayerKind.PLUGIN and layer.attrs.get("name") == fused_plugins.ADD_RMS_NORM:
        return ADD_RMS_NORM_FP8, layer.outputs[0]
    if layer.kind is LayerKind.PLUGIN and layer.attrs.get("name") == fused_plugins.SWIGLU:
        return SWIGLU_FP8, layer.outputs[0]
    if layer.kind is LayerKind.PLUGIN and layer.attrs.get("name") == attention.ATTENTION_PLUGIN:
        return ATTENTION_FP8, layer.outputs[0]
    if layer.kind is LayerKind.PLUGIN and layer.attrs.get("name") == kv_cache.ATTENTION_QUANT_KV:
        return ATTENTION_QUANT_KV_FP8, layer.outputs[0]
    return None


def _constant_value(t: Tensor) -> torch.Tensor | None:
    p = t.producer
    if p is None or p.kind is not LayerKind.CONSTANT:
        return None
    value = p.attrs.get("value")
    return value if isinstance(value, torch.Tensor) else None


def _shared_scale(value: Tensor, users: list[Layer]) -> Tensor | None:
    """The first GEMM's ``input_scale`` tensor if every user is a static fp8 GEMM reading ``value`` as
    its ``x`` only, all with equal constant ``[1]`` float32 scales; else None."""
    if not users:
        return None
    scales: list[torch.Tensor] = []
    for user in users:
        if user.kind is not LayerKind.PLUGIN or user.attrs.get("name") != FP8_GEMM or len(user.inputs) != 4:
            return None
        if user.inputs[0] is not value or any(t is value for t in user.inputs[1:]):
            return None
        scale = user.inputs[3]
        v = _constant_value(scale)
        if v is None or scale.dtype is not DType.float32 or tuple(v.shape) != (1,):
            return None
        scales.append(v)
    if any(not torch.equal(s, scales[0]) for s in scales[1:]):
        return None  # different calibrated scales: one code tensor cannot serve both
    return users[0].inputs[3]


def _fields_of(layer: Layer, plugin: str) -> dict[str, Any]:
    if plugin == SWIGLU_FP8:
        return {}
    if plugin in (ATTENTION_FP8, ATTENTION_QUANT_KV_FP8):
        return dict(layer.attrs["fields"])
    source = layer.attrs if layer.kind is LayerKind.NORMALIZATION else layer.attrs["fields"]
    return {"axes": tuple(source["axes"]), "epsilon": source["epsilon"]}


def _vector_source(t: Tensor, width: Any, dtype: DType) -> Tensor | None:
    """``t``'s constant source output when ``t`` is a constant of ``dtype`` and shape
    ``[1, ..., 1, width]`` (constant folding leaves broadcast vectors in that shape), else None."""
    src = constant_source(t)
    if src is None or not isinstance(width, int) or src.outputs[0].dtype is not dtype:
        return None
    value = src.attrs.get("value")
    if not isinstance(value, torch.Tensor) or value.numel() != width or value.shape[-1] != width:
        return None
    return src.outputs[0]


def _as_vector(net: Network, source: Tensor, width: int) -> Tensor:
    """A ``[width]`` constant with the values of ``source`` (a :func:`_vector_source`): itself when it
    has that shape, else a new constant (made only when a fusion uses it, so none is left dead)."""
    if tuple(source.shape) == (width,):
        return source
    value = constant_source(source).attrs["value"]
    with net.scope():
        return F.constant(value.reshape(width), source.dtype, name=f"{source.name}.vector")


def _centering(net: Network, value: Tensor, readers: list[Layer]) -> tuple[Layer, Tensor] | None:
    """``(subtraction, the mean's constant)`` when ``value``'s only reader subtracts a constant per-channel
    mean of its dtype from it (a centered fp8 GEMM input, ``QuantConfig.fp8_center_inputs``); else None."""
    if len(readers) != 1:
        return None
    sub = readers[0]
    if sub.kind is not LayerKind.ELEMENTWISE or sub.attrs.get("op") != "sub" or sub.inputs[0] is not value \
            or sub.inputs[1] is value or tuple(sub.outputs[0].shape) != tuple(value.shape):
        return None
    mean = _vector_source(sub.inputs[1], value.shape[-1] if value.shape else None, value.dtype)
    return None if mean is None else (sub, mean)


def _fold_bias(net: Network, gemm: Layer, users: dict[int, list[Layer]], outs: set[int]) -> bool:
    """Move a constant ``[n]`` add after a GEMM on codes into the GEMM (its fifth input, ``bias``)."""
    y = gemm.outputs[0]
    readers = users.get(id(y), [])
    if len(readers) != 1 or id(y) in outs or len(gemm.inputs) != 4:
        return False
    add = readers[0]
    if add.kind is not LayerKind.ELEMENTWISE or add.attrs.get("op") != "sum" or len(add.inputs) != 2 or \
            tuple(add.outputs[0].shape) != tuple(y.shape) or add.inputs[0] is add.inputs[1]:
        return False
    other = add.inputs[1] if add.inputs[0] is y else add.inputs[0]
    bias = _vector_source(other, y.shape[-1] if y.shape else None, y.dtype)
    if bias is None:
        return False
    gemm.inputs = [*gemm.inputs, _as_vector(net, bias, y.shape[-1])]
    total = add.outputs[0]
    total.producer, gemm.outputs = gemm, [total]
    add.inputs, add.outputs = [], []
    return True


def fuse_fp8_activations(net: Network) -> int:
    """Quantize in the producers of static fp8 GEMM inputs (in place); returns how many producers
    were replaced."""
    users = consumers(net)
    outs = output_ids(net)
    fused, gemms = 0, []
    for layer in list(net.layers):
        found = _quantized_output(layer)
        if found is None:
            continue
        plugin, value = found
        if id(value) in outs or value.dtype not in _FLOAT:
            continue
        readers = users.get(id(value), [])
        centered = _centering(net, value, readers) if plugin in (RMS_NORM_FP8, ADD_RMS_NORM_FP8) else None
        target = value  # what the GEMMs read: the subtraction's output when centered
        if centered is not None:
            sub, mean = centered
            target = sub.outputs[0]
            if id(target) in outs:
                continue
            readers = users.get(id(target), [])
        scale = _shared_scale(target, readers)
        if scale is None:
            continue
        fields = _fields_of(layer, plugin)
        layer.inputs = [*layer.inputs, scale] + ([_as_vector(net, mean, value.shape[-1])] if centered else [])
        layer.kind = LayerKind.PLUGIN
        layer.attrs = {"name": plugin, "version": "1", "fields": fields}
        if centered:  # the norm writes the subtraction's output; the subtraction goes
            target.producer = layer
            layer.outputs = [target, *layer.outputs[1:]]
            sub.inputs, sub.outputs = [], []
            value = target
        for gemm in readers:
            gemm.attrs = {**gemm.attrs, "fields": {**gemm.attrs.get("fields", {}), "out_dtype": value.dtype}}
        value.dtype = DType.fp8  # its only readers are the GEMMs just told so
        gemms += readers
        fused += 1
    if fused:
        for gemm in gemms:
            _fold_bias(net, gemm, users, outs)
        net.layers = [la for la in net.layers if la.outputs]  # the subtractions and adds folded in
        toposort(net)  # the scale (and new mean / bias) constants may have been placed after their readers
        eliminate_dead_code(net)  # the broadcast copies of folded means / biases
        sync_bookkeeping(net)
    return fused
