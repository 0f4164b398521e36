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
                              optional ``mean [k]``, ``basis [k, r]``  (``- mean``, split), ``c``
``trtdsl.add_rms_norm_fp8``   ``a``, ``b``, ``weight``, ``input_scale``,  codes of the norm of ``a + b``
                              optional ``mean [k]``, ``basis [k, r]``  (``- mean``, split), ``a + b``, ``c``
``trtdsl.swiglu_fp8``         ``x = [gate | up]``, ``input_scale``,     codes of ``silu(gate) * up``
                              optional ``mean``, ``basis``             (``- mean``, split), ``c``
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
as a fifth input, ``bias``, added to the rounded output in its epilogue. The attention producers take
no mean: their centered inputs stay a subtraction and the GEMM's own quantizer.

Low-rank split (``QuantConfig.fp8_lowrank``): when the centered value feeds ``c = d @ basis`` and
``rest = d - c @ basis^T`` (``quantize._lowrank_split``) and ``rest`` feeds the GEMMs, the producer also
takes ``basis`` and writes the codes of ``rest`` and, as its last output, ``c``; each GEMM's
``+ c @ lowrank_weight`` and bias adds become its inputs 5-7 (``bias``, ``c``, ``lowrank_weight``). A
centered SwiGLU fuses only with its split. The references run the unfused layers' torch ops, so on the
CPU the fused network is bit for bit the unfused one; the CUDA kernels sum ``c`` in their own order. A
SwiGLU's basis that is block-diagonal in ``numerics.lowrank_block_chunks``' layout
(``QuantConfig.fp8_lowrank_blocks``) is passed compactly (``[k, r]``, each chunk's own columns) with the
field ``lowrank_blocks``, and ``c`` is ``[..., blocks * r]``: the CUDA kernel then computes each chunk's
entries in one thread block (no cluster); the reference expands the basis back, so its zeros add nothing.

Left alone: dynamic (per-token) fp8 GEMMs, a value with any other consumer or that is a network
output, GEMMs whose ``input_scale`` constants differ, and inputs that are not float.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .. import functional as F
from ..dtypes import DType
from ..errors import DTypeError
from ..ir.network import Layer, LayerKind, Network, Tensor
from ..plugins import attention
from ..plugins.registry import PluginSpec, register_plugin, registered_plugins
from ..quantization import kv_cache
from ..quantization.numerics import compact_block_basis, expand_block_basis, quantize_fp8
from ..quantization.plugins import FP8_GEMM, check_plugin
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
def _check_inputs(plugin: str, ins: list, count: int, floats: int) -> None:
    """``count`` inputs: ``floats`` float activations / weights of one dtype, then ``input_scale``."""
    check_plugin(len(ins) == count, plugin, f"expects {count} inputs, got {len(ins)}", ins)
    dtypes = {t.dtype for t in ins[:floats]}
    check_plugin(len(dtypes) == 1 and ins[0].dtype in _FLOAT, plugin, "activations (and the norm weight) must "
                 "share one float dtype (float32/float16/bfloat16)", ins, DTypeError)
    scale = ins[-1]
    check_plugin(scale.dtype is DType.float32, plugin, f"input_scale {scale.name!r} must be float32, got "
                 f"{scale.dtype.value}", ins, DTypeError)
    check_plugin(tuple(scale.shape) == (1,), plugin, f"input_scale {scale.name!r} must be [1] (a static "
                 f"per-tensor scale), got {tuple(scale.shape)}", ins)


def _check_mean(plugin: str, ins: list, count: int, width: Any) -> list:
    """The ``count`` inputs of the producer (``input_scale`` last), then optionally its ``mean [width]``
    and, after the mean, the low-rank branch's ``basis [width, r]`` (``QuantConfig.fp8_lowrank``).
    Returns the extra output's ``[(dtype, shape)]``: the branch's ``c [..., r]``, or nothing."""
    check_plugin(len(ins) in (count, count + 1, count + 2), plugin, f"expects {count} inputs (or {count + 1} with "
                 f"a mean, {count + 2} with a mean and a low-rank basis), got {len(ins)}", ins)
    _check_inputs(plugin, ins[:count], count, count - 1)
    if len(ins) == count:
        return []
    mean = ins[count]
    check_plugin(mean.dtype is ins[0].dtype, plugin, f"mean {mean.name!r} must have the activation's dtype "
                 f"{ins[0].dtype.value}, got {mean.dtype.value}", ins, DTypeError)
    check_plugin(tuple(mean.shape) == (width,), plugin, f"mean {mean.name!r} must be [{width}], got "
                 f"{tuple(mean.shape)}", ins)
    if len(ins) == count + 1:
        return []
    basis = ins[-1]
    check_plugin(basis.dtype is ins[0].dtype, plugin, f"basis {basis.name!r} must have the activation's dtype "
                 f"{ins[0].dtype.value}, got {basis.dtype.value}", ins, DTypeError)
    check_plugin(len(basis.shape) == 2 and basis.shape[0] == width and isinstance(basis.shape[1], int), plugin,
                 f"basis {basis.name!r} must be [{width}, r], got {tuple(basis.shape)}", ins)
    return [(ins[0].dtype, tuple(ins[0].shape[:-1]) + (basis.shape[1],))]


def _rms_norm_fp8_shape(ins: list, fields: dict) -> list:
    branch = _check_mean(RMS_NORM_FP8, ins, 3, ins[0].shape[-1] if ins and ins[0].shape else None)
    return [(DType.fp8, ins[0].shape), *branch]


def _add_rms_norm_fp8_shape(ins: list, fields: dict) -> list:
    branch = _check_mean(ADD_RMS_NORM_FP8, ins, 4, ins[0].shape[-1] if ins and ins[0].shape else None)
    a, b = ins[0], ins[1]
    check_plugin(tuple(a.shape) == tuple(b.shape), ADD_RMS_NORM_FP8, "a and b must have the same shape", ins)
    return [(DType.fp8, a.shape), (a.dtype, a.shape), *branch]


def _swiglu_fp8_shape(ins: list, fields: dict) -> list:
    x = ins[0] if ins else None
    width = x.shape[-1] if x is not None and x.shape else None
    check_plugin(isinstance(width, int) and width % 2 == 0, SWIGLU_FP8, "x's last dim must be a static even "
                 "size ([gate | up])", ins)
    assert x is not None and isinstance(width, int)
    check_plugin(len(ins) != 3, SWIGLU_FP8, "a centered SwiGLU input needs its low-rank basis too (x, input_scale, "
                 "mean, basis)", ins)
    branch = _check_mean(SWIGLU_FP8, ins, 2, width // 2)
    blocks = fields.get("lowrank_blocks", 0)
    check_plugin(isinstance(blocks, int) and blocks >= 0 and (not blocks or branch), SWIGLU_FP8, f"lowrank_blocks "
                 f"{blocks!r} must be an int >= 0, and > 0 only with a low-rank basis", ins)
    if blocks:  # the compact block-diagonal basis: c holds every block's r entries
        (dtype, shape), = branch
        branch = [(dtype, shape[:-1] + (blocks * shape[-1],))]
    return [(DType.fp8, tuple(x.shape[:-1]) + (width // 2,)), *branch]


def _attention_fp8_shape(ins: list, fields: dict) -> list:
    check_plugin(len(ins) == len(attention.INPUT_NAMES) + 1, ATTENTION_FP8, f"expects the attention's "
                 f"{len(attention.INPUT_NAMES)} inputs and input_scale, got {len(ins)}", ins)
    ((_, shape),) = attention.shape_rule(ins[:-1], fields)
    _check_inputs(ATTENTION_FP8, [ins[0], ins[-1]], 2, 1)  # qkv float, input_scale float32 [1]
    return [(DType.fp8, shape)]


def _attention_quant_kv_fp8_shape(ins: list, fields: dict) -> list:
    check_plugin(len(ins) in (10, 11), ATTENTION_QUANT_KV_FP8, f"expects {kv_cache.ATTENTION_QUANT_KV}'s 9 or 10 "
                 f"inputs and input_scale, got {len(ins)}", ins)
    ((_, shape),) = kv_cache.shape_rule(ins[:-1], fields)
    _check_inputs(ATTENTION_QUANT_KV_FP8, [ins[0], ins[-1]], 2, 1)  # qkv float, input_scale float32 [1]
    return [(DType.fp8, shape)]


def _norm_fields(fields: dict) -> dict:
    return {"axes": fields["axes"], "epsilon": fields["epsilon"]}


def _centered_codes(value: torch.Tensor, scale: torch.Tensor, extra: list) -> list[torch.Tensor]:
    """e4m3 codes of ``value`` with ``scale``; with ``extra = [mean]`` of ``d = value - mean``; with
    ``[mean, basis]`` of ``d - (d basis) basis^T``, and ``d basis`` as a second output. Each step is
    the layer it replaces (subtraction, matmul with the basis and with its contiguous transpose),
    rounded to value's dtype as that layer rounds."""
    if not extra:
        return [quantize_fp8(value, scale)]
    d = value - extra[0]
    if len(extra) == 1:
        return [quantize_fp8(d, scale)]
    c = torch.matmul(d, extra[1])
    return [quantize_fp8(d - torch.matmul(c, extra[1].t().contiguous()), scale), c]


def rms_norm_fp8_reference(ins: list, fields: dict, hints: dict | None = None) -> Any:
    """The RMSNorm layer's result (in x's dtype), centered / split when given a mean / basis
    (:func:`_centered_codes`), as e4m3 codes with ``input_scale``; with a basis also ``c``."""
    from ..backends.torch_layers import LAYER_FUNCTIONS
    x, weight, scale, *extra = ins
    layer = Layer(LayerKind.NORMALIZATION, "rms_norm_fp8", [], [], {"kind": "rms", **_norm_fields(fields)})
    (normed,) = LAYER_FUNCTIONS[LayerKind.NORMALIZATION](layer, [x, weight], {}, fused_plugins._CTX)
    out = _centered_codes(normed, scale, extra)
    return out[0] if len(out) == 1 else out


def add_rms_norm_fp8_reference(ins: list, fields: dict, hints: dict | None = None) -> list:
    """``trtdsl.add_rms_norm``'s outputs, the normalized one as e4m3 codes (centered / split as
    :func:`rms_norm_fp8_reference`), then ``c`` with a basis."""
    a, b, weight, scale, *extra = ins
    normed, total = fused_plugins.add_rms_norm_reference([a, b, weight], _norm_fields(fields), hints or {})
    codes, *c = _centered_codes(normed, scale, extra)
    return [codes, total, *c]


def swiglu_fp8_reference(ins: list, fields: dict, hints: dict | None = None) -> Any:
    """``trtdsl.swiglu``'s result (in x's dtype), then its e4m3 codes with ``input_scale`` (centered and
    split, with ``c`` as a second output, when given a mean and a basis; field ``lowrank_blocks``: the
    basis is the compact form of a block-diagonal one)."""
    x, scale, *extra = ins
    if fields.get("lowrank_blocks"):  # exact zeros outside each chunk: the unfused matmuls' sums
        extra = [extra[0], expand_block_basis(extra[1], fields["lowrank_blocks"])]
    out = _centered_codes(fused_plugins.swiglu_reference([x], {}, hints or {}), scale, extra)
    return out[0] if len(out) == 1 else out


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


def _compact_block_basis(net: Network, basis: Tensor) -> tuple[int, list[Tensor]]:
    """A SwiGLU split's basis input: ``(blocks, [compact constant])`` when the basis is block-diagonal in
    ``lowrank_block_chunks``' layout (``QuantConfig.fp8_lowrank_blocks``; the most blocks that fit), so
    the CUDA kernel splits the row over independent thread blocks; else ``(0, [basis])``."""
    value = _constant_value(basis)
    width = basis.shape[-1]
    for blocks in range(width, 1, -1) if value is not None and isinstance(width, int) else ():
        compact = compact_block_basis(value, blocks) if width % blocks == 0 else None
        if compact is not None:
            with net.scope():
                return blocks, [F.constant(compact, basis.dtype, name=f"{basis.name}.blocks{blocks}")]
    return 0, [basis]


def _as_vector(net: Network, source: Tensor, width: int) -> Tensor:
    """A ``[width]`` constant with the values of ``source`` (a :func:`_vector_source`): itself when it
    has that shape, else a new constant (made only when a fusion uses it, so none is left dead)."""
    if tuple(source.shape) == (width,):
        return source
    value = constant_source(source).attrs["value"]
    with net.scope():
        return F.constant(value.reshape(width), source.dtype, name=f"{source.name}.vector")


def _centering(value: Tensor, readers: list[Layer]) -> tuple[Layer, Tensor] | None:
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


@dataclass
class _LowRankSplit:
    """The layers ``quantize._lowrank_split`` adds after a centered input ``d``: ``c = d @ basis`` and
    ``rest = d - c @ basis^T`` (``QuantConfig.fp8_lowrank``)."""
    basis: Tensor  # constant [k, r]
    c: Tensor
    rest: Tensor
    layers: tuple[Layer, ...]  # the two matmuls and the subtraction, which the fused producer replaces


def _plain_matmul(layer: Layer | None, a: Tensor) -> bool:
    return layer is not None and layer.kind is LayerKind.MATRIX_MULTIPLY and layer.inputs[0] is a and \
        not layer.attrs.get("transpose_a") and not layer.attrs.get("transpose_b")


def _lowrank_split(d: Tensor, users: dict[int, list[Layer]], outs: set[int]) -> _LowRankSplit | None:
    """The low-rank split reading ``d`` (its only two readers), or None."""
    readers = users.get(id(d), [])
    mm = next((la for la in readers if la.kind is LayerKind.MATRIX_MULTIPLY), None)
    sub = next((la for la in readers if la.kind is LayerKind.ELEMENTWISE and la.attrs.get("op") == "sub"), None)
    if len(readers) != 2 or not _plain_matmul(mm, d) or sub is None or sub.inputs[0] is not d:
        return None
    assert mm is not None
    basis, c = mm.inputs[1], mm.outputs[0]
    low = sub.inputs[1].producer
    if not _plain_matmul(low, c) or len(basis.shape) != 2 or tuple(basis.shape) != (d.shape[-1], c.shape[-1]):
        return None
    assert low is not None
    u, ut = _constant_value(basis), constant_source(low.inputs[1])
    if u is None or ut is None or basis.dtype is not d.dtype or \
            not torch.equal(ut.attrs["value"].reshape(u.shape[1], u.shape[0]), u.t()):
        return None
    rest = sub.outputs[0]
    if users.get(id(low.outputs[0])) != [sub] or any(id(t) in outs for t in (c, low.outputs[0], rest)):
        return None
    return _LowRankSplit(basis, c, rest, (mm, low, sub))


def _fold_lowrank(net: Network, gemm: Layer, c: Tensor, users: dict[int, list[Layer]], outs: set[int]) -> bool:
    """Move ``+ c @ lowrank_weight`` and then ``+ bias [n]`` after a GEMM on codes into the GEMM (inputs
    5 to 7: bias, c, lowrank_weight)."""
    y = gemm.outputs[0]
    add = users.get(id(y), [None])[0]
    if len(users.get(id(y), [])) != 1 or id(y) in outs or len(gemm.inputs) != 4 or add is None or \
            add.kind is not LayerKind.ELEMENTWISE or add.attrs.get("op") != "sum" or len(add.inputs) != 2:
        return False
    term = add.inputs[1] if add.inputs[0] is y else add.inputs[0]
    mm = term.producer
    if not _plain_matmul(mm, c) or users.get(id(term)) != [add] or tuple(add.outputs[0].shape) != tuple(y.shape):
        return False
    assert mm is not None
    lw = mm.inputs[1]
    if _constant_value(lw) is None or len(lw.shape) != 2 or lw.dtype is not y.dtype:
        return False
    partial = add.outputs[0]
    if id(partial) in outs:
        return False
    gemm.outputs = [partial]  # now _fold_bias sees the GEMM's output followed by the bias add
    if not _fold_bias(net, gemm, users, outs):
        gemm.outputs = [y]
        return False
    gemm.inputs = [*gemm.inputs, c, lw]  # after the bias _fold_bias appended
    for dead in (add, mm):
        dead.inputs, dead.outputs = [], []
    return True


def fuse_fp8_activations(net: Network) -> int:
    """Quantize in the producers of static fp8 GEMM inputs (in place); returns how many producers
    were replaced."""
    users = consumers(net)
    outs = output_ids(net)
    fused, gemms = 0, []
    branches: dict[int, Tensor] = {}  # id(GEMM) -> the c its low-rank term reads
    for layer in list(net.layers):
        found = _quantized_output(layer)
        if found is None:
            continue
        plugin, value = found
        if id(value) in outs or value.dtype not in _FLOAT:
            continue
        readers = users.get(id(value), [])
        centered = _centering(value, readers) if plugin in (RMS_NORM_FP8, ADD_RMS_NORM_FP8, SWIGLU_FP8) else None
        target, split = value, None  # target: what the GEMMs read (the subtraction's or the split's output)
        if centered is not None:
            sub, mean = centered
            target = sub.outputs[0]
            if id(target) in outs:
                continue
            split = _lowrank_split(target, users, outs)
            if split is not None:
                target = split.rest
            elif plugin == SWIGLU_FP8:
                continue  # a centered SwiGLU fuses only with its low-rank split
            readers = users.get(id(target), [])
        scale = _shared_scale(target, readers)
        if scale is None:
            continue
        fields = _fields_of(layer, plugin)
        width = target.shape[-1]
        basis = [] if split is None else [split.basis]
        if split is not None and plugin == SWIGLU_FP8:
            blocks, basis = _compact_block_basis(net, split.basis)
            fields = {"lowrank_blocks": blocks} if blocks else fields
        layer.inputs = [*layer.inputs, scale] + ([_as_vector(net, mean, width)] if centered else []) + basis
        layer.kind = LayerKind.PLUGIN
        layer.attrs = {"name": plugin, "version": "1", "fields": fields}
        if centered:  # the producer writes the GEMMs' input; the subtraction (and the split's layers) go
            target.producer = layer
            layer.outputs = [target, *layer.outputs[1:]]
            for dead in (sub, *(split.layers if split else ())):
                dead.inputs, dead.outputs = [], []
            if split is not None:
                split.c.producer = layer
                layer.outputs.append(split.c)
                branches.update({id(g): split.c for g in readers})
            value = target
        for gemm in readers:
            gemm.attrs = {**gemm.attrs, "fields": {**gemm.attrs.get("fields", {}), "out_dtype": value.dtype}}
        value.dtype = DType.fp8  # its only readers are the GEMMs just told so
        gemms += readers
        fused += 1
    if fused:
        for gemm in gemms:
            if id(gemm) in branches:
                _fold_lowrank(net, gemm, branches[id(gemm)], users, outs)
            else:
                _fold_bias(net, gemm, users, outs)
        net.layers = [la for la in net.layers if la.outputs]  # the subtractions and adds folded in
        toposort(net)  # the scale (and new mean / bias) constants may have been placed after their readers
        eliminate_dead_code(net)  # the broadcast copies of folded means / biases
        sync_bookkeeping(net)
    return fused
