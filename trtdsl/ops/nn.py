"""Neural-network ops: matmul/linear, embedding and gathers, norms, rotary embedding, masks,
attention, constants, fills and plugins.

Dtype rules: matmul/linear need equal float dtypes; norms keep the input dtype and compute in float32
(as Hugging Face does); index tensors are int32 or int64; ``arange`` defaults to int32.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from ..dtypes import DType, dtype_of
from ..errors import DTypeError, ShapeError
from ..ir.network import LayerKind, Network, Tensor, active_network
from ..ir.symbolic import Dim, dim_add, dim_equal, dim_floordiv, dim_mul
from ._core import (TensorLike, as_tensor, broadcast_shapes, check_float, check_same_dtype,
                    constant_tensor, expand_rank, network_of, normalize_axis, op_error, single)
from .elementwise import add, cast, logical_not, gt, mul, neg, where
from .reduce import softmax
from .shape import cat, expand, reshape, slice, squeeze, unsqueeze

_INDEX = (DType.int32, DType.int64)


def matmul(a: TensorLike, b: TensorLike, transpose_a: bool = False, transpose_b: bool = False) -> Tensor:
    """Matrix product with torch semantics (1-D operands, broadcast batch dims).

    >>> y = matmul(x, w, transpose_b=True)       # [n, 8] @ [16, 8]^T -> [n, 16]
    """
    net = network_of(a, b, op="matmul")
    ta, tb = as_tensor(a, net, op="matmul"), as_tensor(b, net, op="matmul")
    check_same_dtype("matmul", ta, tb)
    check_float("matmul", ta)
    if ta.ndim == 0 or tb.ndim == 0:
        raise op_error(ShapeError, "matmul", "operands must have at least one dim", [ta, tb])
    squeeze_first = ta.ndim == 1
    squeeze_last = tb.ndim == 1
    if squeeze_first:
        ta = unsqueeze(ta, 0)
    if squeeze_last:
        tb = unsqueeze(tb, 1)
    m, k_a = (ta.shape[-1], ta.shape[-2]) if transpose_a else (ta.shape[-2], ta.shape[-1])
    k_b, n = (tb.shape[-1], tb.shape[-2]) if transpose_b else (tb.shape[-2], tb.shape[-1])
    if not dim_equal(k_a, k_b) and isinstance(k_a, int) and isinstance(k_b, int):
        raise op_error(ShapeError, "matmul", f"inner dims differ: {k_a} (a) vs {k_b} (b)", [ta, tb],
                       "transpose_b=True multiplies by b's transpose")
    batch = _broadcast_batch(ta, tb)
    rank = len(batch) + 2
    ta, tb = expand_rank(ta, rank), expand_rank(tb, rank)
    layer = net.add_layer(LayerKind.MATRIX_MULTIPLY, "matmul", [ta, tb], [(ta.dtype, batch + (m, n))],
                          {"transpose_a": transpose_a, "transpose_b": transpose_b})
    out = layer.outputs[0]
    if squeeze_first:
        out = squeeze(out, -2)
    if squeeze_last:
        out = squeeze(out, -1)
    return out


def _broadcast_batch(a: Tensor, b: Tensor) -> tuple:
    class _S:  # shape-only stand-ins so broadcast_shapes can name the inputs
        def __init__(self, t: Tensor):
            self.shape, self.ndim, self.name, self.dtype = t.shape[:-2], t.ndim - 2, t.name, t.dtype
    try:
        return broadcast_shapes("matmul", _S(a), _S(b))  # type: ignore[arg-type]
    except ShapeError:
        raise op_error(ShapeError, "matmul", "batch dims do not broadcast", [a, b]) from None


def linear(x: Tensor, weight: TensorLike, bias: TensorLike | None = None) -> Tensor:
    """``x @ weight.T + bias`` with ``weight [out, in]`` (torch.nn.Linear's layout).

    >>> y = linear(x, w, b)                      # [n, 8], w [16, 8], b [16] -> [n, 16]
    """
    net = network_of(x, weight, bias, op="linear")
    w = as_tensor(weight, net, op="linear")
    if w.ndim != 2:
        raise op_error(ShapeError, "linear", f"weight must be 2-D [out, in], got rank {w.ndim}", [x, w])
    if x.ndim >= 1 and not dim_equal(x.shape[-1], w.shape[1]):
        raise op_error(ShapeError, "linear", f"input features {x.shape[-1]} != weight in-features "
                       f"{w.shape[1]}", [x, w])
    out = matmul(x, w, transpose_b=True)
    return out if bias is None else add(out, as_tensor(bias, net, op="linear"))


def index_select(x: TensorLike, dim: int, index: Tensor) -> Tensor:
    """Select slices of ``x`` along ``dim`` at ``index`` (any shape, int32/int64); the result has
    ``x.shape[:dim] + index.shape + x.shape[dim+1:]`` (TensorRT's default gather).

    >>> rows = index_select(table, 0, ids)       # [10, 8] at int32[n] -> [n, 8]
    """
    net = network_of(x, index, op="index_select")
    tx = as_tensor(x, net, op="index_select")
    if index.dtype not in _INDEX:
        raise op_error(DTypeError, "index_select", f"indices must be int32/int64, got {index.dtype.value}",
                       [tx, index])
    axis = normalize_axis(dim, tx.ndim, "index_select", tx)
    shape = tx.shape[:axis] + index.shape + tx.shape[axis + 1:]
    return single(net.add_layer(LayerKind.GATHER, "index_select", [tx, index], [(tx.dtype, shape)],
                                {"axis": axis, "mode": "default"}))


def embedding(ids: Tensor, weight: TensorLike) -> Tensor:
    """Rows of ``weight [vocab, hidden]`` for each id.

    >>> h = embedding(ids, table)                # int32[n], table [10, 8] -> [n, 8]
    """
    return index_select(weight, 0, ids)


def gather(x: Tensor, dim: int, index: Tensor) -> Tensor:
    """``torch.gather``: ``out[i][j] = x[index[i][j]][j]`` for ``dim=0`` (same rank).

    >>> picked = gather(logprobs, 1, token_ids)  # [n, 10] at int64[n, 1] -> [n, 1]
    """
    net = network_of(x, index, op="gather")
    if index.dtype not in _INDEX:
        raise op_error(DTypeError, "gather", f"indices must be int32/int64, got {index.dtype.value}", [x, index])
    if index.ndim != x.ndim:
        raise op_error(ShapeError, "gather", "index must have the same rank as the input", [x, index])
    axis = normalize_axis(dim, x.ndim, "gather", x)
    return single(net.add_layer(LayerKind.GATHER, "gather", [x, index], [(x.dtype, index.shape)],
                                {"axis": axis, "mode": "elements"}))


def _norm(kind: str, x: Tensor, weight: TensorLike | None, bias: TensorLike | None, axes: int,
          eps: float, name: str) -> Tensor:
    check_float(name, x)
    net = x.network
    norm_shape = x.shape[x.ndim - axes:]
    ins = [x]
    for label, value in (("weight", weight), ("bias", bias)):
        if value is None:
            if kind == "rms" and label == "bias":
                continue
            fill = 1.0 if label == "weight" else 0.0
            value = torch.full(tuple(int(d) for d in norm_shape), fill, dtype=x.dtype.torch)
        t = as_tensor(value, net, op=name)
        if t.dtype is not x.dtype:
            raise op_error(DTypeError, name, f"{label} dtype {t.dtype.value} != input dtype "
                           f"{x.dtype.value}", [x, t])
        if len(t.shape) != axes or not all(dim_equal(a, b) for a, b in zip(t.shape, norm_shape)):
            raise op_error(ShapeError, name, f"{label} shape {t.shape} != normalized shape {norm_shape}",
                           [x, t])
        ins.append(expand_rank(t, x.ndim))
    return single(net.add_layer(LayerKind.NORMALIZATION, name, ins, [(x.dtype, x.shape)],
                                {"kind": kind, "axes": tuple(range(x.ndim - axes, x.ndim)), "epsilon": eps}))


def layer_norm(x: Tensor, normalized_shape: int | Sequence[int], weight: TensorLike | None = None,
               bias: TensorLike | None = None, eps: float = 1e-5) -> Tensor:
    """LayerNorm over the trailing ``normalized_shape`` dims (computed in float32).

    >>> y = layer_norm(x, 8, eps=1e-5)
    """
    n = 1 if isinstance(normalized_shape, int) else len(normalized_shape)
    return _norm("layer", x, weight, bias, n, eps, "layer_norm")


def rms_norm(x: Tensor, weight: TensorLike | None = None, eps: float = 1e-6) -> Tensor:
    """RMSNorm over the last dim, Hugging Face style: ``w * (x / rms(x)).to(dtype)`` in float32.

    >>> y = rms_norm(x, torch.ones(8), eps=1e-5)
    """
    return _norm("rms", x, weight, None, 1, eps, "rms_norm")


def rotary_embedding(x: Tensor, cos: TensorLike, sin: TensorLike, style: str = "neox") -> Tensor:
    """Rotate the first ``cos.shape[-1]`` features of ``x`` by the given angles' cos/sin.

    ``cos``/``sin`` broadcast against ``x[..., :rotary_dim]`` and follow Hugging Face's layout (halves
    duplicated for ``"neox"``/rotate-half; each angle repeated twice for ``"gptj"``/interleaved).

    >>> h = rotary_embedding(heads, cos_pos, sin_pos)   # [n, 2, 8], cos/sin [n, 1, 8]
    """
    if style not in ("neox", "gptj"):
        raise op_error(ValueError, "rotary_embedding", f"style {style!r}; expected 'neox' or 'gptj'", [x])
    net = x.network
    tc, ts = as_tensor(cos, net, x, op="rotary_embedding"), as_tensor(sin, net, x, op="rotary_embedding")
    check_same_dtype("rotary_embedding", x, tc, ts)
    rot = tc.shape[-1]
    if not isinstance(rot, int) or rot % 2 or not isinstance(x.shape[-1], int) or rot > x.shape[-1]:
        raise op_error(ShapeError, "rotary_embedding", f"rotary dim {rot} must be even and <= head dim",
                       [x, tc])
    xr = x if rot == x.shape[-1] else slice(x, -1, 0, rot)
    if style == "neox":
        half = rot // 2
        rotated = cat([neg(slice(xr, -1, half, rot)), slice(xr, -1, 0, half)], -1)
    else:
        pairs = reshape(xr, *xr.shape[:-1], rot // 2, 2)
        even, odd = slice(pairs, -1, 0, 1), slice(pairs, -1, 1, 2)
        rotated = reshape(cat([neg(odd), even], -1), *xr.shape)
    out = add(mul(xr, tc), mul(rotated, ts))
    return out if rot == x.shape[-1] else cat([out, slice(x, -1, rot, None)], -1)


def arange(start: Dim, end: Dim | None = None, step: int = 1, *, dtype: Any = "int32",
           network: Network | None = None) -> Tensor:
    """``[start, end)`` by ``step``; ends may be symbolic dims (``x.shape[0]``).

    >>> with net.scope():
    ...     pos = arange(x.shape[0])          # int32[n]
    """
    if end is None:
        start, end = 0, start
    net = network or active_network()
    dt = dtype_of(dtype)
    length = dim_add(end, dim_mul(start, -1)) if step == 1 else \
        dim_floordiv(dim_add(dim_add(end, dim_mul(start, -1)), step - 1), step)
    if not isinstance(start, int):
        raise op_error(ShapeError, "arange", f"start must be a static int, got {start}")
    return single(net.add_layer(LayerKind.FILL, "arange", [], [(dt, (length,))],
                                {"op": "linspace", "shape": (length,), "alpha": start, "beta": (step,),
                                 "dtype": dt}))


def full(shape: Sequence[Dim], value: float, dtype: Any = "float32", *, network: Network | None = None) -> Tensor:
    """A tensor of ``shape`` (static or symbolic) filled with ``value``.

    >>> z = full((x.shape[0], 4), 0.0, network=net)   # float32[n, 4]
    """
    net = network or active_network()
    dt = dtype_of(dtype)
    shape = tuple(shape)
    return single(net.add_layer(LayerKind.FILL, "full", [], [(dt, shape)],
                                {"op": "linspace", "shape": shape, "alpha": value,
                                 "beta": (0,) * len(shape), "dtype": dt}))


def constant(value: Any, dtype: Any = None, *, network: Network | None = None, name: str = "constant") -> Tensor:
    """A constant from a torch/numpy array or Python value.

    >>> c = constant([1, 2], "int32", network=net)
    """
    net = network or active_network()
    return constant_tensor(net, value, dtype_of(dtype) if dtype is not None else None, name)


def shape_of(x: Tensor) -> Tensor:
    """The run-time shape of ``x`` as an int64 ``[rank]`` tensor.

    >>> s = shape_of(x)                          # int64[2]: (n, 8) at run time
    """
    return single(x.network.add_layer(LayerKind.SHAPE, "shape", [x], [(DType.int64, (x.ndim,))]))


def causal_mask(q_len: Dim, kv_len: Dim, *, network: Network) -> Tensor:
    """Bool ``[q_len, kv_len]``: query ``i`` sees keys ``j <= i + kv_len - q_len``.

    >>> m = causal_mask(x.shape[0], x.shape[0], network=net)   # bool[n, n]
    """
    q = reshape(arange(q_len, network=network), -1, 1)
    k = reshape(arange(kv_len, network=network), 1, -1)
    offset = dim_add(kv_len, dim_mul(q_len, -1))
    if isinstance(offset, int):
        q = add(q, offset) if offset else q
    else:
        raise op_error(ShapeError, "causal_mask", f"kv_len - q_len = {offset} must be static")
    return logical_not(gt(k, q))


def scaled_dot_product_attention(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None,
                                 is_causal: bool = False, scale: float | None = None,
                                 enable_gqa: bool = False) -> Tensor:
    """``softmax(q k^T * scale + mask) v`` over ``[..., heads, seq, head_dim]`` (composite; the
    paged fused kernel is the ``trtdsl.attention`` plugin). Bool masks keep ``True`` entries.

    >>> out = scaled_dot_product_attention(q, k, v, is_causal=True)   # [1, 2, n, 8]
    """
    check_same_dtype("scaled_dot_product_attention", q, k, v)
    check_float("scaled_dot_product_attention", q)
    if q.ndim < 2 or k.ndim != q.ndim or v.ndim != q.ndim:
        raise op_error(ShapeError, "scaled_dot_product_attention", "q, k, v need equal ranks >= 2", [q, k, v])
    if enable_gqa and q.ndim >= 3 and not dim_equal(q.shape[-3], k.shape[-3]):
        k, v = _repeat_kv(k, q.shape[-3]), _repeat_kv(v, q.shape[-3])
    d = q.shape[-1]
    scale = (1.0 / math.sqrt(d)) if scale is None else scale
    scores = mul(matmul(q, k, transpose_b=True), scale)
    if is_causal:
        mask = causal_mask(q.shape[-2], k.shape[-2], network=q.network)
        scores = where(mask, scores, float("-inf"))
    if attn_mask is not None:
        scores = where(attn_mask, scores, float("-inf")) if attn_mask.dtype is DType.bool \
            else add(scores, attn_mask)
    return matmul(softmax(scores, -1), v)


def _repeat_kv(x: Tensor, num_heads: Dim) -> Tensor:
    kv_heads = x.shape[-3]
    if not (isinstance(kv_heads, int) and isinstance(num_heads, int) and num_heads % kv_heads == 0):
        raise op_error(ShapeError, "scaled_dot_product_attention", f"{num_heads} query heads are not a "
                       f"multiple of {kv_heads} kv heads", [x])
    rep = num_heads // kv_heads
    lead = x.shape[:-3]
    y = expand(unsqueeze(x, -3), *lead, kv_heads, rep, x.shape[-2], x.shape[-1])
    return reshape(y, *lead, num_heads, x.shape[-2], x.shape[-1])


def plugin(name: str, inputs: Sequence[TensorLike], **fields: Any) -> list[Tensor]:
    """Add a plugin layer (a registered kernel with a torch reference); returns its outputs.

    >>> (y,) = plugin("example.scale", [x], factor=2.0)   # a registered plugin
    """
    from ..plugins.registry import get_plugin
    spec = get_plugin(name)
    net = network_of(*inputs, op=name)
    tensors = [as_tensor(t, net, op=name) for t in inputs]
    outs = spec.shape_rule(tensors, fields)
    layer = net.add_layer(LayerKind.PLUGIN, name.split(".")[-1], tensors, outs,
                          {"name": name, "version": spec.version, "fields": dict(fields)})
    return list(layer.outputs)
