"""Elementwise, unary, activation, cast and select ops.

Dtype rules: binary ops need equal dtypes (Python scalars adopt the tensor's dtype); comparisons
return ``bool``; logical ops need ``bool`` inputs; float-only ops (exp, sqrt, activations, ...) reject
integer inputs. Shapes broadcast like torch: ranks are aligned by the op, then size-1 dims stretch.
"""

from __future__ import annotations

from typing import Any

from ..dtypes import DType, dtype_of
from ..errors import DTypeError
from ..ir.network import LayerKind, Tensor
from ._core import (TensorLike, as_tensor, broadcast_shapes, check_float, check_same_dtype,
                    expand_rank, network_of, op_error, single)

_COMPARISONS = {"equal", "less", "greater"}
_LOGICAL = {"and", "or", "xor"}


def _binary(op: str, a: TensorLike, b: TensorLike, name: str) -> Tensor:
    net = network_of(a, b, op=name)
    like = a if isinstance(a, Tensor) else b if isinstance(b, Tensor) else None
    ta = as_tensor(a, net, like, op=name)
    tb = as_tensor(b, net, like, op=name)
    dtype = check_same_dtype(name, ta, tb)
    if op in _LOGICAL and dtype is not DType.bool:
        raise op_error(DTypeError, name, f"needs bool inputs, got {dtype.value}", [ta, tb],
                       "compare first (x > 0) or cast to bool")
    if op not in _LOGICAL and dtype is DType.bool and op not in ("equal",):
        raise op_error(DTypeError, name, "arithmetic on bool tensors", [ta, tb], "cast to int32 first")
    shape = broadcast_shapes(name, ta, tb)
    ta, tb = expand_rank(ta, len(shape)), expand_rank(tb, len(shape))
    out_dtype = DType.bool if op in _COMPARISONS else dtype
    return single(net.add_layer(LayerKind.ELEMENTWISE, name, [ta, tb], [(out_dtype, shape)], {"op": op}))


def add(a: TensorLike, b: TensorLike) -> Tensor:
    """``a + b`` with broadcasting. Equal dtypes; scalars adopt the tensor's dtype.

    >>> y = add(x, 1.0)                          # float32[n, 8] -> float32[n, 8]
    """
    return _binary("sum", a, b, "add")


def sub(a: TensorLike, b: TensorLike) -> Tensor:
    """``a - b`` with broadcasting.

    >>> y = sub(x, mean(x, -1, keepdim=True))    # [n, 8] - [n, 1] -> [n, 8]
    """
    return _binary("sub", a, b, "sub")


def mul(a: TensorLike, b: TensorLike) -> Tensor:
    """``a * b`` with broadcasting.

    >>> y = mul(x, 0.5)                          # the scalar takes x's dtype
    """
    return _binary("prod", a, b, "mul")


def div(a: TensorLike, b: TensorLike) -> Tensor:
    """``a / b`` (true division for floats, truncation for ints as in TensorRT).

    >>> y = div(x, 2.0)
    """
    return _binary("div", a, b, "div")


def floor_divide(a: TensorLike, b: TensorLike) -> Tensor:
    """``a // b`` rounding toward negative infinity.

    >>> blk = floor_divide(ids, 4)               # int32[n] -> int32[n]
    """
    return _binary("floor_div", a, b, "floor_divide")


def pow(a: TensorLike, b: TensorLike) -> Tensor:  # noqa: A001 - torch's name
    """``a ** b`` for float tensors.

    >>> y = pow(x, 2.0)
    """
    return _binary("pow", a, b, "pow")


def maximum(a: TensorLike, b: TensorLike) -> Tensor:
    """Elementwise max.

    >>> y = maximum(x, 0.0)
    """
    return _binary("max", a, b, "maximum")


def minimum(a: TensorLike, b: TensorLike) -> Tensor:
    """Elementwise min.

    >>> y = minimum(x, 1.0)
    """
    return _binary("min", a, b, "minimum")


def eq(a: TensorLike, b: TensorLike) -> Tensor:
    """``a == b`` -> bool.

    >>> m = eq(ids, 0)                           # int32[n] -> bool[n]
    """
    return _binary("equal", a, b, "eq")


def lt(a: TensorLike, b: TensorLike) -> Tensor:
    """``a < b`` -> bool.

    >>> m = lt(x, 0.0)                           # float32[n, 8] -> bool[n, 8]
    """
    return _binary("less", a, b, "lt")


def gt(a: TensorLike, b: TensorLike) -> Tensor:
    """``a > b`` -> bool.

    >>> m = gt(x, 0.0)
    """
    return _binary("greater", a, b, "gt")


def ne(a: TensorLike, b: TensorLike) -> Tensor:
    """``a != b`` -> bool (``not(a == b)``; TensorRT has no NOT_EQUAL).

    >>> m = ne(ids, 0)                           # int32[n] -> bool[n]
    """
    return logical_not(eq(a, b))


def le(a: TensorLike, b: TensorLike) -> Tensor:
    """``a <= b`` -> bool (``not(a > b)``).

    >>> m = le(pos_k, pos_q)                     # int32[1, n] vs [n, 1] -> bool[n, n]
    """
    return logical_not(gt(a, b))


def ge(a: TensorLike, b: TensorLike) -> Tensor:
    """``a >= b`` -> bool (``not(a < b)``).

    >>> m = ge(x, 0.0)
    """
    return logical_not(lt(a, b))


def logical_and(a: TensorLike, b: TensorLike) -> Tensor:
    """Bool ``a & b``.

    >>> m = logical_and(m1, m2)
    """
    return _binary("and", a, b, "logical_and")


def logical_or(a: TensorLike, b: TensorLike) -> Tensor:
    """Bool ``a | b``.

    >>> m = logical_or(m1, m2)
    """
    return _binary("or", a, b, "logical_or")


def logical_xor(a: TensorLike, b: TensorLike) -> Tensor:
    """Bool ``a ^ b``.

    >>> m = logical_xor(m1, m2)
    """
    return _binary("xor", a, b, "logical_xor")


# -- unary ------------------------------------------------------------------------------------------
_FLOAT_UNARY = {"exp", "log", "sqrt", "recip", "sin", "cos", "erf", "floor", "ceil", "round"}


def _unary(op: str, x: Tensor, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise op_error(DTypeError, name, f"expects a network Tensor, got {type(x).__name__}", [x])
    if op in _FLOAT_UNARY:
        check_float(name, x)
    if op == "not" and x.dtype is not DType.bool:
        raise op_error(DTypeError, name, f"needs a bool input, got {x.dtype.value}", [x])
    return single(x.network.add_layer(LayerKind.UNARY, name, [x], [(x.dtype, x.shape)], {"op": op}))


def exp(x: Tensor) -> Tensor:
    """``e ** x`` (float).

    >>> y = exp(x)
    """
    return _unary("exp", x, "exp")


def log(x: Tensor) -> Tensor:
    """Natural log (float).

    >>> y = log(x)
    """
    return _unary("log", x, "log")


def sqrt(x: Tensor) -> Tensor:
    """Square root (float).

    >>> y = sqrt(x)
    """
    return _unary("sqrt", x, "sqrt")


def rsqrt(x: Tensor) -> Tensor:
    """``1 / sqrt(x)`` (float).

    >>> y = rsqrt(var + 1e-6)                    # float32[n, 1]
    """
    return _unary("recip", sqrt(x), "rsqrt")


def reciprocal(x: Tensor) -> Tensor:
    """``1 / x`` (float).

    >>> y = reciprocal(x)
    """
    return _unary("recip", x, "reciprocal")


def abs(x: Tensor) -> Tensor:  # noqa: A001
    """Absolute value.

    >>> y = abs(x)
    """
    return _unary("abs", x, "abs")


def neg(x: Tensor) -> Tensor:
    """``-x``.

    >>> y = neg(x)                               # also -x
    """
    return _unary("neg", x, "neg")


def sin(x: Tensor) -> Tensor:
    """Sine (float).

    >>> y = sin(x)
    """
    return _unary("sin", x, "sin")


def cos(x: Tensor) -> Tensor:
    """Cosine (float).

    >>> y = cos(x)
    """
    return _unary("cos", x, "cos")


def erf(x: Tensor) -> Tensor:
    """Gauss error function (float).

    >>> y = erf(x)
    """
    return _unary("erf", x, "erf")


def floor(x: Tensor) -> Tensor:
    """Round down (float).

    >>> y = floor(x)
    """
    return _unary("floor", x, "floor")


def logical_not(x: Tensor) -> Tensor:
    """Bool negation.

    >>> m = logical_not(mask)                     # also ~mask
    """
    return _unary("not", x, "logical_not")


# -- activations ------------------------------------------------------------------------------------
def _activation(op: str, x: Tensor, name: str, **params: float) -> Tensor:
    check_float(name, x)
    return single(x.network.add_layer(LayerKind.ACTIVATION, name, [x], [(x.dtype, x.shape)],
                                      {"op": op, **params}))


def relu(x: Tensor) -> Tensor:
    """``max(x, 0)``.

    >>> y = relu(x)
    """
    return _activation("relu", x, "relu")


def sigmoid(x: Tensor) -> Tensor:
    """Logistic sigmoid.

    >>> y = sigmoid(x)
    """
    return _activation("sigmoid", x, "sigmoid")


def tanh(x: Tensor) -> Tensor:
    """Hyperbolic tangent.

    >>> y = tanh(x)
    """
    return _activation("tanh", x, "tanh")


def gelu(x: Tensor, approximate: str = "none") -> Tensor:
    """GELU: ``approximate="none"`` (erf, BERT/Llama-style) or ``"tanh"`` (GPT-2's ``gelu_new``).

    >>> y = gelu(x, approximate="tanh")
    """
    if approximate not in ("none", "tanh"):
        raise op_error(ValueError, "gelu", f"approximate={approximate!r}; expected 'none' or 'tanh'")
    return _activation("gelu_erf" if approximate == "none" else "gelu_tanh", x, "gelu")


def silu(x: Tensor) -> Tensor:
    """``x * sigmoid(x)`` (SiLU / swish).

    >>> y = silu(x)
    """
    return mul(x, sigmoid(x))


def swiglu(x: Tensor) -> Tensor:
    """SwiGLU on a fused ``[..., 2 * inter]`` input laid out gate-then-up: ``silu(gate) * up``.

    >>> y = swiglu(gate_up)                      # float32[n, 16] -> float32[n, 8]
    """
    from .shape import chunk
    gate, up = chunk(x, 2, dim=-1)
    return mul(silu(gate), up)


def softplus(x: Tensor) -> Tensor:
    """``log(1 + e ** x)``.

    >>> y = softplus(x)
    """
    return _activation("softplus", x, "softplus", alpha=1.0, beta=1.0)


def leaky_relu(x: Tensor, negative_slope: float = 0.01) -> Tensor:
    """``x if x > 0 else slope * x``.

    >>> y = leaky_relu(x, 0.1)
    """
    return _activation("leaky_relu", x, "leaky_relu", alpha=float(negative_slope))


def clamp(x: Tensor, min: float | None = None, max: float | None = None) -> Tensor:  # noqa: A002
    """Clamp into ``[min, max]`` (either bound optional).

    >>> y = clamp(x, -1.0, 1.0)
    """
    if min is None and max is None:
        raise op_error(ValueError, "clamp", "give at least one of min and max", [x])
    if x.dtype.is_float:
        lo = float("-inf") if min is None else float(min)
        hi = float("inf") if max is None else float(max)
        return _activation("clip", x, "clamp", alpha=lo, beta=hi)
    out = x
    if min is not None:
        out = maximum(out, int(min))
    if max is not None:
        out = minimum(out, int(max))
    return out


# -- cast and select --------------------------------------------------------------------------------
def cast(x: Tensor, dtype: Any) -> Tensor:
    """Explicit precision change (the only one: trtdsl is strongly typed).

    >>> h = cast(x, "float16")                   # float32[n, 8] -> float16[n, 8]
    """
    to = dtype_of(dtype)
    if not isinstance(x, Tensor):
        raise op_error(DTypeError, "cast", f"expects a network Tensor, got {type(x).__name__}", [x])
    if to is DType.int4:
        raise op_error(DTypeError, "cast", "int4 is a packed weight storage type; use the "
                       "quantization ops", [x])
    if to is x.dtype:
        return x
    return single(x.network.add_layer(LayerKind.CAST, "cast", [x], [(to, x.shape)], {"to": to}))


def where(condition: Tensor, x: TensorLike, y: TensorLike) -> Tensor:
    """``x`` where ``condition`` else ``y``, broadcast together; ``x`` and ``y`` share a dtype.

    >>> y = where(mask, x, 0.0)                  # bool[n, 8], float32[n, 8] -> float32[n, 8]
    """
    net = network_of(condition, x, y, op="where")
    like = x if isinstance(x, Tensor) else y if isinstance(y, Tensor) else None
    cond = as_tensor(condition, net, op="where")
    if cond.dtype is not DType.bool:
        raise op_error(DTypeError, "where", f"condition must be bool, got {cond.dtype.value}", [cond])
    tx, ty = as_tensor(x, net, like, op="where"), as_tensor(y, net, like, op="where")
    dtype = check_same_dtype("where", tx, ty)
    shape = broadcast_shapes("where", cond, tx, ty)
    ins = [expand_rank(t, len(shape)) for t in (cond, tx, ty)]
    return single(net.add_layer(LayerKind.SELECT, "where", ins, [(dtype, shape)]))


def masked_fill(x: Tensor, mask: Tensor, value: float) -> Tensor:
    """``x`` with ``value`` where ``mask`` is true.

    >>> y = masked_fill(x, mask, -1e9)
    """
    return where(mask, value, x)
