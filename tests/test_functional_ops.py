"""Every op of ``trtdsl.functional.__all__`` against plain torch, on fresh random inputs.

Each case builds one network whose inputs have named dynamic dims, then runs it at two different sizes
through the torch executor and compares with the same computation written in torch. The runner also
checks the two invariants every op must keep: the run-time dtype is the dtype the IR declared (strong
typing), and the run-time shape is the IR's symbolic shape evaluated at the bound dims.
``test_every_op_is_tested`` fails when an op in ``__all__`` has no case here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import pytest
import torch
import torch.nn.functional as TF

import trtdsl
import trtdsl.functional as F
from trtdsl.backends.torch_executor import TorchExecutor
from trtdsl.ir.layer_attrs import validate_network
from trtdsl.ir.symbolic import evaluate
from trtdsl.plugins.registry import PluginSpec, register_plugin, unregister_plugin

TESTED: set[str] = set()  # op names exercised by some test of this file (see test_every_op_is_tested)


def covers(*ops: str) -> Callable:
    """Mark a test function as exercising ``ops`` (recorded at import, whatever runs)."""
    TESTED.update(ops)
    return lambda fn: fn


# -- input generators ---------------------------------------------------------------------------------
def randn(shape: tuple, dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(shape).to(dtype)


def positive(shape: tuple, dtype: torch.dtype) -> torch.Tensor:
    return (torch.rand(shape) + 0.5).to(dtype)


def small_ints(shape: tuple, dtype: torch.dtype) -> torch.Tensor:
    return torch.randint(-3, 4, shape).to(dtype)


def nonzero_ints(shape: tuple, dtype: torch.dtype) -> torch.Tensor:
    v = torch.randint(1, 5, shape) * (torch.randint(0, 2, shape) * 2 - 1)
    return v.to(dtype)


def bools(shape: tuple, dtype: torch.dtype) -> torch.Tensor:
    return torch.rand(shape) > 0.5


def index_gen(high: int) -> Callable:
    return lambda shape, dtype: torch.randint(0, high, shape).to(dtype)


_DEFAULT_GEN = {"float32": randn, "float16": randn, "bfloat16": randn, "int32": small_ints,
                "int64": small_ints, "bool": bools}


@dataclass
class In:
    """A network input of a case: dtype, shape (dim names are dynamic) and a value generator."""

    dtype: str
    shape: tuple
    gen: Callable | None = None


@dataclass
class Case:
    id: str
    ops: tuple[str, ...]
    inputs: dict[str, In]
    build: Callable[..., Any]   # (*network tensors, in input order) -> Tensor | sequence of Tensors
    ref: Callable[..., Any]     # (*torch tensors, in input order) -> torch.Tensor | sequence of them
    sizes: tuple[dict, ...] = ({"n": 3, "m": 2}, {"n": 6, "m": 1})
    tol: dict = field(default_factory=dict)


def _as_list(x: Any) -> list:
    return list(x) if isinstance(x, (list, tuple)) else [x]


def run_case(case: Case) -> None:
    net = trtdsl.Network(case.id)
    tensors = {name: net.add_input(name, i.dtype, i.shape) for name, i in case.inputs.items()}
    with net.scope():  # for tensor-less ops (arange, full, constant)
        outs = _as_list(case.build(*tensors.values()))
    for k, t in enumerate(outs):
        t.mark_output(f"out{k}")
    dims = sorted({d for i in case.inputs.values() for d in i.shape if isinstance(d, str)})
    if dims:
        net.add_profile({d: (1, 4, 8) for d in dims})
    validate_network(net)  # every layer the op wrote follows trtdsl/ir/layer_attrs.py
    executor = TorchExecutor(net)
    for sizes in case.sizes:
        feed = {}
        for name, i in case.inputs.items():
            shape = tuple(sizes[d] if isinstance(d, str) else d for d in i.shape)
            gen = i.gen or _DEFAULT_GEN[i.dtype]
            feed[name] = gen(shape, trtdsl.dtypes.dtype_of(i.dtype).torch)
        env = executor.bind_inputs(feed)
        got = executor.run(feed)
        expected = _as_list(case.ref(*[v.clone() for v in feed.values()]))
        assert len(expected) == len(outs)
        for k, t in enumerate(outs):
            value = got[f"out{k}"]
            assert value.dtype == t.dtype.torch, f"{case.id} out{k}: IR says {t.dtype}, ran {value.dtype}"
            try:
                want_shape = tuple(evaluate(d, env) for d in t.shape)
            except KeyError:  # a data-dependent dim (dynamic slice): bound only while running
                want_shape = tuple(value.shape)
            assert tuple(value.shape) == want_shape, f"{case.id} out{k}: IR shape {t.shape} at {sizes}"
            ref = torch.as_tensor(expected[k])
            if ref.dtype != value.dtype and not ref.is_floating_point():
                ref = ref.to(value.dtype)  # e.g. torch's int64 indices vs TensorRT's int32
            torch.testing.assert_close(value, ref, **case.tol, msg=lambda m: f"{case.id} out{k} at {sizes}: {m}")


# -- the cases ----------------------------------------------------------------------------------------
F32, I32, I64, BOOL = "float32", "int32", "int64", "bool"
CASES: list[Case] = []


def case(id: str, ops: str | tuple, inputs: dict, build: Callable, ref: Callable, **kw: Any) -> None:
    ops = (ops,) if isinstance(ops, str) else ops
    CASES.append(Case(id, ops, inputs, build, ref, **kw))
    TESTED.update(ops)


# Binary ops: a [n, 1, 4] against b [m, 4] broadcasts to [n, m, 4] (dynamic dims on both sides).
_BCAST = {"a": In(F32, ("n", 1, 4)), "b": In(F32, ("m", 4))}
for _op, _ref in [("add", torch.add), ("sub", torch.sub), ("mul", torch.mul), ("div", torch.div),
                  ("maximum", torch.maximum), ("minimum", torch.minimum)]:
    case(f"{_op}_broadcast", _op, _BCAST, lambda a, b, _op=_op: getattr(F, _op)(a, b),
         lambda a, b, _ref=_ref: _ref(a, b))
case("add_scalar", "add", {"a": In(F32, ("n", 3))}, lambda a: F.add(a, 1.5), lambda a: a + 1.5)
case("sub_scalar_left", "sub", {"a": In(F32, ("n", 3))}, lambda a: F.sub(2.0, a), lambda a: 2.0 - a)
case("mul_int", "mul", {"a": In(I32, ("n", 3)), "b": In(I32, (3,))}, F.mul, torch.mul)
case("pow", "pow", {"a": In(F32, ("n", 1, 4), positive), "b": In(F32, ("m", 4))}, F.pow, torch.pow)
case("pow_scalar", "pow", {"a": In(F32, ("n", 4))}, lambda a: F.pow(a, 2.0), lambda a: a ** 2)
case("div_int_truncates", "div", {"a": In(I32, ("n", 4)), "b": In(I32, (4,), nonzero_ints)}, F.div,
     lambda a, b: torch.div(a, b, rounding_mode="trunc"))
case("floor_divide_int", "floor_divide", {"a": In(I32, ("n", 4)), "b": In(I32, (4,), nonzero_ints)},
     F.floor_divide, lambda a, b: torch.floor_divide(a, b))
case("floor_divide_float", "floor_divide", {"a": In(F32, ("n", 1, 4)), "b": In(F32, ("m", 1), positive)},
     F.floor_divide, lambda a, b: torch.floor_divide(a, b))

_ICMP = {"a": In(I32, ("n", 1, 3)), "b": In(I32, ("m", 3))}
for _op, _ref in [("eq", torch.eq), ("ne", torch.ne), ("lt", torch.lt), ("le", torch.le),
                  ("gt", torch.gt), ("ge", torch.ge)]:
    case(f"{_op}_int_broadcast", _op, _ICMP, lambda a, b, _op=_op: getattr(F, _op)(a, b),
         lambda a, b, _ref=_ref: _ref(a, b))
case("lt_float_scalar", "lt", {"a": In(F32, ("n", 3))}, lambda a: F.lt(a, 0.25), lambda a: a < 0.25)
_BOOLS = {"a": In(BOOL, ("n", 3)), "b": In(BOOL, (3,))}
for _op, _ref in [("logical_and", torch.logical_and), ("logical_or", torch.logical_or),
                  ("logical_xor", torch.logical_xor)]:
    case(_op, _op, _BOOLS, lambda a, b, _op=_op: getattr(F, _op)(a, b), lambda a, b, _ref=_ref: _ref(a, b))
case("logical_not", "logical_not", {"a": In(BOOL, ("n", 3))}, F.logical_not, torch.logical_not)

# Unary and activations on x [n, 5].
_X = {"x": In(F32, ("n", 5))}
_XP = {"x": In(F32, ("n", 5), positive)}
for _op, _inputs, _ref in [
        ("exp", _X, torch.exp), ("log", _XP, torch.log), ("sqrt", _XP, torch.sqrt),
        ("rsqrt", _XP, torch.rsqrt), ("reciprocal", _XP, torch.reciprocal), ("abs", _X, torch.abs),
        ("neg", _X, torch.neg), ("sin", _X, torch.sin), ("cos", _X, torch.cos), ("erf", _X, torch.erf),
        ("floor", {"x": In(F32, ("n", 5), lambda s, d: torch.randn(s) * 3)}, torch.floor),
        ("relu", _X, torch.relu), ("sigmoid", _X, torch.sigmoid), ("tanh", _X, torch.tanh),
        ("silu", _X, TF.silu), ("softplus", _X, TF.softplus)]:
    case(_op, _op, _inputs, getattr(F, _op), _ref)
case("abs_int", "abs", {"x": In(I32, ("n", 5))}, F.abs, torch.abs)
case("neg_int", "neg", {"x": In(I64, ("n", 5))}, F.neg, torch.neg)
case("gelu_erf", "gelu", _X, F.gelu, TF.gelu)
case("gelu_tanh", "gelu", _X, lambda x: F.gelu(x, approximate="tanh"),
     lambda x: TF.gelu(x, approximate="tanh"))
case("leaky_relu", "leaky_relu", _X, lambda x: F.leaky_relu(x, 0.2), lambda x: TF.leaky_relu(x, 0.2))
case("swiglu", "swiglu", {"x": In(F32, ("n", 8))}, F.swiglu,
     lambda x: TF.silu(x[..., :4]) * x[..., 4:])
case("clamp_both", "clamp", _X, lambda x: F.clamp(x, -0.5, 0.5), lambda x: x.clamp(-0.5, 0.5))
case("clamp_min", "clamp", _X, lambda x: F.clamp(x, min=0.1), lambda x: x.clamp(min=0.1))
case("clamp_int", "clamp", {"x": In(I32, ("n", 5))}, lambda x: F.clamp(x, -1, 2), lambda x: x.clamp(-1, 2))
case("cast_f16", "cast", _X, lambda x: F.cast(x, "float16"), lambda x: x.half())
case("cast_f32_to_int_truncates", "cast", {"x": In(F32, ("n", 5), lambda s, d: torch.randn(s) * 4)},
     lambda x: F.cast(x, trtdsl.int32), lambda x: x.to(torch.int32))
case("cast_bool_to_float", "cast", {"x": In(BOOL, ("n", 5))}, lambda x: F.cast(x, torch.float32),
     lambda x: x.float())
case("where_scalar", "where", {"c": In(BOOL, ("n", 1)), "x": In(F32, ("n", 4))},
     lambda c, x: F.where(c, x, 0.0), lambda c, x: torch.where(c, x, torch.zeros(())))
case("where_broadcast", "where", {"c": In(BOOL, ("n", 1, 4)), "x": In(F32, ("m", 4)), "y": In(F32, (4,))},
     F.where, torch.where)
case("masked_fill", "masked_fill", {"x": In(F32, ("n", 4)), "m": In(BOOL, (1, 4))},
     lambda x, m: F.masked_fill(x, m, -1e9), lambda x, m: x.masked_fill(m, -1e9))

# Shapes and indexing on x [n, 2, 3].
_X3 = {"x": In(F32, ("n", 2, 3))}
case("reshape_infer", "reshape", _X3, lambda x: F.reshape(x, -1, 3), lambda x: x.reshape(-1, 3))
case("reshape_symbolic", "reshape", _X3, lambda x: F.reshape(x, x.shape[0], 6), lambda x: x.reshape(-1, 6))
case("reshape_tuple", "reshape", _X3, lambda x: F.reshape(x, (3, -1)), lambda x: x.reshape(3, -1))
case("view", "view", _X3, lambda x: F.view(x, x.shape[0] * 2, 3), lambda x: x.view(-1, 3))
case("permute", "permute", _X3, lambda x: F.permute(x, 2, 0, 1), lambda x: x.permute(2, 0, 1))
case("transpose", "transpose", _X3, lambda x: F.transpose(x, 0, -1), lambda x: x.transpose(0, -1))
case("unsqueeze", "unsqueeze", _X3, lambda x: F.unsqueeze(x, -1), lambda x: x.unsqueeze(-1))
case("squeeze_dim", "squeeze", {"x": In(F32, ("n", 1, 3))}, lambda x: F.squeeze(x, 1), lambda x: x.squeeze(1))
case("squeeze_all", "squeeze", {"x": In(F32, (1, "n", 1))}, F.squeeze, lambda x: x.reshape(-1),
     sizes=({"n": 3}, {"n": 5}))
case("flatten", "flatten", _X3, lambda x: F.flatten(x, 1), lambda x: x.flatten(1))
case("flatten_all", "flatten", _X3, F.flatten, lambda x: x.flatten())
case("expand_to_dynamic", "expand", {"x": In(F32, (1, 3)), "y": In(F32, ("n", 3))},
     lambda x, y: F.add(F.expand(x, y.shape[0], -1), y), lambda x, y: x.expand(y.shape[0], -1) + y)
case("expand_new_rank", "expand", {"x": In(F32, ("n", 1))}, lambda x: F.expand(x, 2, x.shape[0], 4),
     lambda x: x.expand(2, -1, 4))
case("slice_negative", "slice", _X3, lambda x: F.slice(x, -1, 1, -1), lambda x: x[..., 1:-1])
case("slice_dynamic_step", "slice", _X3, lambda x: F.slice(x, 0, 1, None, 2), lambda x: x[1::2])
case("slice_symbolic_end", "slice", _X3, lambda x: F.slice(x, 0, 0, x.shape[0] - 1), lambda x: x[:-1])
case("slice_tensor_bounds", "slice", {"x": In(F32, ("n", 3)), "s": In(I32, ()), "e": In(I64, (1,))},
     lambda x, s, e: F.slice(x, 0, s, e), lambda x, s, e: x[int(s):int(e)],
     sizes=({"n": 6}, {"n": 8}))
case("cat_last", "cat", {"a": In(F32, ("n", 2)), "b": In(F32, ("n", 3))}, lambda a, b: F.cat([a, b], -1),
     lambda a, b: torch.cat([a, b], -1))
case("concat_dynamic_axis", "concat", {"a": In(F32, ("n", 2)), "b": In(F32, ("m", 2))},
     lambda a, b: F.concat([a, b, a], 0), lambda a, b: torch.cat([a, b, a], 0))
case("stack", "stack", {"a": In(F32, ("n", 2)), "b": In(F32, ("n", 2))}, lambda a, b: F.stack([a, b], 1),
     lambda a, b: torch.stack([a, b], 1))
case("split_sections", "split", {"x": In(F32, ("n", 6))}, lambda x: F.split(x, [1, 2, 3], -1),
     lambda x: torch.split(x, [1, 2, 3], -1))
case("split_size_uneven", "split", {"x": In(F32, ("n", 7))}, lambda x: F.split(x, 3, dim=1),
     lambda x: torch.split(x, 3, 1))
case("chunk", "chunk", {"x": In(F32, ("n", 6))}, lambda x: F.chunk(x, 3, -1), lambda x: torch.chunk(x, 3, -1))
case("unbind", "unbind", _X3, lambda x: F.unbind(x, 1), lambda x: torch.unbind(x, 1))
case("getitem_mixed", "getitem", _X3, lambda x: F.getitem(x, (Ellipsis, builtins_slice(None, 2))),
     lambda x: x[..., :2])
case("getitem_int_none", "getitem", _X3, lambda x: F.getitem(x, (builtins_slice(None), None, -1, 0)),
     lambda x: x[:, None, -1, 0])
case("getitem_list", "getitem", _X3, lambda x: F.getitem(x, (Ellipsis, [2, 0])), lambda x: x[..., [2, 0]])

# Reductions, softmax, top-k.
_R = {"x": In(F32, ("n", 3, 4))}
for _op, _ref in [("sum", torch.sum), ("mean", torch.mean), ("max", torch.amax), ("min", torch.amin)]:
    case(f"{_op}_last", _op, _R, lambda x, _op=_op: getattr(F, _op)(x, -1), lambda x, _ref=_ref: _ref(x, -1))
    case(f"{_op}_multi_keepdim", _op, _R, lambda x, _op=_op: getattr(F, _op)(x, (0, 2), keepdim=True),
         lambda x, _ref=_ref: _ref(x, (0, 2), keepdim=True))
case("sum_all", "sum", _R, F.sum, torch.sum, tol={"atol": 1e-5, "rtol": 1e-5})
case("sum_int", "sum", {"x": In(I32, ("n", 4))}, lambda x: F.sum(x, 0), lambda x: x.sum(0).int())
case("max_int", "max", {"x": In(I32, ("n", 4))}, lambda x: F.max(x, 0), lambda x: x.amax(0))
case("prod", "prod", {"x": In(F32, ("n", 4), positive)}, lambda x: F.prod(x, -1), lambda x: x.prod(-1))
case("prod_int", "prod", {"x": In(I32, ("n", 3))}, lambda x: F.prod(x, 1), lambda x: x.prod(1).int())
case("prod_multi", "prod", {"x": In(F32, ("n", 2, 3), positive)}, lambda x: F.prod(x, (1, 2)),
     lambda x: x.prod(2).prod(1))
case("softmax_last", "softmax", _R, lambda x: F.softmax(x, -1), lambda x: torch.softmax(x, -1))
case("softmax_dynamic_axis", "softmax", _R, lambda x: F.softmax(x, 0), lambda x: torch.softmax(x, 0))
case("log_softmax", "log_softmax", _R, lambda x: F.log_softmax(x, 1), lambda x: torch.log_softmax(x, 1))
case("topk", "topk", {"x": In(F32, ("n", 6))}, lambda x: F.topk(x, 3), lambda x: torch.topk(x, 3))
case("topk_smallest_dim0", "topk", {"x": In(F32, ("n", 4))}, lambda x: F.topk(x, 1, dim=0, largest=False),
     lambda x: torch.topk(x, 1, dim=0, largest=False))
case("argmax", "argmax", {"x": In(F32, ("n", 6))}, F.argmax, lambda x: torch.argmax(x, -1))
case("argmax_ties_keepdim", "argmax", {"x": In(I32, ("n", 6), index_gen(2))},
     lambda x: F.argmax(x, 1, keepdim=True), lambda x: torch.argmax(x, 1, keepdim=True))
case("cumsum", "cumsum", {"x": In(I32, ("n", 4))}, lambda x: F.cumsum(x, 0), lambda x: torch.cumsum(x, 0))
case("cumsum_exclusive_reverse", "cumsum", {"x": In(F32, ("n", 4))},
     lambda x: F.cumsum(x, -1, exclusive=True, reverse=True),
     lambda x: torch.cumsum(x.flip(-1), -1).flip(-1) - x)

# Neural-network ops.
_W = torch.randn(6, 4)
_B = torch.randn(6)
case("matmul_2d", "matmul", {"a": In(F32, ("n", 4)), "b": In(F32, (4, "m"))}, F.matmul, torch.matmul)
case("matmul_batch_broadcast", "matmul", {"a": In(F32, (2, 1, "n", 3)), "b": In(F32, (4, 3, 5))},
     F.matmul, torch.matmul, tol={"atol": 1e-5, "rtol": 1e-5})
case("matmul_vector_left", "matmul", {"a": In(F32, (3,)), "b": In(F32, ("n", 3, 5))}, F.matmul, torch.matmul)
case("matmul_vector_right", "matmul", {"a": In(F32, ("n", 3)), "b": In(F32, (3,))}, F.matmul, torch.matmul)
case("matmul_transposes", "matmul", {"a": In(F32, (4, "n")), "b": In(F32, ("m", 4))},
     lambda a, b: F.matmul(a, b, transpose_a=True, transpose_b=True), lambda a, b: a.T @ b.T)
case("linear_bias", "linear", {"x": In(F32, ("n", 2, 4))}, lambda x: F.linear(x, _W, _B),
     lambda x: TF.linear(x, _W, _B))
case("linear_no_bias", "linear", {"x": In(F32, ("n", 4))}, lambda x: F.linear(x, _W), lambda x: x @ _W.T)
_TABLE = torch.randn(10, 4)
case("embedding", "embedding", {"ids": In(I32, ("n",), index_gen(10))}, lambda ids: F.embedding(ids, _TABLE),
     lambda ids: TF.embedding(ids.long(), _TABLE))
case("embedding_2d_ids", "embedding", {"ids": In(I64, ("n", 2), index_gen(10))},
     lambda ids: F.embedding(ids, _TABLE), lambda ids: TF.embedding(ids, _TABLE))
case("index_select", "index_select", {"x": In(F32, ("n", 5)), "i": In(I64, ("m",), index_gen(5))},
     lambda x, i: F.index_select(x, 1, i), lambda x, i: torch.index_select(x, 1, i))
case("gather", "gather", {"x": In(F32, ("n", 5)), "i": In(I32, ("n", 3), index_gen(5))},
     lambda x, i: F.gather(x, 1, i), lambda x, i: torch.gather(x, 1, i.long()))
_LW, _LB = torch.randn(8), torch.randn(8)
case("layer_norm", "layer_norm", {"x": In(F32, ("n", 2, 8))}, lambda x: F.layer_norm(x, 8, _LW, _LB),
     lambda x: TF.layer_norm(x, (8,), _LW, _LB), tol={"atol": 1e-5, "rtol": 1e-5})
case("layer_norm_2d_no_affine", "layer_norm", {"x": In(F32, ("n", 2, 4))},
     lambda x: F.layer_norm(x, (2, 4), eps=1e-3), lambda x: TF.layer_norm(x, (2, 4), eps=1e-3),
     tol={"atol": 1e-5, "rtol": 1e-5})
case("rms_norm", "rms_norm", {"x": In(F32, ("n", 8))}, lambda x: F.rms_norm(x, _LW, eps=1e-5),
     lambda x: TF.rms_norm(x, (8,), _LW, eps=1e-5), tol={"atol": 1e-5, "rtol": 1e-5})


def _rotate_half(x: torch.Tensor) -> torch.Tensor:  # Hugging Face Llama's formulation
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def _rotate_every_two(x: torch.Tensor) -> torch.Tensor:  # Hugging Face GPT-J's formulation
    x1, x2 = x[..., ::2], x[..., 1::2]
    return torch.stack((-x2, x1), dim=-1).flatten(-2)


_ROT = {"x": In(F32, ("n", 2, 8)), "c": In(F32, ("n", 1, 8)), "s": In(F32, ("n", 1, 8))}
case("rotary_neox", "rotary_embedding", _ROT, F.rotary_embedding,
     lambda x, c, s: x * c + _rotate_half(x) * s)
case("rotary_gptj", "rotary_embedding", _ROT, lambda x, c, s: F.rotary_embedding(x, c, s, style="gptj"),
     lambda x, c, s: x * c + _rotate_every_two(x) * s)
case("rotary_partial", "rotary_embedding",
     {"x": In(F32, ("n", 2, 8)), "c": In(F32, ("n", 1, 4)), "s": In(F32, ("n", 1, 4))},
     F.rotary_embedding,
     lambda x, c, s: torch.cat([x[..., :4] * c + _rotate_half(x[..., :4]) * s, x[..., 4:]], -1))
case("causal_mask_square", "causal_mask", {"x": In(F32, ("n", 2))},
     lambda x: F.causal_mask(x.shape[0], x.shape[0], network=x.network),
     lambda x: torch.ones(x.shape[0], x.shape[0], dtype=torch.bool).tril())
case("causal_mask_with_past", "causal_mask", {"x": In(F32, ("n", 2))},
     lambda x: F.causal_mask(x.shape[0], x.shape[0] + 3, network=x.network),
     lambda x: torch.ones(x.shape[0], x.shape[0] + 3, dtype=torch.bool).tril(3))
_QKV = {"q": In(F32, (1, 2, "n", 4)), "k": In(F32, (1, 2, "n", 4)), "v": In(F32, (1, 2, "n", 4))}
case("sdpa_causal", "scaled_dot_product_attention", _QKV,
     lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
     lambda q, k, v: TF.scaled_dot_product_attention(q, k, v, is_causal=True))
case("sdpa_float_mask_scale", "scaled_dot_product_attention", {**_QKV, "m": In(F32, ("n", "n"))},
     lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m, scale=0.3),
     lambda q, k, v, m: TF.scaled_dot_product_attention(q, k, v, attn_mask=m, scale=0.3))
case("sdpa_bool_mask", "scaled_dot_product_attention",
     {**_QKV, "m": In(BOOL, ("n", "n"), lambda s, d: (torch.rand(s) > 0.5) | torch.eye(s[0], dtype=torch.bool))},
     lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m),
     lambda q, k, v, m: TF.scaled_dot_product_attention(q, k, v, attn_mask=m))
case("sdpa_gqa", "scaled_dot_product_attention",
     {"q": In(F32, (1, 4, "n", 4)), "k": In(F32, (1, 2, "m", 4)), "v": In(F32, (1, 2, "m", 4))},
     lambda q, k, v: F.scaled_dot_product_attention(q, k, v, enable_gqa=True),
     lambda q, k, v: TF.scaled_dot_product_attention(q, k, v, enable_gqa=True))
case("arange", "arange", {"x": In(F32, ("n",))}, lambda x: F.arange(x.shape[0]),
     lambda x: torch.arange(x.shape[0], dtype=torch.int32))
case("arange_step_float", "arange", {"x": In(F32, ("n",))},
     lambda x: F.arange(2, x.shape[0] + 2, 3, dtype="float32", network=x.network),
     lambda x: torch.arange(2, x.shape[0] + 2, 3, dtype=torch.float32))
case("full", "full", {"x": In(F32, ("n", 3))}, lambda x: F.add(F.full((x.shape[0], 3), 1.5), x),
     lambda x: x + 1.5)
case("full_int", "full", {"x": In(F32, ("n",))}, lambda x: F.full((2, x.shape[0]), 7, "int64"),
     lambda x: torch.full((2, x.shape[0]), 7))
_C = torch.randn(3)
case("constant", "constant", {"x": In(F32, ("n", 3))}, lambda x: F.add(x, F.constant(_C)), lambda x: x + _C)
case("constant_python", "constant", {"x": In(I32, ("n", 2))},
     lambda x: F.mul(x, F.constant([2, 3], "int32")), lambda x: x * torch.tensor([2, 3], dtype=torch.int32))
case("shape_of", "shape_of", _X3, F.shape_of, lambda x: torch.tensor(x.shape))


import builtins  # noqa: E402

builtins_slice = builtins.slice

# -- Tensor operators and methods (they call the ops above; checked here as users write them) ---------
case("op_arith", (), {"a": In(F32, ("n", 1, 3)), "b": In(F32, ("m", 3), positive)},
     lambda a, b: [a + b, a - b, a * b, a / b, b ** 2.0, -a, 1.0 - a, 2.0 * a, 1.0 / b, 2.0 ** a, a + 1],
     lambda a, b: [a + b, a - b, a * b, a / b, b ** 2.0, -a, 1.0 - a, 2.0 * a, 1.0 / b, 2.0 ** a, a + 1])
case("op_floordiv_int", (), {"a": In(I32, ("n", 3)), "b": In(I32, (3,), nonzero_ints)},
     lambda a, b: [a // b, 7 // b, a // 2], lambda a, b: [a // b, 7 // b, a // 2])
case("op_matmul", (), {"a": In(F32, ("n", 3)), "b": In(F32, (3, 2))}, lambda a, b: [a @ b, a.matmul(b)],
     lambda a, b: [a @ b, a @ b])
case("op_compare", (), {"a": In(I32, ("n", 3)), "b": In(I32, (3,))},
     lambda a, b: [a < b, a <= b, a > b, a >= b, a == b, a != b, a == 1, a.eq(b), a.ne(b)],
     lambda a, b: [a < b, a <= b, a > b, a >= b, a == b, a != b, a == 1, a == b, a != b])
case("op_logical", (), {"a": In(BOOL, ("n", 3)), "b": In(BOOL, (3,))},
     lambda a, b: [a & b, a | b, a ^ b, ~a], lambda a, b: [a & b, a | b, a ^ b, ~a])
case("op_index_negative", (), _X3, lambda x: [x[-1], x[:, -1], x[..., -2:], x[::2, 1, -3]],
     lambda x: [x[-1], x[:, -1], x[..., -2:], x[::2, 1, -3]])
case("op_index_symbolic", (), {"x": In(F32, ("n", 3)), "y": In(F32, ("m", 3))},
     lambda x, y: [x[: x.shape[0] - 1], x[1: x.shape[0]]], lambda x, y: [x[:-1], x[1:]],
     sizes=({"n": 3, "m": 2}, {"n": 6, "m": 4}))
_ANY_BOUND = In(I32, (), lambda s, d: torch.randint(-9, 9, s).to(d))
case("op_index_tensor_bounds", (), {"x": In(F32, ("n", 3)), "s": _ANY_BOUND, "i": In(I64, (2,), index_gen(3))},
     lambda x, s, i: [x[s:], x[:s], x[1:s], x[s:-1], x[:, i]],
     lambda x, s, i: [x[int(s):], x[:int(s)], x[1:int(s)], x[int(s):-1], x[:, i]],
     sizes=({"n": 5}, {"n": 7}, {"n": 4}, {"n": 8}))
case("op_methods", (), _X3,
     lambda x: [x.view(-1, 6), x.reshape(x.shape[0], 6), x.permute(1, 2, 0), x.transpose(1, 2),
                x.cast("float16"), x.to(trtdsl.bfloat16), x.unsqueeze(0), x.flatten(1),
                x.softmax(-1), x.sum(-1), x.mean(1), x.max(-1), x.min(0), x.exp(), x.abs().sqrt()],
     lambda x: [x.view(-1, 6), x.reshape(-1, 6), x.permute(1, 2, 0), x.transpose(1, 2), x.half(),
                x.bfloat16(), x.unsqueeze(0), x.flatten(1), x.softmax(-1), x.sum(-1), x.mean(1),
                x.amax(-1), x.amin(0), x.exp(), x.abs().sqrt()])
case("op_split_chunk_squeeze_expand", (), {"x": In(F32, ("n", 1, 4))},
     lambda x: [*x.split([1, 3], -1), *x.chunk(2, -1), x.squeeze(1), x.expand(-1, 3, 4)],
     lambda x: [*x.split([1, 3], -1), *x.chunk(2, -1), x.squeeze(1), x.expand(-1, 3, 4)])


@covers()
def test_tensor_shape_dtype_and_python_protocols() -> None:
    net = trtdsl.Network("props")
    x = net.add_input("x", "bfloat16", ["n", 4])
    assert x.dtype is trtdsl.bfloat16 and x.ndim == 2
    assert repr(x.shape) == "(n, 4)" and x.shape[1] == 4 and x.size(1) == 4
    y = x.view(x.shape[0] * 4)
    assert repr(y.shape) == "(4*n,)"
    with pytest.raises(trtdsl.errors.NetworkError, match="truth value"):
        bool(x > 0.0)
    with pytest.raises(trtdsl.errors.NetworkError, match="not static"):
        len(x)
    assert len(net.add_input("z", "int32", [3])) == 3
    assert {x: 1}[x] == 1 and x in [x]  # hashing and containers go by identity




@pytest.mark.parametrize("c", CASES, ids=[c.id for c in CASES])
def test_op_against_torch(c: Case) -> None:
    run_case(c)


@covers("plugin")
def test_plugin_op_runs_registered_reference() -> None:
    """A tiny plugin registered by the test: shape rule at build time, reference at run time."""
    def shape_rule(inputs: list, fields: dict) -> list:
        return [(inputs[0].dtype, inputs[0].shape), (trtdsl.int32, (inputs[0].shape[0],))]

    def reference(ins: list, fields: dict, hints: dict) -> list:
        x, y = ins
        return [x * fields["scale"] + y, torch.full((x.shape[0],), x.shape[1], dtype=torch.int32)]

    register_plugin(PluginSpec("test.scale_add", shape_rule, reference))
    try:
        run_case(Case("plugin", ("plugin",), {"x": In(F32, ("n", 3)), "y": In(F32, (3,))},
                      lambda x, y: F.plugin("test.scale_add", [x, y], scale=2.5),
                      lambda x, y: [x * 2.5 + y, torch.full((x.shape[0],), 3, dtype=torch.int32)]))
    finally:
        unregister_plugin("test.scale_add")


def test_every_op_is_tested() -> None:
    assert len(F.__all__) >= 60
    untested = sorted(set(F.__all__) - TESTED)
    assert not untested, f"ops in trtdsl.functional.__all__ with no test against torch: {untested}"
    assert not TESTED - set(F.__all__), f"tests name unknown ops: {sorted(TESTED - set(F.__all__))}"
