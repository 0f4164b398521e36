"""Plugins that lower to native TensorRT layers instead of a TensorRT plugin.

The fusion passes (``trtdsl/passes/fused_plugins.py``) pack chains of layers into one plugin layer
for backends without a fusing compiler. TensorRT fuses pointwise chains and norms itself, so here the
chain is unpacked again into its original layers, which TensorRT can then fuse with their neighbours
too (an opaque plugin would block that).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ...dtypes import DType
from ...errors import BackendError
from ...ir.network import Layer, LayerKind
from .context import LoweringContext
from .emitters import EMITTERS, Emitter, cast_to, rms_norm_f32
from .fp8_act_lowering import lower_add_rms_norm_fp8, lower_attention_fp8, lower_rms_norm_fp8, lower_swiglu_fp8

if TYPE_CHECKING:
    import tensorrt as trt
else:
    from ._trt import trt

__all__ = ["NATIVE_PLUGIN_LOWERINGS"]

_POINTWISE_KINDS = {LayerKind.ELEMENTWISE, LayerKind.UNARY, LayerKind.ACTIVATION, LayerKind.CAST,
                    LayerKind.SELECT}


def lower_pointwise(ctx: LoweringContext, layer: Layer, ins: list[trt.ITensor]) -> list[trt.ITensor]:
    """``trtdsl.pointwise``: run the program's steps as the layers they were fused from."""
    results: list[trt.ITensor] = []
    for i, step in enumerate(layer.attrs["fields"]["program"]):
        kind = LayerKind(step["kind"])
        if kind not in _POINTWISE_KINDS:
            raise BackendError(f"TensorRT lowering: pointwise layer {layer.name!r} step {i} has kind "
                               f"{kind.value!r}, which is not a pointwise kind")
        step_layer = Layer(kind, f"{layer.name}/step{i}", [], [], dict(step["attrs"]), layer.module_path)
        args = [ins[j] if src == "in" else results[j] for src, j in step["args"]]
        results.append(EMITTERS[kind](ctx, step_layer, args)[0])
    return [results[-1]]


def lower_add_rms_norm(ctx: LoweringContext, layer: Layer, ins: list[trt.ITensor]) -> list[trt.ITensor]:
    """``trtdsl.add_rms_norm``: ``total = a + b`` then RMSNorm(total) * weight; outputs both."""
    fields = layer.attrs["fields"]
    total = ctx.finish(ctx.network.add_elementwise(ins[0], ins[1], trt.ElementWiseOperation.SUM),
                       layer, "add").get_output(0)
    x_dtype = layer.inputs[0].dtype
    xf = cast_to(ctx, total, DType.float32, layer, "x_f32")
    normed = rms_norm_f32(ctx, layer, xf, ins[2], x_dtype, tuple(fields["axes"]), float(fields["epsilon"]))
    return [normed, total]


def lower_swiglu(ctx: LoweringContext, layer: Layer, ins: list[trt.ITensor]) -> list[trt.ITensor]:
    """``trtdsl.swiglu``: the slices, sigmoid and products ``F.swiglu`` was fused from."""
    x = layer.inputs[0]
    rank, width = len(x.shape), x.shape[-1]
    if not isinstance(width, int):
        raise BackendError(f"TensorRT lowering: swiglu layer {layer.name!r} needs a static last dim")
    half = width // 2
    size = tuple(x.shape[:-1]) + (half,)

    def step(kind: LayerKind, name: str, attrs: dict[str, Any], args: list[trt.ITensor]) -> trt.ITensor:
        return EMITTERS[kind](ctx, Layer(kind, f"{layer.name}/{name}", [], [], attrs, layer.module_path), args)[0]

    def halve(offset: int, name: str) -> trt.ITensor:
        return step(LayerKind.SLICE, name, {"start": (0,) * (rank - 1) + (offset,), "size": size,
                                            "stride": (1,) * rank, "mode": "default", "dynamic": ()}, [ins[0]])
    gate, up = halve(0, "gate"), halve(half, "up")
    sig = step(LayerKind.ACTIVATION, "sigmoid", {"op": "sigmoid"}, [gate])
    silu = step(LayerKind.ELEMENTWISE, "silu", {"op": "prod"}, [gate, sig])
    return [step(LayerKind.ELEMENTWISE, "mul", {"op": "prod"}, [silu, up])]


NATIVE_PLUGIN_LOWERINGS: dict[str, Emitter] = {
    "trtdsl.pointwise": lower_pointwise,
    "trtdsl.add_rms_norm": lower_add_rms_norm,
    "trtdsl.swiglu": lower_swiglu,
    # the same, then an FP8 quantize layer (trtdsl/passes/fp8_act_fuse.py)
    "trtdsl.rms_norm_fp8": lower_rms_norm_fp8,
    "trtdsl.add_rms_norm_fp8": lower_add_rms_norm_fp8,
    "trtdsl.swiglu_fp8": lower_swiglu_fp8,
    "trtdsl.attention_fp8": lower_attention_fp8,  # the attention's TensorRT plugin, then the quantize layer
    "trtdsl.attention_quant_kv_fp8": lower_attention_fp8,
}
