"""One torch function per IR layer kind: the semantics of every layer, used by the torch executor
(and by tests as the reference for other lowerings). Each takes the layer, its input values and the
symbol environment, and returns the output values."""

from __future__ import annotations

from typing import Any, Callable

import torch

from ..errors import BackendError
from ..ir.network import Layer, LayerKind
from ..ir.symbolic import evaluate

Env = dict[str, int]
LayerFn = Callable[[Layer, list, Env, dict], list]

_ELEMENTWISE: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "sum": torch.add, "sub": torch.sub, "prod": torch.mul, "pow": torch.pow,
    "max": torch.maximum, "min": torch.minimum, "equal": torch.eq, "less": torch.lt,
    "greater": torch.gt, "and": torch.logical_and, "or": torch.logical_or, "xor": torch.logical_xor,
    "floor_div": lambda a, b: torch.div(a, b, rounding_mode="floor"),
}

_UNARY: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "exp": torch.exp, "log": torch.log, "sqrt": torch.sqrt, "recip": torch.reciprocal,
    "abs": torch.abs, "neg": torch.neg, "sin": torch.sin, "cos": torch.cos, "erf": torch.erf,
    "floor": torch.floor, "ceil": torch.ceil, "round": torch.round, "not": torch.logical_not,
    "sign": torch.sign,
}


def _div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if a.dtype.is_floating_point:
        return a / b
    return torch.div(a, b, rounding_mode="trunc")  # TensorRT's integer DIV truncates


def _activation(op: str, x: torch.Tensor, attrs: dict) -> torch.Tensor:
    if op == "relu":
        return torch.relu(x)
    if op == "sigmoid":
        return torch.sigmoid(x)
    if op == "tanh":
        return torch.tanh(x)
    if op == "gelu_erf":
        return torch.nn.functional.gelu(x)
    if op == "gelu_tanh":
        return torch.nn.functional.gelu(x, approximate="tanh")
    if op == "leaky_relu":
        return torch.nn.functional.leaky_relu(x, attrs["alpha"])
    if op == "softplus":
        return attrs["alpha"] * torch.nn.functional.softplus(x, beta=attrs["beta"])
    if op == "clip":
        return torch.clamp(x, attrs["alpha"], attrs["beta"])
    raise BackendError(f"torch executor: unknown activation {op!r}")


def _dims(values: Any, env: Env) -> list[int]:
    return [evaluate(d, env) for d in values]


def run_constant(layer: Layer, ins: list, env: Env, ctx: dict) -> list:
    return [ctx["constants"][layer.name]]


def run_cast(layer: Layer, ins: list, env: Env, ctx: dict) -> list:
    return [ins[0].to(layer.attrs["to"].torch)]


def run_identity(layer: Layer, ins: list, env: Env, ctx: dict) -> list:
    return [ins[0]]


def run_elementwise(layer: Layer, ins: list, env: Env, ctx: dict) -> list:
    op = layer.attrs["op"]
    fn = _div if op == "div" else _ELEMENTWISE[op]
    return [fn(ins[0], ins[1])]


def run_unary(layer: Layer, ins: list, env: Env, ctx: dict) -> list:
    return [_UNARY[layer.attrs["op"]](ins[0])]


def run_activation(layer: Layer, ins: list, env: Env, ctx: dict) -> list:
    return [_activation(layer.attrs["op"], ins[0], layer.attrs)]


def run_matmul(layer: Layer, ins: list, env: Env, ctx: dict) -> list:
    a, b = ins
    if layer.attrs["transpose_a"]:
        a = a.transpose(-1, -2)
    if layer.attrs["transpose_b"]:
        b = b.transpose(-1, -2)
    return [torch.matmul(a, b)]


def run_reduce(layer: Layer, ins: list, env: Env, ctx: dict) -> list:
    x, op = ins[0], layer.attrs["op"]
    axes, keep = list(layer.attrs["axes"]), layer.attrs["keep_dims"]
    if not axes:
        return [x]
    if op == "sum":  # torch sums integers in int64; the IR keeps the input dtype
        return [x.sum(dim=axes, keepdim=keep).to(x.dtype)]
    if op == "avg":
        return [x.mean(dim=axes, keepdim=keep)]
    if op in ("max", "min"):
        return [x.amax(dim=axes, keepdim=keep) if op == "max" else x.amin(dim=axes, keepdim=keep)]
    if op == "prod":
        out = x
        for a in sorted(axes, reverse=True):
            out = out.prod(dim=a, keepdim=keep)
        return [out.to(x.dtype)]
    raise BackendError(f"torch executor: unknown reduce op {op!r}")


def run_softmax(layer: Layer, ins: list, env: Env, ctx: dict) -> list:
    x = ins[0]
    return [torch.softmax(x.float(), dim=layer.attrs["axis"]).to(x.dtype)]


def run_normalization(layer: Layer, ins: list, env: Env, ctx: dict) -> list:
    x, scale = ins[0], ins[1]
    axes, eps = list(layer.attrs["axes"]), layer.attrs["epsilon"]
    xf = x.float()
    if layer.attrs["kind"] == "rms":
        normed = xf * torch.rsqrt(xf.pow(2).mean(dim=axes, keepdim=True) + eps)
        return [scale * normed.to(x.dtype)]  # Hugging Face order: cast, then scale in x's dtype
    mean = xf.mean(dim=axes, keepdim=True)
    var = (xf - mean).pow(2).mean(dim=axes, keepdim=True)
    normed = (xf - mean) * torch.rsqrt(var + eps)
    return [(normed * scale.float() + ins[2].float()).to(x.dtype)]


def run_shuffle(layer: Layer, ins: list, env: Env, ctx: dict) -> list:
    x = ins[0]
    a = layer.attrs
    if a["first_transpose"] is not None:
        x = x.permute(*a["first_transpose"])
    if a["reshape_dims"] is not None:
        x = x.reshape(_dims(a["reshape_dims"], env))
    if a["second_transpose"] is not None:
        x = x.permute(*a["second_transpose"])
    return [x]


def run_slice(layer: Layer, ins: list, env: Env, ctx: dict) -> list:
    x, a = ins[0], layer.attrs
    dyn = list(a["dynamic"])
    start = _dims(a["start"], env) if "start" not in dyn else ins[1 + dyn.index("start")].tolist()
    size = _dims(a["size"], env) if "size" not in dyn else ins[1 + dyn.index("size")].tolist()
    stride = _dims(a["stride"], env) if "stride" not in dyn else ins[1 + dyn.index("stride")].tolist()
    if a["mode"] == "wrap":
        out = x
        for axis in range(x.ndim):
            if size[axis] != x.shape[axis] or start[axis] or stride[axis] != 1:
                idx = (start[axis] + torch.arange(size[axis], device=x.device) * stride[axis]) % x.shape[axis]
                out = out.index_select(axis, idx)
        return [out]
    out = x
    for axis in range(x.ndim):
        s, n, st = int(start[axis]), int(size[axis]), int(stride[axis])
        if s == 0 and st == 1 and n == x.shape[axis]:
            continue
        if s < 0 or n < 0 or (n and s + (n - 1) * st >= x.shape[axis]):
            raise BackendError(f"slice layer {layer.name!r}: start {s}, size {n}, stride {st} out of "
                               f"bounds for dim {axis} of size {x.shape[axis]}")
        out = out.narrow(axis, s, (n - 1) * st + 1 if n else 0)
        if st != 1:
            out = out[(builtin_slice(None),) * axis + (builtin_slice(None, None, st),)]
    return [out]


builtin_slice = slice


def run_concatenation(layer: Layer, ins: list, env: Env, ctx: dict) -> list:
    return [torch.cat(ins, dim=layer.attrs["axis"])]


def run_gather(layer: Layer, ins: list, env: Env, ctx: dict) -> list:
    x, idx = ins
    axis = layer.attrs["axis"]
    if layer.attrs["mode"] == "elements":
        return [torch.gather(x, axis, idx.long())]
    flat = torch.index_select(x, axis, idx.reshape(-1).long())
    shape = list(x.shape[:axis]) + list(idx.shape) + list(x.shape[axis + 1:])
    return [flat.reshape(shape)]


def run_select(layer: Layer, ins: list, env: Env, ctx: dict) -> list:
    return [torch.where(ins[0], ins[1], ins[2])]


def run_shape(layer: Layer, ins: list, env: Env, ctx: dict) -> list:
    return [torch.tensor(list(ins[0].shape), dtype=torch.int64, device=ins[0].device)]


def run_fill(layer: Layer, ins: list, env: Env, ctx: dict) -> list:
    a = layer.attrs
    shape = _dims(a["shape"], env)
    dtype, device = a["dtype"].torch, ctx["device"]
    out = torch.full(shape, a["alpha"], dtype=torch.float64 if dtype.is_floating_point else torch.int64,
                     device=device)
    for axis, delta in enumerate(a["beta"]):
        if delta:
            view = [1] * len(shape)
            view[axis] = shape[axis]
            out = out + torch.arange(shape[axis], device=device).reshape(view) * delta
    return [out.to(dtype)]


def run_topk(layer: Layer, ins: list, env: Env, ctx: dict) -> list:
    a = layer.attrs
    values, idx = torch.topk(ins[0], a["k"], dim=a["axis"], largest=a["op"] == "max", sorted=True)
    if a["k"] == 1:  # argmax: torch's topk may pick any tie; TensorRT and torch.argmax pick the first
        x = ins[0]
        idx = (x.argmax(dim=a["axis"], keepdim=True) if a["op"] == "max"
               else x.argmin(dim=a["axis"], keepdim=True))
    return [values, idx.to(torch.int32)]


def run_cumsum(layer: Layer, ins: list, env: Env, ctx: dict) -> list:
    x, a = ins[0], layer.attrs
    axis = a["axis"]
    if a["reverse"]:
        x = x.flip(axis)
    out = torch.cumsum(x, dim=axis).to(x.dtype)
    if a["exclusive"]:
        out = out - x
    if a["reverse"]:
        out = out.flip(axis)
    return [out]


def run_quantize(layer: Layer, ins: list, env: Env, ctx: dict) -> list:
    x, scale = ins[0], ins[1]
    to = layer.attrs["to"].torch
    q = x.float() / scale.float()
    if to == torch.int8:
        q = q.round().clamp(-128, 127)
    elif to == torch.float8_e4m3fn:
        q = q.clamp(-448.0, 448.0)
    return [q.to(to)]


def run_dequantize(layer: Layer, ins: list, env: Env, ctx: dict) -> list:
    x, scale = ins[0], ins[1]
    return [(x.float() * scale.float()).to(layer.attrs["to"].torch)]


def run_plugin(layer: Layer, ins: list, env: Env, ctx: dict) -> list:
    impl = ctx["plugin_impls"][layer.name]
    out = impl(ins, layer.attrs["fields"], ctx.get("hints", {}))
    return list(out) if isinstance(out, (list, tuple)) else [out]


LAYER_FUNCTIONS: dict[LayerKind, LayerFn] = {
    LayerKind.CONSTANT: run_constant, LayerKind.CAST: run_cast, LayerKind.IDENTITY: run_identity,
    LayerKind.ELEMENTWISE: run_elementwise, LayerKind.UNARY: run_unary,
    LayerKind.ACTIVATION: run_activation, LayerKind.MATRIX_MULTIPLY: run_matmul,
    LayerKind.REDUCE: run_reduce, LayerKind.SOFTMAX: run_softmax,
    LayerKind.NORMALIZATION: run_normalization, LayerKind.SHUFFLE: run_shuffle,
    LayerKind.SLICE: run_slice, LayerKind.CONCATENATION: run_concatenation,
    LayerKind.GATHER: run_gather, LayerKind.SELECT: run_select, LayerKind.SHAPE: run_shape,
    LayerKind.FILL: run_fill, LayerKind.TOPK: run_topk, LayerKind.CUMSUM: run_cumsum,
    LayerKind.QUANTIZE: run_quantize, LayerKind.DEQUANTIZE: run_dequantize,
    LayerKind.PLUGIN: run_plugin,
}

assert set(LAYER_FUNCTIONS) == set(LayerKind), "every layer kind needs a torch implementation"
