"""Reductions, softmax, top-k, argmax and cumulative sums.

Dtype rules: ``sum/prod/max/min`` keep the input dtype (float or int); ``mean``, ``softmax`` and
``log_softmax`` need a float input; ``argmax``/``topk`` indices are ``int32`` (TensorRT's index type).
"""

from __future__ import annotations

from typing import Sequence

from ..dtypes import DType
from ..errors import DTypeError
from ..ir.network import LayerKind, Tensor
from ._core import check_float, normalize_axis, op_error, single


def _axes(x: Tensor, dim: int | Sequence[int] | None, op: str) -> tuple[int, ...]:
    if dim is None:
        return tuple(range(x.ndim))
    dims = [dim] if isinstance(dim, int) else list(dim)
    return tuple(sorted({normalize_axis(d, x.ndim, op, x) for d in dims}))


def _reduce(op: str, x: Tensor, dim: int | Sequence[int] | None, keepdim: bool, name: str) -> Tensor:
    if x.dtype is DType.bool:
        raise op_error(DTypeError, name, "cannot reduce a bool tensor", [x], "cast to int32 first")
    axes = _axes(x, dim, name)
    shape = tuple(1 if i in axes else d for i, d in enumerate(x.shape)) if keepdim else \
        tuple(d for i, d in enumerate(x.shape) if i not in axes)
    return single(x.network.add_layer(LayerKind.REDUCE, name, [x], [(x.dtype, shape)],
                                      {"op": op, "axes": axes, "keep_dims": keepdim}))


def sum(x: Tensor, dim: int | Sequence[int] | None = None, keepdim: bool = False) -> Tensor:  # noqa: A001
    """Sum over ``dim`` (all dims if None).

    >>> s = sum(x, -1, keepdim=True)             # [n, 8] -> [n, 1]
    """
    return _reduce("sum", x, dim, keepdim, "sum")


def mean(x: Tensor, dim: int | Sequence[int] | None = None, keepdim: bool = False) -> Tensor:
    """Mean over ``dim`` (float).

    >>> m = mean(x, -1, keepdim=True)            # [n, 8] -> [n, 1]
    """
    check_float("mean", x)
    return _reduce("avg", x, dim, keepdim, "mean")


def max(x: Tensor, dim: int | Sequence[int] | None = None, keepdim: bool = False) -> Tensor:  # noqa: A001
    """Max over ``dim`` (values only; see ``topk``/``argmax`` for indices).

    >>> m = max(x, -1)                           # [n, 8] -> [n]
    """
    return _reduce("max", x, dim, keepdim, "max")


def min(x: Tensor, dim: int | Sequence[int] | None = None, keepdim: bool = False) -> Tensor:  # noqa: A001
    """Min over ``dim``.

    >>> m = min(x, -1)                           # [n, 8] -> [n]
    """
    return _reduce("min", x, dim, keepdim, "min")


def prod(x: Tensor, dim: int | Sequence[int] | None = None, keepdim: bool = False) -> Tensor:
    """Product over ``dim``.

    >>> p = prod(x, 0)                           # [n, 8] -> [8]
    """
    return _reduce("prod", x, dim, keepdim, "prod")


def softmax(x: Tensor, dim: int = -1) -> Tensor:
    """Softmax along ``dim`` (float).

    >>> p = softmax(scores, -1)                  # float32[n, n]
    """
    check_float("softmax", x)
    axis = normalize_axis(dim, x.ndim, "softmax", x)
    return single(x.network.add_layer(LayerKind.SOFTMAX, "softmax", [x], [(x.dtype, x.shape)],
                                      {"axis": axis}))


def log_softmax(x: Tensor, dim: int = -1) -> Tensor:
    """``x - max - log(sum(exp(x - max)))`` along ``dim`` (float, stable).

    >>> lp = log_softmax(logits, -1)             # float32[n, 10]
    """
    from .elementwise import exp, log, sub
    check_float("log_softmax", x)
    shifted = sub(x, max(x, dim, keepdim=True))
    return sub(shifted, log(sum(exp(shifted), dim, keepdim=True)))


def topk(x: Tensor, k: int, dim: int = -1, largest: bool = True) -> tuple[Tensor, Tensor]:
    """The ``k`` largest (or smallest) values along ``dim`` and their int32 indices, sorted.

    >>> values, indices = topk(logits, 5)        # float32[n, 5], int32[n, 5]
    """
    axis = normalize_axis(dim, x.ndim, "topk", x)
    size = x.shape[axis]
    if not isinstance(k, int) or k <= 0 or (isinstance(size, int) and k > size):
        raise op_error(ValueError, "topk", f"k={k} must be an int in [1, {size}]", [x])
    shape = x.shape[:axis] + (k,) + x.shape[axis + 1:]
    layer = x.network.add_layer(LayerKind.TOPK, "topk", [x], [(x.dtype, shape), (DType.int32, shape)],
                                {"op": "max" if largest else "min", "k": k, "axis": axis})
    return layer.outputs[0], layer.outputs[1]


def argmax(x: Tensor, dim: int = -1, keepdim: bool = False) -> Tensor:
    """Index (int32) of the max along ``dim``; ties pick the first.

    >>> tok = argmax(logits, -1)                 # float32[n, 10] -> int32[n]
    """
    from .shape import squeeze
    axis = normalize_axis(dim, x.ndim, "argmax", x)
    _, idx = topk(x, 1, axis)
    return idx if keepdim else squeeze(idx, axis)


def cumsum(x: Tensor, dim: int, exclusive: bool = False, reverse: bool = False) -> Tensor:
    """Cumulative sum along ``dim`` (optionally exclusive / reversed).

    >>> starts = cumsum(lens, 0, exclusive=True) # int32[b]
    """
    if x.dtype is DType.bool:
        raise op_error(DTypeError, "cumsum", "cannot sum a bool tensor", [x], "cast to int32 first")
    axis = normalize_axis(dim, x.ndim, "cumsum", x)
    return single(x.network.add_layer(LayerKind.CUMSUM, "cumsum", [x], [(x.dtype, x.shape)],
                                      {"axis": axis, "exclusive": exclusive, "reverse": reverse}))
