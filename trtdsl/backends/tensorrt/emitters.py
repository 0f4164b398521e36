"""One TensorRT emitter per IR layer kind: ``EMITTERS[kind](ctx, layer, inputs) -> outputs``.

The semantics are those of ``trtdsl/backends/torch_layers.py`` (the torch executor), written with
TensorRT 11 layers in a strongly typed network: every output has the IR's dtype, and the only
precision changes are the IR's explicit casts plus the float32 compute of norms that the reference
also does. ``tests/backend_tensorrt/test_coverage.py`` fails when a layer kind has no emitter.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch

from ...dtypes import DType
from ...errors import BackendError
from ...ir.network import Layer, LayerKind
from .context import LoweringContext, is_static_dims, static_dims
from ._trt import trt_dtype

if TYPE_CHECKING:
    import tensorrt as trt
else:
    from ._trt import trt

__all__ = ["EMITTERS", "Emitter", "cast_to", "rms_norm_f32"]

Emitter = Callable[[LoweringContext, Layer, list["trt.ITensor"]], list["trt.ITensor"]]

# IR op names -> TensorRT enum member names (resolved lazily: tensorrt may be absent at import).
_ELEMENTWISE = {"sum": "SUM", "sub": "SUB", "prod": "PROD", "div": "DIV", "pow": "POW", "max": "MAX",
                "min": "MIN", "floor_div": "FLOOR_DIV", "equal": "EQUAL", "less": "LESS",
                "greater": "GREATER", "and": "AND", "or": "OR", "xor": "XOR"}
_UNARY = {"exp": "EXP", "log": "LOG", "sqrt": "SQRT", "recip": "RECIP", "abs": "ABS", "neg": "NEG",
          "sin": "SIN", "cos": "COS", "erf": "ERF", "floor": "FLOOR", "ceil": "CEIL", "round": "ROUND",
          "not": "NOT", "sign": "SIGN"}
_ACTIVATION = {"relu": "RELU", "sigmoid": "SIGMOID", "tanh": "TANH", "gelu_erf": "GELU_ERF",
               "gelu_tanh": "GELU_TANH", "leaky_relu": "LEAKY_RELU", "softplus": "SOFTPLUS",
               "clip": "CLIP"}
_REDUCE = {"sum": "SUM", "avg": "AVG", "max": "MAX", "min": "MIN", "prod": "PROD"}


def _op_name(table: dict[str, str], layer: Layer) -> str:
    op = layer.attrs["op"]
    if op not in table:
        raise BackendError(f"TensorRT lowering: layer {layer.name!r} ({layer.kind.value}) has op "
                           f"{op!r}, which has no TensorRT equivalent here (known: {sorted(table)})")
    return table[op]


def _outputs(trt_layer: trt.ILayer, layer: Layer) -> list[trt.ITensor]:
    # Native layers have exactly the IR layer's outputs (fused steps carry no IR output tensors).
    return [trt_layer.get_output(i) for i in range(trt_layer.num_outputs)]


def _axes_mask(axes: tuple[int, ...] | list[int]) -> int:
    mask = 0
    for a in axes:
        mask |= 1 << a
    return mask


def cast_to(ctx: LoweringContext, x: trt.ITensor, to: DType, layer: Layer, suffix: str) -> trt.ITensor:
    if x.dtype == trt_dtype(to):
        return x
    return ctx.finish(ctx.network.add_cast(x, trt_dtype(to)), layer, suffix).get_output(0)


# -- simple one-to-one kinds -----------------------------------------------------------------------------
def emit_constant(ctx: LoweringContext, layer: Layer, ins: list[trt.ITensor]) -> list[trt.ITensor]:
    out = layer.outputs[0]
    shape = [int(d) for d in out.shape]
    return [ctx.constant(layer.attrs["value"], out.dtype, shape, layer.name)]


def emit_cast(ctx: LoweringContext, layer: Layer, ins: list[trt.ITensor]) -> list[trt.ITensor]:
    return _outputs(ctx.finish(ctx.network.add_cast(ins[0], trt_dtype(layer.attrs["to"])), layer), layer)


def emit_identity(ctx: LoweringContext, layer: Layer, ins: list[trt.ITensor]) -> list[trt.ITensor]:
    return _outputs(ctx.finish(ctx.network.add_identity(ins[0]), layer), layer)


def emit_elementwise(ctx: LoweringContext, layer: Layer, ins: list[trt.ITensor]) -> list[trt.ITensor]:
    op = getattr(trt.ElementWiseOperation, _op_name(_ELEMENTWISE, layer))
    return _outputs(ctx.finish(ctx.network.add_elementwise(ins[0], ins[1], op), layer), layer)


def emit_unary(ctx: LoweringContext, layer: Layer, ins: list[trt.ITensor]) -> list[trt.ITensor]:
    op = getattr(trt.UnaryOperation, _op_name(_UNARY, layer))
    return _outputs(ctx.finish(ctx.network.add_unary(ins[0], op), layer), layer)


def emit_activation(ctx: LoweringContext, layer: Layer, ins: list[trt.ITensor]) -> list[trt.ITensor]:
    kind = _op_name(_ACTIVATION, layer)
    act = ctx.network.add_activation(ins[0], getattr(trt.ActivationType, kind))
    a = layer.attrs
    if kind == "SOFTPLUS":
        # TensorRT: alpha*log(exp(beta*x)+1); the reference: alpha*(1/beta)*log(1+exp(beta*x)).
        act.alpha, act.beta = float(a["alpha"]) / float(a["beta"]), float(a["beta"])
    elif kind in ("LEAKY_RELU", "CLIP"):
        act.alpha = float(a["alpha"])
        if kind == "CLIP":
            act.beta = float(a["beta"])
    return _outputs(ctx.finish(act, layer), layer)


def emit_matmul(ctx: LoweringContext, layer: Layer, ins: list[trt.ITensor]) -> list[trt.ITensor]:
    mo = trt.MatrixOperation
    op0 = mo.TRANSPOSE if layer.attrs["transpose_a"] else mo.NONE
    op1 = mo.TRANSPOSE if layer.attrs["transpose_b"] else mo.NONE
    return _outputs(ctx.finish(ctx.network.add_matrix_multiply(ins[0], op0, ins[1], op1), layer), layer)


def emit_reduce(ctx: LoweringContext, layer: Layer, ins: list[trt.ITensor]) -> list[trt.ITensor]:
    axes = tuple(layer.attrs["axes"])
    if not axes:  # the reference returns the input unchanged
        return emit_identity(ctx, layer, ins)
    op = getattr(trt.ReduceOperation, _op_name(_REDUCE, layer))
    red = ctx.network.add_reduce(ins[0], op, _axes_mask(axes), bool(layer.attrs["keep_dims"]))
    return _outputs(ctx.finish(red, layer), layer)


def emit_softmax(ctx: LoweringContext, layer: Layer, ins: list[trt.ITensor]) -> list[trt.ITensor]:
    """Softmax in float32, cast back (what the reference computes for half-precision inputs)."""
    x_dtype = layer.inputs[0].dtype
    sm = ctx.network.add_softmax(cast_to(ctx, ins[0], DType.float32, layer, "x_f32"))
    sm.axes = 1 << int(layer.attrs["axis"])
    out = ctx.finish(sm, layer, "" if x_dtype is DType.float32 else "softmax").get_output(0)
    return [cast_to(ctx, out, x_dtype, layer, "cast_back")]


def emit_concatenation(ctx: LoweringContext, layer: Layer, ins: list[trt.ITensor]) -> list[trt.ITensor]:
    cat = ctx.network.add_concatenation(ins)
    cat.axis = int(layer.attrs["axis"])
    return _outputs(ctx.finish(cat, layer), layer)


def emit_gather(ctx: LoweringContext, layer: Layer, ins: list[trt.ITensor]) -> list[trt.ITensor]:
    axis = int(layer.attrs["axis"])
    if layer.attrs["mode"] == "elements":
        g = ctx.network.add_gather_v2(ins[0], ins[1], trt.GatherMode.ELEMENT)
        g.axis = axis
    else:
        g = ctx.network.add_gather(ins[0], ins[1], axis)
    return _outputs(ctx.finish(g, layer), layer)


def emit_select(ctx: LoweringContext, layer: Layer, ins: list[trt.ITensor]) -> list[trt.ITensor]:
    return _outputs(ctx.finish(ctx.network.add_select(ins[0], ins[1], ins[2]), layer), layer)


def emit_shape(ctx: LoweringContext, layer: Layer, ins: list[trt.ITensor]) -> list[trt.ITensor]:
    return _outputs(ctx.finish(ctx.network.add_shape(ins[0]), layer), layer)  # int64, as in the IR


def emit_topk(ctx: LoweringContext, layer: Layer, ins: list[trt.ITensor]) -> list[trt.ITensor]:
    op = trt.TopKOperation.MAX if layer.attrs["op"] == "max" else trt.TopKOperation.MIN
    topk = ctx.network.add_topk(ins[0], op, int(layer.attrs["k"]), 1 << int(layer.attrs["axis"]),
                                trt.DataType.INT32)  # the IR's index type
    return _outputs(ctx.finish(topk, layer), layer)


def emit_cumsum(ctx: LoweringContext, layer: Layer, ins: list[trt.ITensor]) -> list[trt.ITensor]:
    axis = ctx.constant(torch.tensor(int(layer.attrs["axis"]), dtype=torch.int32), DType.int32, [],
                        f"{layer.name}/axis")
    cum = ctx.network.add_cumulative(ins[0], axis, trt.CumulativeOperation.SUM,
                                     bool(layer.attrs["exclusive"]), bool(layer.attrs["reverse"]))
    return _outputs(ctx.finish(cum, layer), layer)


# -- shape-carrying kinds --------------------------------------------------------------------------------
def emit_shuffle(ctx: LoweringContext, layer: Layer, ins: list[trt.ITensor]) -> list[trt.ITensor]:
    a = layer.attrs
    shuffle = ctx.network.add_shuffle(ins[0])
    if a["first_transpose"] is not None:
        shuffle.first_transpose = trt.Permutation(list(a["first_transpose"]))
    dims = a["reshape_dims"]
    if dims is not None:
        shuffle.zero_is_placeholder = False  # a 0 in the IR is a real zero-size dim, never "copy"
        if is_static_dims(dims):
            shuffle.reshape_dims = trt.Dims(static_dims(dims))
        else:  # symbolic dims: a shape tensor computed from the inputs' shapes at run time
            shuffle.set_input(1, ctx.shape_tensor(dims))
    if a["second_transpose"] is not None:
        shuffle.second_transpose = trt.Permutation(list(a["second_transpose"]))
    return _outputs(ctx.finish(shuffle, layer), layer)


def emit_slice(ctx: LoweringContext, layer: Layer, ins: list[trt.ITensor]) -> list[trt.ITensor]:
    a = layer.attrs
    dynamic = list(a["dynamic"])
    params = {"start": a["start"], "size": a["size"], "stride": a["stride"]}
    # Placeholders for the dims that come from tensors (replaced by set_input below).
    static = {k: trt.Dims([int(d) if isinstance(d, int) else 0 for d in v]) for k, v in params.items()}
    sl = ctx.network.add_slice(ins[0], static["start"], static["size"], static["stride"])
    sl.mode = trt.SampleMode.WRAP if a["mode"] == "wrap" else trt.SampleMode.STRICT_BOUNDS
    for index, key in ((1, "start"), (2, "size"), (3, "stride")):
        if key in dynamic:  # run-time bounds: the IR passes them as int64 [rank] inputs
            sl.set_input(index, ins[1 + dynamic.index(key)])
        elif not is_static_dims(params[key]):
            sl.set_input(index, ctx.shape_tensor(params[key]))
    return _outputs(ctx.finish(sl, layer), layer)


def emit_fill(ctx: LoweringContext, layer: Layer, ins: list[trt.ITensor]) -> list[trt.ITensor]:
    """``linspace`` fills (arange, full): LINSPACE supports int32/int64/float32 outputs; other dtypes
    are filled in the nearest of those and cast (exact for the values arange/full produce)."""
    a = layer.attrs
    out_dtype: DType = a["dtype"]
    shape = tuple(a["shape"])
    fill_dtype = (DType.float32 if out_dtype.is_float else
                  out_dtype if out_dtype in (DType.int32, DType.int64) else DType.int32)
    fill = ctx.network.add_fill(trt.Dims([int(d) if isinstance(d, int) else 0 for d in shape]),
                                trt.FillOperation.LINSPACE, trt_dtype(fill_dtype))
    # Start and deltas as tensors of the fill's own type: valid for static and dynamic shapes alike.
    start = torch.tensor(a["alpha"], dtype=fill_dtype.torch)
    deltas = torch.tensor([float(b) if fill_dtype.is_float else int(b) for b in a["beta"]],
                          dtype=fill_dtype.torch)
    fill.set_input(0, ctx.shape_tensor(shape))
    fill.set_input(1, ctx.constant(start, fill_dtype, [], f"{layer.name}/start"))
    fill.set_input(2, ctx.constant(deltas, fill_dtype, [len(shape)], f"{layer.name}/delta"))
    out = ctx.finish(fill, layer).get_output(0)
    return [cast_to(ctx, out, out_dtype, layer, "cast")]


def emit_normalization(ctx: LoweringContext, layer: Layer, ins: list[trt.ITensor]) -> list[trt.ITensor]:
    """Norms computed in float32 like the reference (Hugging Face order for RMSNorm: normalize in
    float32, cast to the input dtype, then scale in the input dtype)."""
    x_dtype = layer.inputs[0].dtype
    axes = tuple(layer.attrs["axes"])
    eps = float(layer.attrs["epsilon"])
    xf = cast_to(ctx, ins[0], DType.float32, layer, "x_f32")
    if layer.attrs["kind"] == "rms":
        return [rms_norm_f32(ctx, layer, xf, ins[1], x_dtype, axes, eps)]
    scale = cast_to(ctx, ins[1], DType.float32, layer, "scale_f32")
    bias = cast_to(ctx, ins[2], DType.float32, layer, "bias_f32")
    norm = ctx.network.add_normalization_v2(xf, scale, bias, _axes_mask(axes))
    norm.epsilon = eps
    out = ctx.finish(norm, layer, "norm").get_output(0)
    return [cast_to(ctx, out, x_dtype, layer, "cast_back")]


def rms_norm_f32(ctx: LoweringContext, layer: Layer, xf: trt.ITensor, scale: trt.ITensor, x_dtype: DType,
              axes: tuple[int, ...], eps: float) -> trt.ITensor:
    net, ew = ctx.network, trt.ElementWiseOperation
    rank = layer.inputs[0].ndim
    sq = ctx.finish(net.add_elementwise(xf, xf, ew.PROD), layer, "square").get_output(0)
    mean = ctx.finish(net.add_reduce(sq, trt.ReduceOperation.AVG, _axes_mask(axes), True),
                      layer, "mean").get_output(0)
    eps_t = ctx.constant(torch.full([1] * rank, eps, dtype=torch.float32), DType.float32, [1] * rank,
                         f"{layer.name}/eps")
    var = ctx.finish(net.add_elementwise(mean, eps_t, ew.SUM), layer, "var_eps").get_output(0)
    root = ctx.finish(net.add_unary(var, trt.UnaryOperation.SQRT), layer, "sqrt").get_output(0)
    inv = ctx.finish(net.add_unary(root, trt.UnaryOperation.RECIP), layer, "rsqrt").get_output(0)
    normed = ctx.finish(net.add_elementwise(xf, inv, ew.PROD), layer, "normed").get_output(0)
    normed = cast_to(ctx, normed, x_dtype, layer, "cast_back")
    return ctx.finish(net.add_elementwise(scale, normed, ew.PROD), layer, "scale").get_output(0)


# -- explicit quantization -------------------------------------------------------------------------------
def _qdq_scale(ctx: LoweringContext, layer: Layer, scale: trt.ITensor,
               scale_dtype: DType) -> tuple[trt.ITensor, int | None, list[int] | None]:
    """The scale in the form TensorRT's Q/DQ layers take, plus the quantization axis or block shape.

    The reference broadcasts ``x / scale`` like torch, so a 1-element scale is per-tensor (a 0-d
    scale for TensorRT), a 1-D ``[n]`` scale runs along the last axis, and a full-rank scale with
    one non-1 dim is per-channel along it; any other full-rank scale is block-wise."""
    x_ir, s_ir = layer.inputs[0], layer.inputs[1]
    scale = cast_to(ctx, scale, scale_dtype, layer, "scale_cast")
    dims = [d for d in s_ir.shape]
    if not is_static_dims(dims) or not is_static_dims(x_ir.shape):  # per-channel axes must be known
        raise BackendError(f"TensorRT lowering: Q/DQ layer {layer.name!r} needs static input and "
                           f"scale shapes, got {x_ir.shape} and {s_ir.shape}")
    numel = int(torch.tensor([int(d) for d in dims]).prod().item()) if dims else 1
    non_one = [i for i, d in enumerate(dims) if d != 1]
    if numel == 1:
        shuffle = ctx.finish(ctx.network.add_shuffle(scale), layer, "scale_scalar")
        shuffle.reshape_dims = trt.Dims([])
        return shuffle.get_output(0), None, None
    if len(dims) == 1:
        return scale, x_ir.ndim - 1, None
    if len(dims) == x_ir.ndim and len(non_one) == 1:
        shuffle = ctx.finish(ctx.network.add_shuffle(scale), layer, "scale_vector")
        shuffle.reshape_dims = trt.Dims([numel])
        return shuffle.get_output(0), non_one[0], None
    if len(dims) == x_ir.ndim:
        return scale, None, [int(x) // int(s) for x, s in zip(x_ir.shape, dims)]
    raise BackendError(f"TensorRT lowering: Q/DQ layer {layer.name!r}: scale shape {s_ir.shape} does "
                       f"not fit input shape {x_ir.shape} (per-tensor, per-channel or block-wise)")


def emit_quantize(ctx: LoweringContext, layer: Layer, ins: list[trt.ITensor]) -> list[trt.ITensor]:
    to: DType = layer.attrs["to"]
    scale, axis, block = _qdq_scale(ctx, layer, ins[1], layer.inputs[0].dtype)
    q = ctx.network.add_quantize(ins[0], scale, trt_dtype(to))  # explicit output type (strongly typed)
    _set_qdq(q, layer, axis, block)
    return _outputs(ctx.finish(q, layer), layer)


def emit_dequantize(ctx: LoweringContext, layer: Layer, ins: list[trt.ITensor]) -> list[trt.ITensor]:
    to: DType = layer.attrs["to"]
    scale, axis, block = _qdq_scale(ctx, layer, ins[1], to)
    dq = ctx.network.add_dequantize(ins[0], scale, trt_dtype(to))
    _set_qdq(dq, layer, axis, block)
    return _outputs(ctx.finish(dq, layer), layer)


def _set_qdq(q: trt.IQuantizeLayer | trt.IDequantizeLayer, layer: Layer, axis: int | None,
             block: list[int] | None) -> None:
    if "axis" in layer.attrs and axis is not None:
        axis = int(layer.attrs["axis"]) % layer.inputs[0].ndim
    if axis is not None:
        q.axis = axis
    if block is not None:
        q.block_shape = trt.Dims(block)


def emit_plugin(ctx: LoweringContext, layer: Layer, ins: list[trt.ITensor]) -> list[trt.ITensor]:
    from .plugins import lower_plugin
    return lower_plugin(ctx, layer, ins)


EMITTERS: dict[LayerKind, Emitter] = {
    LayerKind.CONSTANT: emit_constant, LayerKind.CAST: emit_cast, LayerKind.IDENTITY: emit_identity,
    LayerKind.ELEMENTWISE: emit_elementwise, LayerKind.UNARY: emit_unary,
    LayerKind.ACTIVATION: emit_activation, LayerKind.MATRIX_MULTIPLY: emit_matmul,
    LayerKind.REDUCE: emit_reduce, LayerKind.SOFTMAX: emit_softmax,
    LayerKind.NORMALIZATION: emit_normalization, LayerKind.SHUFFLE: emit_shuffle,
    LayerKind.SLICE: emit_slice, LayerKind.CONCATENATION: emit_concatenation,
    LayerKind.GATHER: emit_gather, LayerKind.SELECT: emit_select, LayerKind.SHAPE: emit_shape,
    LayerKind.FILL: emit_fill, LayerKind.TOPK: emit_topk, LayerKind.CUMSUM: emit_cumsum,
    LayerKind.QUANTIZE: emit_quantize, LayerKind.DEQUANTIZE: emit_dequantize,
    LayerKind.PLUGIN: emit_plugin,
}
