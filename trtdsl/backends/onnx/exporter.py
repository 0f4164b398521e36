"""Lower a :class:`~trtdsl.Network` to an ONNX model (opset 18 by default, 17 also works).

Every layer kind maps to standard ONNX operators with the torch executor's exact semantics
(``trtdsl/backends/torch_layers.py``). Dynamic dims become ``dim_param`` names on the graph inputs;
a symbolic dim used inside the graph (a reshape to ``[2*batch, 64]``) is rebuilt from ``Shape`` of the
input (or layer output) it comes from, with ``Mul``/``Add``/``Div`` arithmetic on int64 tensors.

The fusion plugins of ``trtdsl.passes`` are inlined as standard ops. Any other plugin becomes one
node of the custom domain ``trtdsl`` (op type: the plugin name without ``trtdsl.``; attributes: the
plugin fields) — see docs/cli.md; such a model checks and inspects, but runs only where a runtime
provides the op (build with ``attention_backend="composite"`` for a plugin-free model).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

import onnx
import torch
from onnx import TensorProto, helper

from ...dtypes import DType
from ...errors import BackendError
from ...ir.network import Layer, LayerKind, Network, Tensor
from ...ir.symbolic import SymDim

__all__ = ["export_onnx", "to_onnx_model", "ONNX_DTYPES", "CUSTOM_DOMAIN"]

CUSTOM_DOMAIN = "trtdsl"
ONNX_DTYPES: dict[DType, int] = {
    DType.float32: TensorProto.FLOAT, DType.float16: TensorProto.FLOAT16, DType.bfloat16: TensorProto.BFLOAT16,
    DType.fp8: TensorProto.FLOAT8E4M3FN, DType.int8: TensorProto.INT8, DType.int4: TensorProto.INT8,
    DType.int32: TensorProto.INT32, DType.int64: TensorProto.INT64, DType.bool: TensorProto.BOOL,
}
_BINARY = {"sum": "Add", "sub": "Sub", "prod": "Mul", "div": "Div", "pow": "Pow", "max": "Max", "min": "Min",
           "equal": "Equal", "less": "Less", "greater": "Greater", "and": "And", "or": "Or", "xor": "Xor"}
_UNARY = {"exp": "Exp", "log": "Log", "sqrt": "Sqrt", "recip": "Reciprocal", "abs": "Abs", "neg": "Neg",
          "sin": "Sin", "cos": "Cos", "erf": "Erf", "floor": "Floor", "ceil": "Ceil", "round": "Round",
          "not": "Not", "sign": "Sign"}
_REDUCE = {"sum": "ReduceSum", "avg": "ReduceMean", "max": "ReduceMax", "min": "ReduceMin", "prod": "ReduceProd"}


class _Exporter:
    """Accumulates nodes and initializers; one ``_emit_<kind>`` method per layer kind."""

    def __init__(self, net: Network, opset: int):
        self.net = net
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._count = 0
        self._dims: dict[Any, str] = {}
        self.names: dict[int, str] = {id(t): t.name for t in net.inputs.values()}
        self.uses_custom = False
        self.current = ""  # the layer being lowered: ONNX node names carry it (polygraphy shows them)

    # -- helpers -----------------------------------------------------------------------------------
    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"_onnx/{hint}_{self._count}"

    def node(self, op: str, inputs: list[str], n_out: int = 1, outputs: list[str] | None = None,
             domain: str = "", **attrs: Any) -> list[str]:
        outs = outputs or [self.fresh(op.lower()) for _ in range(n_out)]
        self._count += 1
        name = f"{self.current}/{op}_{self._count}" if self.current else self.fresh(op)
        self.nodes.append(helper.make_node(op, inputs, outs, name=name, domain=domain, **attrs))
        return outs

    def one(self, op: str, inputs: list[str], out: str | None = None, **attrs: Any) -> str:
        return self.node(op, inputs, outputs=[out] if out else None, **attrs)[0]

    def const(self, value: Any, dtype: DType | None = None, name: str | None = None) -> str:
        t = value if isinstance(value, torch.Tensor) else torch.tensor(value)
        if dtype is not None:
            t = t.to(dtype.torch)
        name = name or self.fresh("const")
        dt = ONNX_DTYPES[dtype] if dtype is not None else _TORCH_ONNX[t.dtype]
        raw = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        self.inits.append(helper.make_tensor(name, dt, list(t.shape), raw, raw=True))
        return name

    def i64(self, values: list[int]) -> str:
        return self.const(torch.tensor(values, dtype=torch.int64))

    def dim(self, d: Any) -> str:
        """An int64 ``[1]`` tensor holding dim ``d`` (an int or a SymDim) at run time."""
        if isinstance(d, int):
            return self.i64([d])
        key = repr(d)
        if key not in self._dims:
            total: str | None = None
            for mono, coeff in d.terms:
                term: str | None = self.i64([coeff]) if coeff != 1 or not mono else None
                for atom in mono:
                    value = self._atom(atom)
                    term = value if term is None else self.one("Mul", [term, value])
                assert term is not None
                total = term if total is None else self.one("Add", [total, term])
            assert total is not None
            self._dims[key] = total
        return self._dims[key]

    def _atom(self, atom: Any) -> str:
        if not isinstance(atom, str):
            return self.one("Div", [self.dim(atom[1]), self.i64([atom[2]])])
        if atom in self._dims:
            return self._dims[atom]
        src = self.net.symbol_sources.get(atom)
        if src is None:
            raise BackendError(f"onnx export: symbol {atom!r} has no source in network {self.net.name!r}")
        if src[0] == "input":
            tensor_name, axis = self.names[id(self.net.inputs[src[1]])], src[2]
        elif src[0] == "layer_output":
            layer = next(x for x in self.net.layers if x.name == src[1])
            tensor_name, axis = self.names[id(layer.outputs[src[2]])], src[3]
        else:
            raise BackendError(f"onnx export: cannot materialize symbol {atom!r} from source {src!r}")
        self._dims[atom] = self.one("Shape", [tensor_name], start=axis, end=axis + 1)
        return self._dims[atom]

    def shape(self, dims: tuple) -> str:
        if all(isinstance(d, int) for d in dims):
            return self.i64(list(dims))
        return self.one("Concat", [self.dim(d) for d in dims], axis=0)

    def scalar_dim(self, d: Any) -> str:
        return self.one("Reshape", [self.dim(d), self.i64([])])


_TORCH_ONNX = {d.torch: v for d, v in ONNX_DTYPES.items() if d is not DType.int4}
_TORCH_ONNX[torch.float64] = TensorProto.DOUBLE


# -- emitters: (exporter, layer, input names, output names, input dtypes, output dtypes) -> None -----
Emitter = Callable[[_Exporter, Layer, list[str], list[str], list[DType], list[DType]], None]


def _constant(e: _Exporter, layer: Layer, ins: list[str], outs: list[str], it: list, ot: list) -> None:
    e.const(layer.attrs["value"], ot[0], name=outs[0])


def _cast(e: _Exporter, layer: Layer, ins: list[str], outs: list[str], it: list, ot: list) -> None:
    e.one("Cast", ins, outs[0], to=ONNX_DTYPES[ot[0]])


def _identity(e: _Exporter, layer: Layer, ins: list[str], outs: list[str], it: list, ot: list) -> None:
    e.one("Identity", ins[:1], outs[0])


def _elementwise(e: _Exporter, layer: Layer, ins: list[str], outs: list[str], it: list, ot: list) -> None:
    op = layer.attrs["op"]
    if op != "floor_div":
        e.one(_BINARY[op], ins, outs[0])
        return
    a, b = ins
    if it[0].is_float:
        e.one("Floor", [e.one("Div", [a, b])], outs[0])
        return
    # Integer floor division from truncating Div: subtract 1 where the remainder's sign differs.
    q = e.one("Div", [a, b])
    r = e.one("Sub", [a, e.one("Mul", [q, b])])
    zero = e.const(0, it[0])
    nonzero = e.one("Not", [e.one("Equal", [r, zero])])
    signs = e.one("Xor", [e.one("Less", [r, zero]), e.one("Less", [b, zero])])
    fix = e.one("Cast", [e.one("And", [nonzero, signs])], to=ONNX_DTYPES[it[0]])
    e.one("Sub", [q, fix], outs[0])


def _unary(e: _Exporter, layer: Layer, ins: list[str], outs: list[str], it: list, ot: list) -> None:
    e.one(_UNARY[layer.attrs["op"]], ins, outs[0])


def _activation(e: _Exporter, layer: Layer, ins: list[str], outs: list[str], it: list, ot: list) -> None:
    op, x, dt, a = layer.attrs["op"], ins[0], it[0], layer.attrs
    simple = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh"}
    if op in simple:
        e.one(simple[op], [x], outs[0])
    elif op == "gelu_erf":
        inner = e.one("Erf", [e.one("Mul", [x, e.const(1 / math.sqrt(2), dt)])])
        e.one("Mul", [e.one("Mul", [x, e.const(0.5, dt)]), e.one("Add", [inner, e.const(1.0, dt)])], outs[0])
    elif op == "gelu_tanh":
        cube = e.one("Mul", [e.one("Mul", [x, x]), x])
        inner = e.one("Add", [x, e.one("Mul", [cube, e.const(0.044715, dt)])])
        t = e.one("Tanh", [e.one("Mul", [inner, e.const(math.sqrt(2 / math.pi), dt)])])
        e.one("Mul", [e.one("Mul", [x, e.const(0.5, dt)]), e.one("Add", [t, e.const(1.0, dt)])], outs[0])
    elif op == "leaky_relu":
        e.one("LeakyRelu", [x], outs[0], alpha=float(a["alpha"]))
    elif op == "softplus":
        sp = e.one("Softplus", [e.one("Mul", [x, e.const(a["beta"], dt)])])
        e.one("Mul", [sp, e.const(a["alpha"] / a["beta"], dt)], outs[0])
    elif op == "clip":
        lo = "" if a["alpha"] == float("-inf") else e.const(a["alpha"], dt)
        hi = "" if a["beta"] == float("inf") else e.const(a["beta"], dt)
        e.one("Clip", [x, lo, hi], outs[0])
    else:
        raise BackendError(f"onnx export: layer {layer.name!r}: unknown activation {op!r}")


def _matmul(e: _Exporter, layer: Layer, ins: list[str], outs: list[str], it: list, ot: list) -> None:
    a, b = ins
    rank = len(layer.inputs[0].shape) if layer.inputs else 2
    perm = list(range(rank - 2)) + [rank - 1, rank - 2]
    if layer.attrs["transpose_a"]:
        a = e.one("Transpose", [a], perm=perm)
    if layer.attrs["transpose_b"]:
        b = e.one("Transpose", [b], perm=perm)
    e.one("MatMul", [a, b], outs[0])


def _reduce(e: _Exporter, layer: Layer, ins: list[str], outs: list[str], it: list, ot: list) -> None:
    axes = list(layer.attrs["axes"])
    if not axes:
        e.one("Identity", ins, outs[0])
        return
    e.one(_REDUCE[layer.attrs["op"]], [ins[0], e.i64(axes)], outs[0], keepdims=int(layer.attrs["keep_dims"]))


def _softmax(e: _Exporter, layer: Layer, ins: list[str], outs: list[str], it: list, ot: list) -> None:
    x = ins[0] if it[0] is DType.float32 else e.one("Cast", ins, to=TensorProto.FLOAT)
    y = e.one("Softmax", [x], None if it[0] is not DType.float32 else outs[0], axis=layer.attrs["axis"])
    if it[0] is not DType.float32:
        e.one("Cast", [y], outs[0], to=ONNX_DTYPES[it[0]])


def _normalization(e: _Exporter, layer: Layer, ins: list[str], outs: list[str], it: list, ot: list) -> None:
    a, dt = layer.attrs, it[0]
    axes = e.i64(list(a["axes"]))
    xf = ins[0] if dt is DType.float32 else e.one("Cast", [ins[0]], to=TensorProto.FLOAT)
    eps = e.const(float(a["epsilon"]), DType.float32)
    if a["kind"] == "rms":
        ms = e.one("ReduceMean", [e.one("Mul", [xf, xf]), axes], keepdims=1)
        normed = e.one("Mul", [xf, e.one("Reciprocal", [e.one("Sqrt", [e.one("Add", [ms, eps])])])])
        if dt is not DType.float32:
            normed = e.one("Cast", [normed], to=ONNX_DTYPES[dt])
        e.one("Mul", [ins[1], normed], outs[0])  # HF order: cast, then scale in x's dtype
        return
    mean = e.one("ReduceMean", [xf, axes], keepdims=1)
    centered = e.one("Sub", [xf, mean])
    var = e.one("ReduceMean", [e.one("Mul", [centered, centered]), axes], keepdims=1)
    normed = e.one("Mul", [centered, e.one("Reciprocal", [e.one("Sqrt", [e.one("Add", [var, eps])])])])
    f = [n if t is DType.float32 else e.one("Cast", [n], to=TensorProto.FLOAT) for n, t in zip(ins[1:3], it[1:3])]
    y = e.one("Add", [e.one("Mul", [normed, f[0]]), f[1]], None if dt is not DType.float32 else outs[0])
    if dt is not DType.float32:
        e.one("Cast", [y], outs[0], to=ONNX_DTYPES[dt])


def _shuffle(e: _Exporter, layer: Layer, ins: list[str], outs: list[str], it: list, ot: list) -> None:
    a, x = layer.attrs, ins[0]
    steps = [("first", a["first_transpose"]), ("reshape", a["reshape_dims"]), ("second", a["second_transpose"])]
    steps = [(k, v) for k, v in steps if v is not None]
    if not steps:
        e.one("Identity", [x], outs[0])
    for i, (kind, value) in enumerate(steps):
        out = outs[0] if i == len(steps) - 1 else None
        if kind == "reshape":
            x = e.one("Reshape", [x, e.shape(tuple(value))], out, allowzero=1)
        else:
            x = e.one("Transpose", [x], out, perm=list(value))


def _slice(e: _Exporter, layer: Layer, ins: list[str], outs: list[str], it: list, ot: list) -> None:
    a = layer.attrs
    dyn = list(a["dynamic"])

    def vec(key: str) -> str:
        if key in dyn:
            return e.one("Cast", [ins[1 + dyn.index(key)]], to=TensorProto.INT64)
        return e.shape(tuple(a[key]))

    if a["mode"] == "wrap":
        _wrap_slice(e, layer, ins, outs)
        return
    start, size, stride = vec("start"), vec("size"), vec("stride")
    one = e.i64([1])
    ends = e.one("Add", [e.one("Add", [start, e.one("Mul", [e.one("Sub", [size, one]), stride])]), one])
    rank = len(layer.outputs[0].shape) if layer.outputs else len(a["start"])
    e.one("Slice", [ins[0], start, ends, e.i64(list(range(rank))), stride], outs[0])


def _wrap_slice(e: _Exporter, layer: Layer, ins: list[str], outs: list[str]) -> None:
    """``index = (start + arange(size) * stride) % dim`` along every axis that changes."""
    a, x = layer.attrs, ins[0]
    in_shape = layer.inputs[0].shape
    axes = [i for i in range(len(in_shape))
            if not (isinstance(a["start"][i], int) and a["start"][i] == 0 and a["stride"][i] == 1
                    and repr(a["size"][i]) == repr(in_shape[i]))]
    for k, axis in enumerate(axes):
        idx = e.one("Range", [e.const(torch.tensor(0, dtype=torch.int64)), e.scalar_dim(a["size"][axis]),
                              e.const(torch.tensor(1, dtype=torch.int64))])
        idx = e.one("Add", [e.one("Mul", [idx, e.dim(a["stride"][axis])]), e.dim(a["start"][axis])])
        idx = e.one("Mod", [idx, e.dim(in_shape[axis])])
        x = e.one("Gather", [x, idx], outs[0] if k == len(axes) - 1 else None, axis=axis)
    if not axes:
        e.one("Identity", [x], outs[0])


def _concatenation(e: _Exporter, layer: Layer, ins: list[str], outs: list[str], it: list, ot: list) -> None:
    e.one("Concat", ins, outs[0], axis=layer.attrs["axis"])


def _gather(e: _Exporter, layer: Layer, ins: list[str], outs: list[str], it: list, ot: list) -> None:
    op = "GatherElements" if layer.attrs["mode"] == "elements" else "Gather"
    e.one(op, ins, outs[0], axis=layer.attrs["axis"])


def _select(e: _Exporter, layer: Layer, ins: list[str], outs: list[str], it: list, ot: list) -> None:
    e.one("Where", ins, outs[0])


def _shape(e: _Exporter, layer: Layer, ins: list[str], outs: list[str], it: list, ot: list) -> None:
    e.one("Shape", ins, outs[0])


def _fill(e: _Exporter, layer: Layer, ins: list[str], outs: list[str], it: list, ot: list) -> None:
    a = layer.attrs
    shape = tuple(a["shape"])
    if all(isinstance(d, int) for d in shape):
        from ..torch_layers import run_fill
        ctx = {"device": torch.device("cpu")}
        e.const(run_fill(layer, [], {}, ctx)[0], ot[0], name=outs[0])
        return
    is_float = a["dtype"].is_float
    base_dt = torch.float64 if is_float else torch.int64
    out = e.one("Expand", [e.const(torch.tensor(a["alpha"], dtype=base_dt)), e.shape(shape)])
    for axis, delta in enumerate(a["beta"]):
        if delta:
            zero = e.const(torch.tensor(0, dtype=base_dt))
            step = e.const(torch.tensor(1, dtype=base_dt))
            limit = e.one("Cast", [e.scalar_dim(shape[axis])], to=TensorProto.DOUBLE if is_float else TensorProto.INT64)
            ramp = e.one("Mul", [e.one("Range", [zero, limit, step]), e.const(torch.tensor(delta, dtype=base_dt))])
            view = [1] * len(shape)
            view[axis] = -1
            out = e.one("Add", [out, e.one("Reshape", [ramp, e.i64(view)])])
    e.one("Cast", [out], outs[0], to=ONNX_DTYPES[a["dtype"]])


def _topk(e: _Exporter, layer: Layer, ins: list[str], outs: list[str], it: list, ot: list) -> None:
    a = layer.attrs
    if a["k"] == 1:  # first index on ties, like torch.argmax and TensorRT
        idx = e.one("ArgMax" if a["op"] == "max" else "ArgMin", ins, axis=a["axis"], keepdims=1,
                    select_last_index=0)
        e.one("GatherElements", [ins[0], idx], outs[0], axis=a["axis"])
    else:
        _, idx = e.node("TopK", [ins[0], e.i64([a["k"]])], outputs=[outs[0], e.fresh("topk_idx")],
                        axis=a["axis"], largest=int(a["op"] == "max"), sorted=1)
    e.one("Cast", [idx], outs[1], to=TensorProto.INT32)


def _cumsum(e: _Exporter, layer: Layer, ins: list[str], outs: list[str], it: list, ot: list) -> None:
    a = layer.attrs
    e.one("CumSum", [ins[0], e.const(torch.tensor(a["axis"], dtype=torch.int64))], outs[0],
          exclusive=int(a["exclusive"]), reverse=int(a["reverse"]))


def _quantize(e: _Exporter, layer: Layer, ins: list[str], outs: list[str], it: list, ot: list) -> None:
    f = [e.one("Cast", [n], to=TensorProto.FLOAT) for n in ins[:2]]
    q = e.one("Div", f)
    if ot[0] is DType.int8:
        q = e.one("Clip", [e.one("Round", [q]), e.const(-128.0, DType.float32), e.const(127.0, DType.float32)])
    elif ot[0] is DType.fp8:
        q = e.one("Clip", [q, e.const(-448.0, DType.float32), e.const(448.0, DType.float32)])
    e.one("Cast", [q], outs[0], to=ONNX_DTYPES[ot[0]])


def _dequantize(e: _Exporter, layer: Layer, ins: list[str], outs: list[str], it: list, ot: list) -> None:
    f = [e.one("Cast", [n], to=TensorProto.FLOAT) for n in ins[:2]]
    e.one("Cast", [e.one("Mul", f)], outs[0], to=ONNX_DTYPES[ot[0]])


def _plugin(e: _Exporter, layer: Layer, ins: list[str], outs: list[str], it: list, ot: list) -> None:
    from ...passes.fused_plugins import ADD_RMS_NORM, POINTWISE, SWIGLU
    name, fields = layer.attrs["name"], layer.attrs.get("fields", {})
    if name == SWIGLU:
        gate, up = e.node("Split", ins[:1], n_out=2, axis=-1, num_outputs=2)
        e.one("Mul", [e.one("Mul", [gate, e.one("Sigmoid", [gate])]), up], outs[0])
    elif name == POINTWISE:
        _inline_pointwise(e, fields["program"], ins, outs[0], it)
    elif name == ADD_RMS_NORM:
        total = e.one("Add", ins[:2], outs[1])
        norm = Layer(LayerKind.NORMALIZATION, layer.name, [], [],
                     {"kind": "rms", "axes": fields["axes"], "epsilon": fields["epsilon"]})
        _normalization(e, norm, [total, ins[2]], outs[:1], [it[0], it[2]], ot[:1])
    else:
        e.uses_custom = True
        op_type = name.removeprefix("trtdsl.")
        e.node(op_type, ins, outputs=outs, domain=CUSTOM_DOMAIN, **_plugin_attrs(fields))


def _plugin_attrs(fields: dict) -> dict[str, Any]:
    """Plugin fields as ONNX attributes: numbers, strings and number lists as is; anything else
    (DTypes, nested tuples, None) as a JSON string."""
    out: dict[str, Any] = {}
    for k, v in fields.items():
        if isinstance(v, bool):
            out[k] = int(v)
        elif isinstance(v, (int, float, str)):
            out[k] = v
        elif isinstance(v, (list, tuple)) and v and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                        for x in v):
            out[k] = list(v)
        else:
            out[k] = json.dumps(v, default=str)
    return out


def _inline_pointwise(e: _Exporter, program: tuple, ins: list[str], out: str, it: list[DType]) -> None:
    results: list[tuple[str, DType]] = []
    for j, step in enumerate(program):
        kind = LayerKind(step["kind"])
        layer = Layer(kind, f"pointwise_step{j}", [], [], dict(step["attrs"]))
        names = [ins[i] if src == "in" else results[i][0] for src, i in step["args"]]
        dts = [it[i] if src == "in" else results[i][1] for src, i in step["args"]]
        if kind is LayerKind.CAST:
            odt = step["attrs"]["to"]
        elif kind is LayerKind.ELEMENTWISE and step["attrs"]["op"] in ("equal", "less", "greater"):
            odt = DType.bool
        else:
            odt = dts[-1] if kind is LayerKind.SELECT else dts[0]
        name = out if j == len(program) - 1 else e.fresh("pointwise")
        EMITTERS[kind](e, layer, names, [name], dts, [odt])
        results.append((name, odt))


EMITTERS: dict[LayerKind, Emitter] = {
    LayerKind.CONSTANT: _constant, LayerKind.CAST: _cast, LayerKind.IDENTITY: _identity,
    LayerKind.ELEMENTWISE: _elementwise, LayerKind.UNARY: _unary, LayerKind.ACTIVATION: _activation,
    LayerKind.MATRIX_MULTIPLY: _matmul, LayerKind.REDUCE: _reduce, LayerKind.SOFTMAX: _softmax,
    LayerKind.NORMALIZATION: _normalization, LayerKind.SHUFFLE: _shuffle, LayerKind.SLICE: _slice,
    LayerKind.CONCATENATION: _concatenation, LayerKind.GATHER: _gather, LayerKind.SELECT: _select,
    LayerKind.SHAPE: _shape, LayerKind.FILL: _fill, LayerKind.TOPK: _topk, LayerKind.CUMSUM: _cumsum,
    LayerKind.QUANTIZE: _quantize, LayerKind.DEQUANTIZE: _dequantize, LayerKind.PLUGIN: _plugin,
}
assert set(EMITTERS) == set(LayerKind), "every layer kind needs an ONNX emitter"


def _value_info(name: str, t: Tensor | None, dtype: DType, shape: tuple) -> onnx.ValueInfoProto:
    dims: list[Any] = []
    for d in shape:
        if isinstance(d, int):
            dims.append(d)
        elif isinstance(d, str):
            dims.append(d)
        elif isinstance(d, SymDim) and len(d.terms) == 1 and d.terms[0][1] == 1 and len(d.terms[0][0]) == 1 \
                and isinstance(d.terms[0][0][0], str):
            dims.append(d.terms[0][0][0])
        else:
            dims.append(None)
    return helper.make_tensor_value_info(name, ONNX_DTYPES[dtype], dims)


def to_onnx_model(net: Network, opset: int = 18) -> onnx.ModelProto:
    """The ONNX model of ``net`` (inputs and outputs keep their names)."""
    if opset < 17:
        raise BackendError(f"onnx export needs opset >= 17, got {opset}")
    e = _Exporter(net, opset)
    # An output may be named like another tensor ("add"); that tensor gets another ONNX name (SSA).
    reserved = {name for name, t in net.outputs.items() if t.name != name}

    def onnx_name(t: Tensor) -> str:
        return t.name if t.name not in reserved else f"{t.name}/value"

    for layer in net.layers:
        ins = [e.names[id(t)] for t in layer.inputs]
        outs = [onnx_name(t) for t in layer.outputs]
        e.current = layer.name
        try:
            EMITTERS[layer.kind](e, layer, ins, outs, [t.dtype for t in layer.inputs],
                                 [t.dtype for t in layer.outputs])
        except KeyError as exc:
            raise BackendError(f"onnx export: layer {layer.name!r} ({layer.kind.value}, module "
                               f"{layer.module_path or '<root>'!r}) is not supported: {exc}") from None
        for t, n in zip(layer.outputs, outs):
            e.names[id(t)] = n
    outputs = []
    e.current = "output"
    for name, t in net.outputs.items():
        src = e.names[id(t)]
        if src != name:
            e.one("Identity", [src], name)
        outputs.append(_value_info(name, t, t.dtype, t.shape))
    inputs = [_value_info(n, None, s.dtype, tuple(s.shape)) for n, s in net.input_specs.items()]
    graph = helper.make_graph(e.nodes, net.name, inputs, outputs, initializer=e.inits)
    imports = [helper.make_opsetid("", opset)]
    if e.uses_custom:
        imports.append(helper.make_opsetid(CUSTOM_DOMAIN, 1))
    model = helper.make_model(graph, opset_imports=imports, producer_name="trtdsl")
    model.ir_version = min(model.ir_version, 10)  # what current onnxruntime releases read
    return model


def export_onnx(net: Network, path: str | Path, opset: int = 18) -> Path:
    """Export ``net`` to ``path`` and check it with ``onnx.checker`` (custom-domain nodes allowed)."""
    model = to_onnx_model(net, opset)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    big = sum(len(t.raw_data) for t in model.graph.initializer) > (1 << 31) - (1 << 26)
    if big:  # protobuf's 2 GB limit: weights go to a side file
        onnx.save_model(model, str(path), save_as_external_data=True, location=path.name + ".data")
        onnx.checker.check_model(str(path))
    else:
        onnx.checker.check_model(model)
        onnx.save_model(model, str(path))
    return path

