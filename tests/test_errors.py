"""The common mistakes raise typed errors whose messages name the op, the inputs and what to do."""

from __future__ import annotations

import re

import pytest
import torch

import trtdsl
import trtdsl.functional as F
from trtdsl.backends.torch_executor import TorchExecutor
from trtdsl.errors import (BackendError, DTypeError, NetworkError, PluginError, ProfileError, ScopeError,
                           ShapeError, TrtdslError)


def _net(*inputs: tuple) -> tuple:
    net = trtdsl.Network("errs")
    return (net, *[net.add_input(f"in{i}", dt, shape) for i, (dt, shape) in enumerate(inputs)])


def _raises(kind: type, *words: str):
    """pytest.raises for ``kind`` whose message contains every one of ``words`` (literally)."""
    return pytest.raises(kind, match="(?s)" + "".join(f"(?=.*{re.escape(w)})" for w in words))


def test_mismatched_dtypes_name_op_and_both_inputs() -> None:
    _, a, b = _net(("float32", ["n", 4]), ("float16", ["n", 4]))
    with _raises(DTypeError, "add", "different dtypes", "'in0': float32", "'in1': float16", "cast"):
        F.add(a, b)
    with _raises(DTypeError, "matmul", "different dtypes"):
        a @ F.transpose(b, 0, 1)


def test_float_scalar_with_int_tensor_and_float_only_ops() -> None:
    _, i = _net(("int32", ["n"]))
    with _raises(DTypeError, "mul", "float scalar 0.5 with integer tensor", "'in0': int32"):
        i * 0.5
    with _raises(DTypeError, "exp", "float32/float16/bfloat16", "int32", "cast"):
        F.exp(i)
    with _raises(DTypeError, "logical_and", "bool inputs"):
        F.logical_and(i, i)
    with _raises(DTypeError, "where", "condition must be bool"):
        F.where(i, i, i)


def test_non_broadcastable_shapes() -> None:
    _, a, b = _net(("float32", ["n", 3]), ("float32", [4]))
    with _raises(ShapeError, "add", "do not broadcast", "3", "4", "'in0': float32(n, 3)", "'in1': float32(4,)"):
        a + b


def test_matmul_inner_dim_mismatch() -> None:
    _, a, b = _net(("float32", ["n", 4]), ("float32", [3, 5]))
    with _raises(ShapeError, "matmul", "inner dims differ: 4 (a) vs 3 (b)", "transpose_b"):
        a @ b
    with _raises(ShapeError, "linear", "input features 4 != weight in-features 3"):
        F.linear(a, torch.randn(5, 3))


def test_bad_reshape() -> None:
    _, x, y = _net(("float32", [2, 3]), ("float32", ["n", 3]))
    with _raises(ShapeError, "reshape", "6 elements", "(4, 2)"):
        x.view(4, 2)
    with _raises(ShapeError, "reshape", "more than one -1"):
        x.view(-1, -1)
    with _raises(ShapeError, "reshape", "cannot infer -1"):
        y.view(-1, 2)  # 3*n elements do not provably split into pairs


def test_axis_out_of_range() -> None:
    _, x = _net(("float32", ["n", 3]))
    for call, op in [(lambda: F.softmax(x, 2), "softmax"), (lambda: F.sum(x, -3), "sum"),
                     (lambda: x.transpose(0, 5), "transpose"), (lambda: F.cat([x, x], 2), "cat"),
                     (lambda: F.unsqueeze(x, 4), "unsqueeze")]:
        with _raises(ShapeError, op, "out of range for a rank-"):
            call()
    with _raises(ShapeError, "getitem", "index 3 is out of range for dim 1 of size 3"):
        x[:, 3]
    with _raises(ShapeError, "squeeze", "dim 1 has size 3, not 1"):
        F.squeeze(x, 1)


def test_tensors_of_two_networks_cannot_mix() -> None:
    _, a = _net(("float32", [3]))
    _, b = _net(("float32", [3]))
    with _raises(NetworkError, "add", "different networks"):
        a + b
    with _raises(NetworkError, "belongs to network"):
        b.network.mark_output(a, "a")


def test_tensor_less_op_needs_a_scope() -> None:
    with _raises(ScopeError, "no tensor input", "network.scope()"):
        F.arange(5)
    with _raises(ScopeError, "network.scope()"):
        F.full((2, 2), 0.0)
    net = trtdsl.Network("scoped")
    with net.scope():
        assert F.arange(5).network is net


def _runner() -> TorchExecutor:
    net, x, p = _net(("float32", ["batch", "seq", 8]), ("int32", ["batch"]))
    (F.sum(x, 1) + F.cast(p, "float32").view(-1, 1)).mark_output("y")
    net.add_profile(batch=(1, 2, 4), seq=(1, 8, 16))
    return TorchExecutor(net)


def test_run_time_input_outside_profile_names_only_that_input_dim_and_range() -> None:
    ex = _runner()
    with pytest.raises(ProfileError) as err:
        ex.run({"in0": torch.randn(2, 17, 8), "in1": torch.zeros(2, dtype=torch.int32)})
    msg = str(err.value)
    assert "input 'in0' dim 1 ('seq') is 17" in msg and "[1, 16]" in msg
    assert "batch" not in msg and "in1" not in msg  # only the offending dim is named
    with _raises(ProfileError, "input 'in0' dim 0 and input 'in1' dim 0 ('batch') is 5", "[1, 4]"):
        ex.run({"in0": torch.randn(5, 3, 8), "in1": torch.zeros(5, dtype=torch.int32)})


def test_bad_profiles() -> None:
    net, _ = _net(("float32", ["batch", 8]))
    with _raises(ProfileError, "no range for dynamic dims ['batch']"):
        net.add_profile(seq=(1, 2, 3))
    with _raises(ProfileError, "'batch'", "min <= opt <= max"):
        net.add_profile(batch=(4, 2, 8))


def test_wrong_input_dtype_rank_shape_and_missing_input() -> None:
    ex = _runner()
    ok_p = torch.zeros(2, dtype=torch.int32)
    with _raises(DTypeError, "input 'in0'", "torch.float16", "float32"):
        ex.run({"in0": torch.randn(2, 3, 8).half(), "in1": ok_p})
    with _raises(ShapeError, "input 'in0'", "rank 2", "expects rank 3"):
        ex.run({"in0": torch.randn(2, 8), "in1": ok_p})
    with _raises(ShapeError, "input 'in0'", "dim 2 is 5", "expects 8"):
        ex.run({"in0": torch.randn(2, 3, 5), "in1": ok_p})
    with _raises(ShapeError, "missing inputs ['in1']"):
        ex.run({"in0": torch.randn(2, 3, 8)})
    with _raises(ShapeError, "input 'in1'", "'batch'", "is 3", "= 2"):
        ex.run({"in0": torch.randn(2, 3, 8), "in1": torch.zeros(3, dtype=torch.int32)})
    with _raises(DTypeError, "input 'in1'", "torch.Tensor", "list"):
        ex.run({"in0": torch.randn(2, 3, 8), "in1": [0, 0]})


def test_run_time_failure_names_the_layer_and_module() -> None:
    class Adder(trtdsl.Module):
        def forward(self, a: trtdsl.Tensor, b: trtdsl.Tensor) -> trtdsl.Tensor:
            return a + b

    class Outer(trtdsl.Module):
        def __init__(self) -> None:
            super().__init__()
            self.adder = Adder()

        def forward(self, a: trtdsl.Tensor, b: trtdsl.Tensor) -> trtdsl.Tensor:
            return self.adder(a, b)

    net, a, b = _net(("float32", ["n"]), ("float32", ["m"]))  # n == m cannot be proven at build time
    Outer()(a, b).mark_output("y")
    net.add_profile(n=(1, 2, 4), m=(1, 2, 4))
    with _raises(BackendError, "layer 'adder.add'", "module 'adder'", "input shapes: [(2,), (3,)]"):
        TorchExecutor(net).run({"in0": torch.randn(2), "in1": torch.randn(3)})


def test_network_without_outputs_and_unknown_plugin() -> None:
    net, x = _net(("float32", [2]))
    with _raises(BackendError, "no outputs", "mark_output"):
        TorchExecutor(net)
    with _raises(PluginError, "unknown plugin 'no.such.plugin'"):
        F.plugin("no.such.plugin", [x])


def test_every_error_is_a_trtdsl_error() -> None:
    for kind in (ShapeError, DTypeError, NetworkError, ScopeError, ProfileError, BackendError, PluginError):
        assert issubclass(kind, TrtdslError)
