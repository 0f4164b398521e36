"""``trtdsl.functional``: torch-like ops that add TensorRT-shaped layers to their inputs' network.

Each op is one function in ``trtdsl/ops/`` with its dtype rules and a small example in its docstring.
Shapes and dtypes are inferred when the op is written; mistakes raise ``ShapeError``/``DTypeError``
naming the op and every input.

>>> import trtdsl, trtdsl.functional as F
>>> net = trtdsl.Network()
>>> x = net.add_input("x", "float32", ["batch", 64])
>>> y = F.softmax(F.relu(x) * 2.0, dim=-1)
>>> y.shape
(batch, 64)

The one-line example in each op's docstring uses these tensors of one network ``net`` (dims ``n``
and ``b`` are dynamic): ``x`` float32[n, 8]; ``var`` float32[n, 1]; ``ids`` int32[n] (< 10);
``lens`` int32[b]; ``mask``, ``m1``, ``m2`` bool[n, 8]; ``scores`` float32[n, n]; ``logits``,
``logprobs`` float32[n, 10]; ``token_ids`` int64[n, 1]; ``pos_k`` int32[1, n]; ``pos_q`` int32[n, 1];
``q``, ``k``, ``v`` float32[1, 2, n, 8]; ``kv`` float32[2, n, 8]; ``qkv`` float32[n, 24];
``gate_up`` float32[n, 16]; ``heads`` float32[n, 2, 8]; ``cos_pos``, ``sin_pos`` float32[n, 1, 8];
and torch weights ``w`` [16, 8], ``b`` [16], ``table`` [10, 8]. ``tests/test_docstrings.py`` runs
every example against exactly these.
"""

from __future__ import annotations

from .ops.elementwise import (abs, add, cast, clamp, cos, div, eq, erf, exp, floor, floor_divide, ge,
                              gelu, gt, le, leaky_relu, log, logical_and, logical_not, logical_or,
                              logical_xor, lt, masked_fill, maximum, minimum, mul, ne, neg, pow,
                              reciprocal, relu, rsqrt, sigmoid, silu, sin, softplus, sqrt, sub, swiglu,
                              tanh, where)
from .ops.nn import (arange, causal_mask, constant, embedding, full, gather, index_select, layer_norm,
                     linear, matmul, plugin, rms_norm, rotary_embedding, scaled_dot_product_attention,
                     shape_of)
from .ops.reduce import argmax, cumsum, log_softmax, max, mean, min, prod, softmax, sum, topk
from .ops.shape import (cat, chunk, concat, expand, flatten, getitem, permute, reshape, slice, split,
                        squeeze, stack, transpose, unbind, unsqueeze, view)

__all__ = [
    # elementwise / unary / activations / casts
    "add", "sub", "mul", "div", "floor_divide", "pow", "maximum", "minimum", "eq", "ne", "lt", "le",
    "gt", "ge", "logical_and", "logical_or", "logical_xor", "logical_not", "exp", "log", "sqrt",
    "rsqrt", "reciprocal", "abs", "neg", "sin", "cos", "erf", "floor", "relu", "sigmoid", "tanh",
    "gelu", "silu", "swiglu", "softplus", "leaky_relu", "clamp", "cast", "where", "masked_fill",
    # shapes and indexing
    "reshape", "view", "permute", "transpose", "unsqueeze", "squeeze", "flatten", "expand", "slice",
    "cat", "concat", "stack", "split", "chunk", "unbind", "getitem",
    # reductions
    "sum", "mean", "max", "min", "prod", "softmax", "log_softmax", "topk", "argmax", "cumsum",
    # nn
    "matmul", "linear", "embedding", "index_select", "gather", "layer_norm", "rms_norm",
    "rotary_embedding", "causal_mask", "scaled_dot_product_attention", "arange", "full", "constant",
    "shape_of", "plugin",
]
