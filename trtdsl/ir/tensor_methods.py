"""Operator overloads and methods of ``Tensor``, attached here so the IR module does not import the
ops (which import the IR)."""

from __future__ import annotations

from typing import Any

from .. import functional as F
from .network import Tensor


def _reflect(fn: Any) -> Any:
    return lambda self, other: fn(other, self)


def install() -> None:
    methods = {
        "__add__": F.add, "__radd__": _reflect(F.add),
        "__sub__": F.sub, "__rsub__": _reflect(F.sub),
        "__mul__": F.mul, "__rmul__": _reflect(F.mul),
        "__truediv__": F.div, "__rtruediv__": _reflect(F.div),
        "__floordiv__": F.floor_divide, "__rfloordiv__": _reflect(F.floor_divide),
        "__pow__": F.pow, "__rpow__": _reflect(F.pow),
        "__matmul__": F.matmul, "__rmatmul__": _reflect(F.matmul),
        "__neg__": F.neg,
        "__invert__": F.logical_not,
        "__and__": F.logical_and, "__or__": F.logical_or, "__xor__": F.logical_xor,
        "__lt__": F.lt, "__le__": F.le, "__gt__": F.gt, "__ge__": F.ge,
        "__getitem__": F.getitem,
        "view": F.reshape, "reshape": F.reshape, "permute": F.permute, "transpose": F.transpose,
        "unsqueeze": F.unsqueeze, "squeeze": F.squeeze, "flatten": F.flatten, "expand": F.expand,
        "cast": F.cast, "to": F.cast, "softmax": F.softmax, "sum": F.sum, "mean": F.mean,
        "max": F.max, "min": F.min, "exp": F.exp, "sqrt": F.sqrt, "split": F.split, "chunk": F.chunk,
        "matmul": F.matmul, "abs": F.abs, "neg": F.neg, "log": F.log, "rsqrt": F.rsqrt,
        "reciprocal": F.reciprocal, "sin": F.sin, "cos": F.cos, "relu": F.relu, "sigmoid": F.sigmoid,
        "tanh": F.tanh, "pow": F.pow, "clamp": F.clamp, "masked_fill": F.masked_fill, "prod": F.prod,
        "argmax": F.argmax, "topk": F.topk, "cumsum": F.cumsum, "gather": F.gather,
        "index_select": F.index_select, "unbind": F.unbind, "log_softmax": F.log_softmax,
        "add": F.add, "sub": F.sub, "mul": F.mul, "div": F.div,
    }
    for name, fn in methods.items():
        setattr(Tensor, name, fn)
    # `==`/`!=` build layers like torch's; hashing stays by identity, and containers compare by
    # identity first, so dicts and sets of tensors keep working.
    Tensor.__eq__ = F.eq  # type: ignore[assignment, method-assign]
    Tensor.__ne__ = F.ne  # type: ignore[assignment, method-assign]
    Tensor.__hash__ = object.__hash__  # type: ignore[assignment, method-assign]
    Tensor.eq = F.eq  # type: ignore[attr-defined]
    Tensor.ne = F.ne  # type: ignore[attr-defined]
