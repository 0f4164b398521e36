"""Helpers every op uses: finding the network, turning constants into tensors, broadcasting,
and error messages that name the op and each input's shape and dtype."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from ..dtypes import DType, dtype_of
from ..errors import DTypeError, NetworkError, ShapeError
from ..ir.network import LayerKind, Network, Tensor, active_network
from ..ir.symbolic import Dim, dim_equal, shape_repr

TensorLike = Any  # Tensor | Parameter | torch.Tensor | np.ndarray | int | float | bool


def describe(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"{value.name!r}: {value.dtype.value}{shape_repr(value.shape)}"
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"{type(value).__name__} {value.dtype}{tuple(value.shape)}"
    return repr(value)


def op_error(kind: type, op: str, problem: str, inputs: Sequence[Any] = (), hint: str = "") -> Exception:
    """A typed error naming the op, what went wrong, and every input's dtype and shape."""
    msg = f"{op}: {problem}"
    if inputs:
        msg += "\n  inputs: " + ", ".join(describe(v) for v in inputs)
    if hint:
        msg += f"\n  hint: {hint}"
    return kind(msg)


def network_of(*values: Any, op: str = "op") -> Network:
    """The network of the tensor arguments (all must agree), else the active scope's network."""
    net: Network | None = None
    for v in values:
        if isinstance(v, (list, tuple)):
            for item in v:
                if isinstance(item, Tensor):
                    net = _same(net, item, op)
        elif isinstance(v, Tensor):
            net = _same(net, v, op)
    return net if net is not None else active_network()


def _same(net: Network | None, t: Tensor, op: str) -> Network:
    if net is not None and t.network is not net:
        raise NetworkError(f"{op}: inputs come from different networks ({net.name!r} and "
                           f"{t.network.name!r}); tensors of different networks cannot be mixed")
    return t.network


def _is_parameter(value: Any) -> bool:
    return getattr(value, "_trtdsl_parameter", False)


def constant_tensor(net: Network, value: Any, dtype: DType | None = None, name: str = "constant") -> Tensor:
    """Add a constant layer holding ``value`` (torch/numpy array or Python scalar/list)."""
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(np.ascontiguousarray(value))
    if not isinstance(value, torch.Tensor):
        if dtype is None:
            raise DTypeError(f"constant {value!r}: give a dtype for Python values")
        value = torch.tensor(value, dtype=dtype.torch)
    value = value.detach().cpu()
    dt = dtype or dtype_of(value.dtype)
    if dt is not DType.int4 and value.dtype != dt.torch:
        value = value.to(dt.torch)
    layer = net.add_layer(LayerKind.CONSTANT, name, [], [(dt, tuple(value.shape))], {"value": value})
    return layer.outputs[0]


def as_tensor(value: TensorLike, net: Network, like: Tensor | None = None, op: str = "op") -> Tensor:
    """Turn an op argument into a network tensor.

    Python scalars take the dtype of ``like`` (the other operand), as in TensorRT-LLM and tripy:
    ``x * 0.5`` stays in ``x``'s dtype. Arrays keep their own dtype; mixing dtypes is an error."""
    if isinstance(value, Tensor):
        return value
    if _is_parameter(value):
        return parameter_tensor(net, value)
    if isinstance(value, (bool, int, float)) and not isinstance(value, Tensor):
        if like is None:
            dt = DType.bool if isinstance(value, bool) else DType.int64 if isinstance(value, int) else DType.float32
        else:
            dt = like.dtype
            if isinstance(value, float) and not dt.is_float:
                raise op_error(DTypeError, op, f"float scalar {value} with integer tensor", [like],
                               "cast the tensor to a float dtype first")
        return constant_tensor(net, value, dt, name="scalar")
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return constant_tensor(net, value)
    raise op_error(DTypeError, op, f"cannot use a {type(value).__name__} as a tensor", [value])


def parameter_tensor(net: Network, param: Any) -> Tensor:
    """The constant holding a Parameter's value; created once per network, named by its path."""
    cached = net._param_constants.get(id(param))
    if cached is not None:
        return cached
    if param.value is None:
        raise NetworkError(f"parameter {param.qualname!r} {shape_repr(param.shape)} has no value; "
                           "load a state dict (module.load_state_dict) before building")
    layer = net.add_layer(LayerKind.CONSTANT, param.qualname, [], [(param.dtype, tuple(param.shape))],
                          {"value": param.value, "weight_name": param.qualname}, scoped=False)
    net._param_constants[id(param)] = layer.outputs[0]
    return layer.outputs[0]


def broadcast_shapes(op: str, *tensors: Tensor) -> tuple:
    """Torch broadcasting of the tensors' shapes; raises ShapeError naming the op and inputs."""
    rank = max(t.ndim for t in tensors)
    out: list[Dim] = []
    for axis in range(rank):
        dims = [t.shape[axis - rank + t.ndim] for t in tensors if axis - rank + t.ndim >= 0]
        result: Dim = 1
        for d in dims:
            if isinstance(d, int) and d == 1:
                continue
            if isinstance(result, int) and result == 1:
                result = d
            elif not dim_equal(result, d):
                if isinstance(result, int) and isinstance(d, int):
                    raise op_error(ShapeError, op, f"shapes do not broadcast: dim {axis - rank} is "
                                   f"{result} in one input and {d} in another", tensors)
                # Two different symbols: cannot be proven equal or unequal now; the run checks.
        out.append(result)
    return tuple(out)


def expand_rank(x: Tensor, rank: int) -> Tensor:
    """Prepend size-1 dims so ``x`` has ``rank`` dims (TensorRT broadcasts only equal ranks)."""
    if x.ndim == rank:
        return x
    shape = (1,) * (rank - x.ndim) + x.shape
    layer = x.network.add_layer(LayerKind.SHUFFLE, "expand_rank", [x], [(x.dtype, shape)],
                                {"first_transpose": None, "reshape_dims": shape, "second_transpose": None})
    return layer.outputs[0]


def normalize_axis(axis: int, rank: int, op: str, x: Tensor | None = None) -> int:
    if not -rank <= axis < max(rank, 1):
        raise op_error(ShapeError, op, f"axis {axis} is out of range for a rank-{rank} tensor",
                       [x] if x is not None else [])
    return axis % rank if rank else 0


def check_same_dtype(op: str, *tensors: Tensor) -> DType:
    dtypes = {t.dtype for t in tensors}
    if len(dtypes) > 1:
        raise op_error(DTypeError, op, "inputs have different dtypes (trtdsl is strongly typed)",
                       tensors, "cast one input explicitly, e.g. x.cast(y.dtype)")
    return tensors[0].dtype


def check_float(op: str, x: Tensor) -> None:
    if not x.dtype.is_float or x.dtype is DType.fp8:
        raise op_error(DTypeError, op, f"needs a float32/float16/bfloat16 input, got {x.dtype.value}",
                       [x], "cast first: x.cast('float32')")


def single(layer: Any) -> Tensor:
    return layer.outputs[0]
