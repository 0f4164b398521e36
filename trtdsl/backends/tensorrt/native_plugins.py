"""Plugins that lower to native TensorRT layers instead of a TensorRT plugin.

The fusion passes (``trtdsl/passes/fused_plugins.py``) pack chains of layers into one plugin layer
for backends without a fusing compiler. TensorRT fuses pointwise chains and norms itself, so here the
chain is unpacked again into its original layers, which TensorRT can then fuse with their neighbours
too (an opaque plugin would block that).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...dtypes import DType
from ...errors import BackendError
from ...ir.network import Layer, LayerKind
from .context import LoweringContext
from .emitters import EMITTERS, Emitter, cast_to, rms_norm_f32

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


NATIVE_PLUGIN_LOWERINGS: dict[str, Emitter] = {
    "trtdsl.pointwise": lower_pointwise,
    "trtdsl.add_rms_norm": lower_add_rms_norm,
}
