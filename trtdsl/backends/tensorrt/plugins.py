"""trtdsl plugins as TensorRT 11 Python plugins (``tensorrt.plugin``, "QDP").

Each trtdsl plugin (``trtdsl.plugins.registered_plugins()``) gets one or more TensorRT plugins
``trtdsl::<name>``: a ``@trtp.register`` function describing the outputs with shape expressions, and
a ``@trtp.impl`` function that runs at enqueue time on TensorRT's stream. The implementation is the
one the torch executor uses on CUDA: ``PluginSpec.implementations["cuda"]`` (the C launchers of
``trtdsl/plugins/cuda``, registered by that package), falling back to the torch reference when no
kernel is registered, so the engine computes exactly what the torch executor does.

A TensorRT Python plugin has a fixed list of inputs: ``tensorrt.plugin.register`` rejects defaults
and reads every input from a ``TensorDesc`` annotation, so there are no optional inputs. trtdsl
plugins whose input list varies with the quantization format therefore get one TensorRT plugin per
input list (:class:`PluginSignature`), chosen by :func:`plan_plugin` from the IR layer's arity:
``trtdsl.weight_only_gemm`` with or without ``zeros`` (its tile-16 form ``trtdsl.int4_tile_gemm`` has
one), ``trtdsl.fp8_gemm`` with or without ``input_scale``, ``trtdsl.attention_quant_kv`` with or without
``k_bias`` (the mean key of ``kv_cache_center_k``: a network constant like ``kv_scales``, so a constant
input of the plugin layer).

The K/V cache is written in place: the attention plugins declare an extra output *aliased* to the
``kv_cache`` input (``TensorDesc.aliased()``), TensorRT's way of saying "this input is modified".

No ``from __future__ import annotations`` here on purpose: ``tensorrt.plugin`` reads the decorated
functions' annotations as objects (``inspect.signature``) to learn inputs, attributes and outputs.
"""

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import torch

from ...errors import BackendError, PluginError
from ...ir.network import Layer
from ...plugins.registry import get_plugin
from ...quantization.int4_tiles import num_tiles
from ._trt import dtype_of_trt, require_tensorrt
from .context import LoweringContext

if TYPE_CHECKING:
    import tensorrt as trt
    import tensorrt.plugin as trtp

__all__ = ["PLUGIN_LOWERINGS", "PluginLowering", "PluginSignature", "PluginPlan", "plan_plugin",
           "lower_plugin", "register_tensorrt_plugins", "NAMESPACE"]

NAMESPACE = "trtdsl"
_ATTENTION_INPUTS = ("qkv", "position_ids", "seq_lens", "past_lens", "cu_seqlens", "block_tables",
                     "kv_cache", "rope_cos_sin")
_ATTENTION_FIELDS: tuple[tuple[str, type, Any], ...] = (
    ("num_heads", int, None), ("num_kv_heads", int, None), ("head_dim", int, None),
    ("layer_idx", int, None), ("tokens_per_block", int, None), ("softmax_scale", float, None),
    ("rotary_dim", int, 0), ("rope_style", str, "neox"))
_QUANT_KV_FIELDS = _ATTENTION_FIELDS + (("k_rotation", str, "none"),)
_WEIGHT_ONLY_FIELDS: tuple[tuple[str, type, Any], ...] = (
    ("bits", int, None), ("group_size", int, None), ("in_features", int, None))
# trtdsl.int4_tile_gemm (trtdsl/passes/int4_tile_gemm.py): swiglu as 0 / 1.
_INT4_TILE_FIELDS: tuple[tuple[str, type, Any], ...] = (
    ("out_features", int, None), ("in_features", int, None), ("group_size", int, None), ("swiglu", int, 0))
# Its deferred-norm pair (trtdsl/passes/deferred_norm.py): the norm's epsilon and the GEMV's row limit.
_DEFERRED_NORM_FIELDS = _INT4_TILE_FIELDS + (("epsilon", float, None), ("max_deferred_rows", int, None))


@dataclass(frozen=True)
class PluginSignature:
    """One TensorRT plugin ``trtdsl::<qdp_name>``: the inputs it takes, in order (the names of its
    ``@trtp.register`` / ``@trtp.impl`` tensor arguments)."""

    qdp_name: str
    inputs: tuple[str, ...]


@dataclass(frozen=True)
class PluginLowering:
    """How one trtdsl plugin becomes a TensorRT plugin layer.

    ``signatures``: one TensorRT plugin per supported input list (distinct lengths);
    ``fields``: ``(name, type, default)`` of each attribute, in the TensorRT plugins' order (``None``
    default = required); ``num_outputs``: TensorRT outputs, which may exceed the IR's (aliases);
    ``implied_fields``: IR attributes the TensorRT plugin does not store because its inputs determine
    them (its impl recomputes them for the kernel)."""

    signatures: tuple[PluginSignature, ...]
    fields: tuple[tuple[str, type, Any], ...]
    num_outputs: int = 1
    implied_fields: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        arities = [len(s.inputs) for s in self.signatures]
        if not arities or len(set(arities)) != len(arities):
            raise BackendError(f"PluginLowering {[s.qdp_name for s in self.signatures]}: needs at "
                               f"least one signature and distinct input counts, got {arities}")

    def signature_for(self, num_inputs: int) -> PluginSignature | None:
        """The TensorRT plugin taking ``num_inputs`` inputs, or None."""
        return next((s for s in self.signatures if len(s.inputs) == num_inputs), None)


@dataclass(frozen=True)
class PluginPlan:
    """What :func:`lower_plugin` adds for one IR plugin layer: ``trtdsl::<signature.qdp_name>`` with
    the layer's inputs in order and ``attrs`` (typed as the TensorRT plugin declares them)."""

    plugin: str
    signature: PluginSignature
    attrs: dict[str, Any]
    num_outputs: int


PLUGIN_LOWERINGS: dict[str, PluginLowering] = {
    "trtdsl.attention": PluginLowering(
        (PluginSignature("attention", _ATTENTION_INPUTS),), _ATTENTION_FIELDS, num_outputs=2),
    # kv_cache_dtype is the kv_cache input's dtype (the IR's shape rule checks they agree).
    "trtdsl.attention_quant_kv": PluginLowering(
        (PluginSignature("attention_quant_kv", _ATTENTION_INPUTS + ("kv_scales",)),
         PluginSignature("attention_quant_kv_centered", _ATTENTION_INPUTS + ("kv_scales", "k_bias"))),
        _QUANT_KV_FIELDS, num_outputs=2, implied_fields=("kv_cache_dtype",)),
    "trtdsl.weight_only_gemm": PluginLowering(
        (PluginSignature("weight_only_gemm", ("x", "qweight", "scales")),  # symmetric: w = q * s
         PluginSignature("weight_only_gemm_zeros", ("x", "qweight", "scales", "zeros"))),  # + z
        _WEIGHT_ONLY_FIELDS),
    "trtdsl.fp8_gemm": PluginLowering(
        (PluginSignature("fp8_gemm", ("x", "weight", "weight_scale", "input_scale")),  # static
         PluginSignature("fp8_gemm_dynamic", ("x", "weight", "weight_scale"))),  # per-token scales
        ()),
    "trtdsl.int8_gemm": PluginLowering(
        (PluginSignature("int8_gemm", ("x", "weight", "weight_scale")),), ()),
    # the tile-16 int4 layout, with the SwiGLU after gate_up fused in (swiglu = 1)
    "trtdsl.int4_tile_gemm": PluginLowering(
        (PluginSignature("int4_tile_gemm", ("x", "qpacked", "sz")),), _INT4_TILE_FIELDS),
    "trtdsl.int4_tile_gemm_add_norm": PluginLowering(
        (PluginSignature("int4_tile_gemm_add_norm", ("x", "qpacked", "sz", "residual", "gamma")),),
        _DEFERRED_NORM_FIELDS, num_outputs=3),
    "trtdsl.int4_tile_gemm_normed": PluginLowering(
        (PluginSignature("int4_tile_gemm_normed", ("x", "qpacked", "sz", "ssq")),), _DEFERRED_NORM_FIELDS),
}


def plan_plugin(layer: Layer) -> PluginPlan:
    """The TensorRT plugin and attributes for IR plugin layer ``layer`` (needs no TensorRT).

    Raises :class:`BackendError` for a plugin or an input count without a TensorRT plugin, or an IR
    attribute the TensorRT plugin would silently drop; :class:`PluginError` for a missing attribute."""
    name = str(layer.attrs["name"])
    lowering = PLUGIN_LOWERINGS.get(name)
    if lowering is None:
        from .native_plugins import NATIVE_PLUGIN_LOWERINGS
        how = ("is lowered to native TensorRT layers, not a TensorRT plugin"
               if name in NATIVE_PLUGIN_LOWERINGS else "has no TensorRT lowering")
        raise BackendError(f"TensorRT lowering: plugin {name!r} (layer {layer.name!r}) {how}; "
                           f"TensorRT plugins exist for {sorted(PLUGIN_LOWERINGS)}")
    signature = lowering.signature_for(len(layer.inputs))
    if signature is None:
        known = "; ".join(f"{len(s.inputs)} {list(s.inputs)} (trtdsl::{s.qdp_name})"
                          for s in lowering.signatures)
        got = ", ".join(f"{t.name!r}: {t.dtype.value}" for t in layer.inputs)
        raise BackendError(f"TensorRT lowering: layer {layer.name!r} ({name}, module "
                           f"{layer.module_path or '<root>'!r}) has {len(layer.inputs)} inputs [{got}]; "
                           f"the TensorRT plugins of {name} take {known}")
    given = dict(layer.attrs["fields"])
    declared = {field_name for field_name, _, _ in lowering.fields}
    unknown = sorted(set(given) - declared - set(lowering.implied_fields))
    if unknown:
        raise BackendError(f"TensorRT lowering: layer {layer.name!r} ({name}) has attributes {unknown} "
                           f"that trtdsl::{signature.qdp_name} does not take (it takes {sorted(declared)}); "
                           f"add them to PLUGIN_LOWERINGS and the plugin's register/impl functions")
    attrs: dict[str, Any] = {}
    for field_name, kind, default in lowering.fields:
        if field_name not in given and default is None:
            raise PluginError(f"plugin layer {layer.name!r} ({name}) lacks attribute {field_name!r}")
        attrs[field_name] = kind(given.get(field_name, default))
    return PluginPlan(name, signature, attrs, lowering.num_outputs)


def lower_plugin(ctx: LoweringContext, layer: Layer, ins: "list[trt.ITensor]") -> "list[trt.ITensor]":
    """Add the TensorRT plugin layer of IR plugin layer ``layer``; returns the IR's outputs."""
    import tensorrt.plugin as trtp

    from .native_plugins import NATIVE_PLUGIN_LOWERINGS

    name = str(layer.attrs["name"])
    if name in NATIVE_PLUGIN_LOWERINGS:
        return NATIVE_PLUGIN_LOWERINGS[name](ctx, layer, ins)
    plan = plan_plugin(layer)
    register_tensorrt_plugins()
    plugin_def: trtp.PluginDef = getattr(getattr(trtp.op, NAMESPACE), plan.signature.qdp_name)
    factory = plugin_def(*ins, **plan.attrs)
    plugin_layer = ctx.finish(ctx.network.add_plugin(factory), layer)
    return [plugin_layer.get_output(i) for i in range(len(layer.outputs))]


# -- run time --------------------------------------------------------------------------------------------
_WIDTH_TYPES = {1: "|i1", 2: "<i2", 4: "<i4", 8: "<i8"}


class _DeviceArray:
    """``__cuda_array_interface__`` of a plugin tensor, typed as same-width integers so that dtypes
    the interface cannot name (bfloat16, fp8) still map; the torch view restores the real dtype."""

    def __init__(self, t: "trtp.Tensor", itemsize: int, stream: int):
        self.__cuda_array_interface__ = {
            "shape": tuple(int(d) for d in t.shape), "typestr": _WIDTH_TYPES[itemsize],
            "strides": tuple(int(s) * itemsize for s in t.strides), "data": (int(t.data_ptr), False),
            "version": 3, "stream": stream}


def torch_view(t: "trtp.Tensor", stream: int) -> torch.Tensor:
    """A torch CUDA tensor over a TensorRT plugin tensor's memory (no copy)."""
    dtype = dtype_of_trt(t.dtype).torch
    itemsize = torch.empty((), dtype=dtype).element_size()
    raw = torch.as_tensor(_DeviceArray(t, itemsize, stream), device="cuda")
    return raw.view(dtype)


def run_plugin(name: str, inputs: "list[trtp.Tensor]", fields: dict[str, Any],
               outputs: "tuple[trtp.Tensor, ...]", stream: int) -> None:
    """Run trtdsl plugin ``name`` on TensorRT's stream and write its result into ``outputs``.

    ``inputs`` are the IR layer's inputs in order, so the implementation sees the same input list
    (and so picks the same format: zeros or not, static or dynamic scales) as under the torch
    executor."""
    spec = get_plugin(name)
    impl = spec.implementations.get("cuda", spec.reference)
    # torch's ExternalStream is not annotated; it wraps TensorRT's cudaStream_t handle (an int).
    external = torch.cuda.ExternalStream(stream)  # type: ignore[no-untyped-call]
    with torch.cuda.stream(external):
        values = [torch_view(t, stream) for t in inputs]
        result = impl(values, fields, {})
        results = list(result) if isinstance(result, (list, tuple)) else [result]
        for out, value in zip(outputs, results):
            torch_view(out, stream).copy_(value)


# -- registration ----------------------------------------------------------------------------------------
# One function per TensorRT plugin, each defining its @trtp.register and @trtp.impl pair. The tensor
# arguments of both are PLUGIN_LOWERINGS' signature inputs, in order, and each impl passes exactly
# those to run_plugin (tests/backend_tensorrt/test_tensorrt_quant_lowering.py checks this statically).
def _gemm_desc(x: "trtp.TensorDesc", w: "trtp.TensorDesc") -> "trtp.TensorDesc":
    """``x.shape[:-1] + (n,)`` in x's dtype: the output of every quantized GEMM plugin (``w`` is
    ``[n, k]``, or ``[n, k // 2]`` for packed int4: the row count is n either way)."""
    import tensorrt.plugin as trtp
    dims = list(x.shape_expr)[:-1] + [w.shape_expr[0]]
    return trtp.from_shape_expr(tuple(dims), dtype=x.dtype)


def _attention_desc(qkv: "trtp.TensorDesc", kv_cache: "trtp.TensorDesc", num_heads: int,
                    head_dim: int) -> "tuple[trtp.TensorDesc, trtp.TensorDesc]":
    import tensorrt.plugin as trtp
    out = trtp.from_shape_expr((qkv.shape_expr[0], num_heads * head_dim), dtype=qkv.dtype)
    return out, kv_cache.aliased()


def _register_attention() -> None:
    import tensorrt.plugin as trtp
    from tensorrt.plugin import Tensor as T, TensorDesc as D  # short names for long signatures

    @trtp.register(f"{NAMESPACE}::attention")
    def describe(qkv: D, position_ids: D, seq_lens: D, past_lens: D, cu_seqlens: D, block_tables: D,
                 kv_cache: D, rope_cos_sin: D, num_heads: int, num_kv_heads: int, head_dim: int,
                 layer_idx: int, tokens_per_block: int, softmax_scale: float, rotary_dim: int,
                 rope_style: str) -> tuple[D, D]:
        return _attention_desc(qkv, kv_cache, num_heads, head_dim)

    @trtp.impl(f"{NAMESPACE}::attention")
    def run(qkv: T, position_ids: T, seq_lens: T, past_lens: T, cu_seqlens: T, block_tables: T,
            kv_cache: T, rope_cos_sin: T, num_heads: int, num_kv_heads: int, head_dim: int,
            layer_idx: int, tokens_per_block: int, softmax_scale: float, rotary_dim: int,
            rope_style: str, outputs: tuple[T, T], stream: int) -> None:
        fields = dict(num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim,
                      layer_idx=layer_idx, tokens_per_block=tokens_per_block,
                      softmax_scale=softmax_scale, rotary_dim=rotary_dim, rope_style=rope_style)
        run_plugin("trtdsl.attention", [qkv, position_ids, seq_lens, past_lens, cu_seqlens,
                                        block_tables, kv_cache, rope_cos_sin], fields, outputs[:1], stream)


def _register_attention_quant_kv() -> None:
    import tensorrt.plugin as trtp
    from tensorrt.plugin import Tensor as T, TensorDesc as D  # short names for long signatures

    @trtp.register(f"{NAMESPACE}::attention_quant_kv")
    def describe(qkv: D, position_ids: D, seq_lens: D, past_lens: D, cu_seqlens: D, block_tables: D,
                 kv_cache: D, rope_cos_sin: D, kv_scales: D, num_heads: int, num_kv_heads: int,
                 head_dim: int, layer_idx: int, tokens_per_block: int, softmax_scale: float,
                 rotary_dim: int, rope_style: str, k_rotation: str) -> tuple[D, D]:
        return _attention_desc(qkv, kv_cache, num_heads, head_dim)

    @trtp.impl(f"{NAMESPACE}::attention_quant_kv")
    def run(qkv: T, position_ids: T, seq_lens: T, past_lens: T, cu_seqlens: T, block_tables: T,
            kv_cache: T, rope_cos_sin: T, kv_scales: T, num_heads: int, num_kv_heads: int,
            head_dim: int, layer_idx: int, tokens_per_block: int, softmax_scale: float, rotary_dim: int,
            rope_style: str, k_rotation: str, outputs: tuple[T, T], stream: int) -> None:
        # kv_cache_dtype is not a TensorRT attribute: the cache tensor's own type says it.
        fields = dict(num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim,
                      layer_idx=layer_idx, tokens_per_block=tokens_per_block,
                      softmax_scale=softmax_scale, rotary_dim=rotary_dim, rope_style=rope_style,
                      kv_cache_dtype=dtype_of_trt(kv_cache.dtype).value, k_rotation=k_rotation)
        run_plugin("trtdsl.attention_quant_kv", [qkv, position_ids, seq_lens, past_lens, cu_seqlens,
                                                 block_tables, kv_cache, rope_cos_sin, kv_scales],
                   fields, outputs[:1], stream)


def _register_attention_quant_kv_centered() -> None:
    """With ``k_bias`` (``kv_cache_center_k``): the CUDA implementation hands its pointer to the
    RoPE + cache-write kernel, which subtracts it from every key before taking the key's code."""
    import tensorrt.plugin as trtp
    from tensorrt.plugin import Tensor as T, TensorDesc as D  # short names for long signatures

    @trtp.register(f"{NAMESPACE}::attention_quant_kv_centered")
    def describe(qkv: D, position_ids: D, seq_lens: D, past_lens: D, cu_seqlens: D, block_tables: D,
                 kv_cache: D, rope_cos_sin: D, kv_scales: D, k_bias: D, num_heads: int, num_kv_heads: int,
                 head_dim: int, layer_idx: int, tokens_per_block: int, softmax_scale: float,
                 rotary_dim: int, rope_style: str, k_rotation: str) -> tuple[D, D]:
        return _attention_desc(qkv, kv_cache, num_heads, head_dim)

    @trtp.impl(f"{NAMESPACE}::attention_quant_kv_centered")
    def run(qkv: T, position_ids: T, seq_lens: T, past_lens: T, cu_seqlens: T, block_tables: T,
            kv_cache: T, rope_cos_sin: T, kv_scales: T, k_bias: T, num_heads: int, num_kv_heads: int,
            head_dim: int, layer_idx: int, tokens_per_block: int, softmax_scale: float, rotary_dim: int,
            rope_style: str, k_rotation: str, outputs: tuple[T, T], stream: int) -> None:
        fields = dict(num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim,
                      layer_idx=layer_idx, tokens_per_block=tokens_per_block,
                      softmax_scale=softmax_scale, rotary_dim=rotary_dim, rope_style=rope_style,
                      kv_cache_dtype=dtype_of_trt(kv_cache.dtype).value, k_rotation=k_rotation)
        run_plugin("trtdsl.attention_quant_kv", [qkv, position_ids, seq_lens, past_lens, cu_seqlens,
                                                 block_tables, kv_cache, rope_cos_sin, kv_scales, k_bias],
                   fields, outputs[:1], stream)


def _register_weight_only_gemm() -> None:
    import tensorrt.plugin as trtp
    from tensorrt.plugin import Tensor as T, TensorDesc as D  # short names for long signatures

    @trtp.register(f"{NAMESPACE}::weight_only_gemm")
    def describe(x: D, qweight: D, scales: D, bits: int, group_size: int, in_features: int) -> D:
        return _gemm_desc(x, qweight)

    @trtp.impl(f"{NAMESPACE}::weight_only_gemm")
    def run(x: T, qweight: T, scales: T, bits: int, group_size: int, in_features: int,
            outputs: tuple[T], stream: int) -> None:
        fields = dict(bits=bits, group_size=group_size, in_features=in_features)
        run_plugin("trtdsl.weight_only_gemm", [x, qweight, scales], fields, outputs, stream)


def _register_weight_only_gemm_zeros() -> None:
    """The asymmetric format (``w = q * scale + zero``, the int4 modes' default)."""
    import tensorrt.plugin as trtp
    from tensorrt.plugin import Tensor as T, TensorDesc as D  # short names for long signatures

    @trtp.register(f"{NAMESPACE}::weight_only_gemm_zeros")
    def describe(x: D, qweight: D, scales: D, zeros: D, bits: int, group_size: int,
                 in_features: int) -> D:
        return _gemm_desc(x, qweight)

    @trtp.impl(f"{NAMESPACE}::weight_only_gemm_zeros")
    def run(x: T, qweight: T, scales: T, zeros: T, bits: int, group_size: int, in_features: int,
            outputs: tuple[T], stream: int) -> None:
        fields = dict(bits=bits, group_size=group_size, in_features=in_features)
        run_plugin("trtdsl.weight_only_gemm", [x, qweight, scales, zeros], fields, outputs, stream)


def _register_int4_tile_gemm() -> None:
    """int4 weight-only in the tile-16 layout; ``out_features`` outputs (the SwiGLU's with ``swiglu``)."""
    import tensorrt.plugin as trtp
    from tensorrt.plugin import Tensor as T, TensorDesc as D  # short names for long signatures

    @trtp.register(f"{NAMESPACE}::int4_tile_gemm")
    def describe(x: D, qpacked: D, sz: D, out_features: int, in_features: int, group_size: int, swiglu: int) -> D:
        return trtp.from_shape_expr((*list(x.shape_expr)[:-1], out_features), dtype=x.dtype)

    @trtp.impl(f"{NAMESPACE}::int4_tile_gemm")
    def run(x: T, qpacked: T, sz: T, out_features: int, in_features: int, group_size: int, swiglu: int,
            outputs: tuple[T], stream: int) -> None:
        fields = dict(out_features=out_features, in_features=in_features, group_size=group_size,
                      swiglu=bool(swiglu))
        run_plugin("trtdsl.int4_tile_gemm", [x, qpacked, sz], fields, outputs, stream)


def _register_int4_tile_gemm_add_norm() -> None:
    """The deferred norm's producer: (scaled, total) like the GEMM's output, ssq float32 [..., n / 16]."""
    import tensorrt as trt
    import tensorrt.plugin as trtp
    from tensorrt.plugin import Tensor as T, TensorDesc as D  # short names for long signatures

    @trtp.register(f"{NAMESPACE}::int4_tile_gemm_add_norm")
    def describe(x: D, qpacked: D, sz: D, residual: D, gamma: D, out_features: int, in_features: int,
                 group_size: int, swiglu: int, epsilon: float, max_deferred_rows: int) -> tuple[D, D, D]:
        lead = list(x.shape_expr)[:-1]
        out = trtp.from_shape_expr((*lead, out_features), dtype=x.dtype)
        ssq = trtp.from_shape_expr((*lead, num_tiles(out_features)), dtype=trt.DataType.FLOAT)
        return out, trtp.from_shape_expr((*lead, out_features), dtype=x.dtype), ssq

    @trtp.impl(f"{NAMESPACE}::int4_tile_gemm_add_norm")
    def run(x: T, qpacked: T, sz: T, residual: T, gamma: T, out_features: int, in_features: int,
            group_size: int, swiglu: int, epsilon: float, max_deferred_rows: int, outputs: tuple[T, T, T],
            stream: int) -> None:
        fields = dict(out_features=out_features, in_features=in_features, group_size=group_size,
                      swiglu=bool(swiglu), epsilon=epsilon, max_deferred_rows=max_deferred_rows)
        run_plugin("trtdsl.int4_tile_gemm_add_norm", [x, qpacked, sz, residual, gamma], fields, outputs, stream)


def _register_int4_tile_gemm_normed() -> None:
    """The deferred norm's consumer: the tile GEMM's output."""
    import tensorrt.plugin as trtp
    from tensorrt.plugin import Tensor as T, TensorDesc as D  # short names for long signatures

    @trtp.register(f"{NAMESPACE}::int4_tile_gemm_normed")
    def describe(x: D, qpacked: D, sz: D, ssq: D, out_features: int, in_features: int, group_size: int,
                 swiglu: int, epsilon: float, max_deferred_rows: int) -> D:
        return trtp.from_shape_expr((*list(x.shape_expr)[:-1], out_features), dtype=x.dtype)

    @trtp.impl(f"{NAMESPACE}::int4_tile_gemm_normed")
    def run(x: T, qpacked: T, sz: T, ssq: T, out_features: int, in_features: int, group_size: int, swiglu: int,
            epsilon: float, max_deferred_rows: int, outputs: tuple[T], stream: int) -> None:
        fields = dict(out_features=out_features, in_features=in_features, group_size=group_size,
                      swiglu=bool(swiglu), epsilon=epsilon, max_deferred_rows=max_deferred_rows)
        run_plugin("trtdsl.int4_tile_gemm_normed", [x, qpacked, sz, ssq], fields, outputs, stream)


def _register_fp8_gemm() -> None:
    """FP8 with a static (calibrated) per-tensor activation scale."""
    import tensorrt.plugin as trtp
    from tensorrt.plugin import Tensor as T, TensorDesc as D  # short names for long signatures

    @trtp.register(f"{NAMESPACE}::fp8_gemm")
    def describe(x: D, weight: D, weight_scale: D, input_scale: D) -> D:
        return _gemm_desc(x, weight)

    @trtp.impl(f"{NAMESPACE}::fp8_gemm")
    def run(x: T, weight: T, weight_scale: T, input_scale: T, outputs: tuple[T], stream: int) -> None:
        run_plugin("trtdsl.fp8_gemm", [x, weight, weight_scale, input_scale], {}, outputs, stream)


def _register_fp8_gemm_dynamic() -> None:
    """FP8 with per-token activation scales computed at run time (``fp8_dynamic=True``)."""
    import tensorrt.plugin as trtp
    from tensorrt.plugin import Tensor as T, TensorDesc as D  # short names for long signatures

    @trtp.register(f"{NAMESPACE}::fp8_gemm_dynamic")
    def describe(x: D, weight: D, weight_scale: D) -> D:
        return _gemm_desc(x, weight)

    @trtp.impl(f"{NAMESPACE}::fp8_gemm_dynamic")
    def run(x: T, weight: T, weight_scale: T, outputs: tuple[T], stream: int) -> None:
        run_plugin("trtdsl.fp8_gemm", [x, weight, weight_scale], {}, outputs, stream)


def _register_int8_gemm() -> None:
    import tensorrt.plugin as trtp
    from tensorrt.plugin import Tensor as T, TensorDesc as D  # short names for long signatures

    @trtp.register(f"{NAMESPACE}::int8_gemm")
    def describe(x: D, weight: D, weight_scale: D) -> D:
        return _gemm_desc(x, weight)

    @trtp.impl(f"{NAMESPACE}::int8_gemm")
    def run(x: T, weight: T, weight_scale: T, outputs: tuple[T], stream: int) -> None:
        run_plugin("trtdsl.int8_gemm", [x, weight, weight_scale], {}, outputs, stream)


#: TensorRT plugin name -> the function registering it (every PluginSignature.qdp_name has one).
REGISTRARS: dict[str, Callable[[], None]] = {
    "attention": _register_attention, "attention_quant_kv": _register_attention_quant_kv,
    "attention_quant_kv_centered": _register_attention_quant_kv_centered,
    "weight_only_gemm": _register_weight_only_gemm,
    "weight_only_gemm_zeros": _register_weight_only_gemm_zeros,
    "fp8_gemm": _register_fp8_gemm, "fp8_gemm_dynamic": _register_fp8_gemm_dynamic,
    "int8_gemm": _register_int8_gemm, "int4_tile_gemm": _register_int4_tile_gemm,
    "int4_tile_gemm_add_norm": _register_int4_tile_gemm_add_norm,
    "int4_tile_gemm_normed": _register_int4_tile_gemm_normed,
}


def register_tensorrt_plugins() -> None:
    """Register every trtdsl TensorRT plugin (needed to build and to deserialize engines).

    TensorRT's plugin registry is process-global, so this checks it and registers only what is
    missing (calling it again is free)."""
    require_tensorrt()
    for qdp_name, registrar in REGISTRARS.items():
        if not _is_registered(qdp_name):
            registrar()


def _is_registered(qdp_name: str) -> bool:
    import tensorrt.plugin as trtp
    try:
        getattr(getattr(trtp.op, NAMESPACE), qdp_name)
    except AttributeError:
        return False
    return True
