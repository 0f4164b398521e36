"""TensorRT lowering of the quantizing norm / SwiGLU / attention plugins of ``trtdsl/passes/fp8_act_fuse.py``
(``trtdsl.rms_norm_fp8``, ``trtdsl.add_rms_norm_fp8``, ``trtdsl.swiglu_fp8``, ``trtdsl.attention_fp8``,
``trtdsl.attention_quant_kv_fp8``):
the unfused layers' lowering (native layers; the attention's TensorRT plugin; a centered input's mean
subtracted by an elementwise layer), then a TensorRT FP8 quantize layer with the per-tensor ``input_scale`` (TensorRT
divides, rounds to nearest even and saturates at +-448, what ``numerics.quantize_fp8`` does), which
TensorRT may fuse into the norm's own kernel.

Not lowered: the GEMM that reads the codes (``trtdsl.fp8_gemm`` with an fp8 ``x`` and the field
``out_dtype``): its TensorRT plugin declares x's dtype as the output's, so ``plan_plugin`` rejects the
field with a BackendError naming the layer and the plugin. The builder's TensorRT backend leaves the
fusion off unless a norm / SwiGLU fusion is forced on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...dtypes import DType
from ...errors import BackendError
from ...ir.network import Layer, LayerKind
from ._trt import trt_dtype
from .context import LoweringContext
from .emitters import EMITTERS

if TYPE_CHECKING:
    import tensorrt as trt
else:
    from ._trt import trt

__all__ = ["lower_rms_norm_fp8", "lower_add_rms_norm_fp8", "lower_swiglu_fp8", "lower_attention_fp8"]


def _to_fp8(ctx: LoweringContext, layer: Layer, value: trt.ITensor, scale: trt.ITensor) -> trt.ITensor:
    """e4m3 codes of ``value / scale`` for the ``[1]`` scale (a 0-d scale: per-tensor for TensorRT)."""
    scalar = ctx.finish(ctx.network.add_shuffle(scale), layer, "scale_scalar")
    scalar.reshape_dims = trt.Dims([])
    q = ctx.network.add_quantize(value, scalar.get_output(0), trt_dtype(DType.fp8))
    return ctx.finish(q, layer, "quantize").get_output(0)


def _part(layer: Layer, kind: LayerKind, n_inputs: int, attrs: dict[str, object]) -> Layer:
    """The unfused layer (same name and module path) the plugin was made from."""
    return Layer(kind, layer.name, list(layer.inputs[:n_inputs]), [], attrs, layer.module_path)


def _centered(ctx: LoweringContext, layer: Layer, normed: trt.ITensor, mean: list[trt.ITensor]) -> trt.ITensor:
    """``normed - mean`` for a centered input's ``[k]`` mean (reshaped to normed's rank), else ``normed``."""
    if not mean:
        return normed
    vector = ctx.finish(ctx.network.add_shuffle(mean[0]), layer, "mean_broadcast")
    vector.reshape_dims = trt.Dims([1] * (len(normed.shape) - 1) + [-1])
    sub = ctx.network.add_elementwise(normed, vector.get_output(0), trt.ElementWiseOperation.SUB)
    return ctx.finish(sub, layer, "center").get_output(0)


def _no_lowrank(layer: Layer, extra: list[trt.ITensor]) -> None:
    """A producer fused with fp8_lowrank's split (mean and basis) has no TensorRT lowering: the GEMMs on
    its codes have none either, so a TensorRT build leaves this fusion off (see above)."""
    if len(extra) > 1:
        raise BackendError(f"layer {layer.name!r} ({layer.attrs['name']}) carries the fp8 low-rank split "
                           f"(QuantConfig.fp8_lowrank), which the TensorRT backend does not lower: build "
                           f"without fuse_fp8_activations, as the TensorRT builder does by default")


def lower_rms_norm_fp8(ctx: LoweringContext, layer: Layer, ins: list[trt.ITensor]) -> list[trt.ITensor]:
    _no_lowrank(layer, ins[3:])
    fields = layer.attrs["fields"]
    norm = _part(layer, LayerKind.NORMALIZATION, 2, {"kind": "rms", "axes": tuple(fields["axes"]),
                                                     "epsilon": fields["epsilon"]})
    (normed,) = EMITTERS[LayerKind.NORMALIZATION](ctx, norm, ins[:2])
    return [_to_fp8(ctx, layer, _centered(ctx, layer, normed, ins[3:]), ins[2])]


def lower_add_rms_norm_fp8(ctx: LoweringContext, layer: Layer, ins: list[trt.ITensor]) -> list[trt.ITensor]:
    from .native_plugins import lower_add_rms_norm  # that module lists this one's functions
    _no_lowrank(layer, ins[4:])
    normed, total = lower_add_rms_norm(ctx, _part(layer, LayerKind.PLUGIN, 3, dict(layer.attrs)), ins[:3])
    return [_to_fp8(ctx, layer, _centered(ctx, layer, normed, ins[4:]), ins[3]), total]


def lower_swiglu_fp8(ctx: LoweringContext, layer: Layer, ins: list[trt.ITensor]) -> list[trt.ITensor]:
    from .native_plugins import lower_swiglu
    _no_lowrank(layer, ins[2:])
    (out,) = lower_swiglu(ctx, _part(layer, LayerKind.PLUGIN, 1, dict(layer.attrs)), ins[:1])
    return [_to_fp8(ctx, layer, out, ins[1])]


# the attention plugin each quantizing one was made from
_ATTENTION_OF = {"trtdsl.attention_fp8": "trtdsl.attention", "trtdsl.attention_quant_kv_fp8": "trtdsl.attention_quant_kv"}


def lower_attention_fp8(ctx: LoweringContext, layer: Layer, ins: list[trt.ITensor]) -> list[trt.ITensor]:
    """``trtdsl.attention_fp8`` / ``trtdsl.attention_quant_kv_fp8``: the attention's plugin, then a quantize."""
    from ...ir.network import Tensor
    from .plugins import lower_plugin
    value = layer.outputs[0]  # fp8 in the IR; the attention plugin itself outputs qkv's dtype
    plain = Tensor(value.name, layer.inputs[0].dtype, value.shape, value.network)
    part = Layer(LayerKind.PLUGIN, layer.name, list(layer.inputs[:-1]), [plain],
                 {**layer.attrs, "name": _ATTENTION_OF[layer.attrs["name"]]}, layer.module_path)
    (out,) = lower_plugin(ctx, part, ins[:-1])
    return [_to_fp8(ctx, layer, out, ins[-1])]
