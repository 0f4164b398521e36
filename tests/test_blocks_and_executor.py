"""A small MLP and a causal self-attention block as trtdsl Modules against the same blocks in
torch.nn (same weights); the executor in float32/float16/bfloat16; separate networks; plugins."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as TF

import trtdsl
import trtdsl.functional as F
from trtdsl import Module, Parameter
from trtdsl.backends.torch_executor import TorchExecutor
from trtdsl.errors import PluginError, ScopeError
from trtdsl.ir import network as _network
from trtdsl.plugins.registry import PluginSpec, register_plugin, unregister_plugin

_TOL = {torch.float32: {}, torch.float16: {"atol": 1e-2, "rtol": 1e-2},
        torch.bfloat16: {"atol": 5e-2, "rtol": 3e-2}}


class Linear(Module):
    def __init__(self, n_in: int, n_out: int, dtype: str) -> None:
        super().__init__()
        self.weight = Parameter((n_out, n_in), dtype)
        self.bias = Parameter((n_out,), dtype)

    def forward(self, x: trtdsl.Tensor) -> trtdsl.Tensor:
        return F.linear(x, self.weight, self.bias)


class MLP(Module):
    def __init__(self, d: int, hidden: int, dtype: str = "float32") -> None:
        super().__init__()
        self.fc1 = Linear(d, hidden, dtype)
        self.fc2 = Linear(hidden, d, dtype)

    def forward(self, x: trtdsl.Tensor) -> trtdsl.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class TorchMLP(torch.nn.Module):
    def __init__(self, d: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = torch.nn.Linear(d, hidden), torch.nn.Linear(hidden, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(TF.gelu(self.fc1(x)))


class CausalSelfAttention(Module):
    """Parameter names follow torch.nn.MultiheadAttention, so its state dict loads as is."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.d, self.heads = d, heads
        self.in_proj_weight = Parameter((3 * d, d))
        self.in_proj_bias = Parameter((3 * d,))
        self.out_proj = Linear(d, d, "float32")

    def forward(self, x: trtdsl.Tensor) -> trtdsl.Tensor:
        b, s = x.shape[0], x.shape[1]
        q, k, v = F.split(F.linear(x, self.in_proj_weight, self.in_proj_bias), self.d, dim=-1)
        q, k, v = (t.view(b, s, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out_proj(out.transpose(1, 2).reshape(b, s, self.d))


def _build(module: Module, dtype: str, shape: list) -> TorchExecutor:
    net = trtdsl.Network(type(module).__name__)
    module(net.add_input("x", dtype, shape)).mark_output("y")
    net.add_profile({d: (1, 4, 16) for d in shape if isinstance(d, str)})
    return TorchExecutor(net)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_mlp_matches_torch_nn(dtype: torch.dtype) -> None:
    ref = TorchMLP(8, 32).to(dtype)
    mlp = MLP(8, 32, trtdsl.dtypes.dtype_of(dtype).value)
    mlp.load_state_dict(ref.state_dict())
    ex = _build(mlp, trtdsl.dtypes.dtype_of(dtype).value, ["batch", "seq", 8])
    for b, s in [(2, 3), (1, 7)]:
        x = torch.randn(b, s, 8).to(dtype)
        y = ex.run({"x": x})["y"]
        assert y.dtype == dtype
        torch.testing.assert_close(y, ref(x).detach(), **_TOL[dtype])


def test_causal_self_attention_matches_torch_multihead_attention() -> None:
    ref = torch.nn.MultiheadAttention(16, 4, batch_first=True)
    block = CausalSelfAttention(16, 4)
    block.load_state_dict(ref.state_dict())
    ex = _build(block, "float32", ["batch", "seq", 16])
    for b, s in [(2, 5), (3, 2)]:
        x = torch.randn(b, s, 16)
        mask = torch.nn.Transformer.generate_square_subsequent_mask(s)
        want, _ = ref(x, x, x, attn_mask=mask, need_weights=False)
        torch.testing.assert_close(ex.run({"x": x})["y"], want.detach(), atol=1e-5, rtol=1e-5)


_HALF_OPS = {
    "add": (lambda a, b: a + b, lambda a, b: a + b),
    "mul_scalar": (lambda a, b: a * 0.5, lambda a, b: a * 0.5),
    "matmul": (lambda a, b: a @ F.transpose(b, 0, 1), lambda a, b: a @ b.T),
    "softmax": (lambda a, b: F.softmax(a, -1), lambda a, b: torch.softmax(a.float(), -1).to(a.dtype)),
    "rms_norm": (lambda a, b: F.rms_norm(a, eps=1e-5), lambda a, b: TF.rms_norm(a, (8,), eps=1e-5)),
    "layer_norm": (lambda a, b: F.layer_norm(a, 8), lambda a, b: TF.layer_norm(a, (8,))),
    "silu": (lambda a, b: F.silu(a), lambda a, b: TF.silu(a)),
    "exp_sum": (lambda a, b: F.sum(F.exp(a), -1), lambda a, b: a.exp().sum(-1)),
    "cast": (lambda a, b: F.cast(a, "float32"), lambda a, b: a.float()),
    "sdpa": (lambda a, b: F.scaled_dot_product_attention(a, b, b, is_causal=True),
             lambda a, b: TF.scaled_dot_product_attention(a[None], b[None], b[None], is_causal=True)[0]),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("op", sorted(_HALF_OPS))
def test_ops_in_each_float_dtype(op: str, dtype: torch.dtype) -> None:
    build, ref = _HALF_OPS[op]
    net = trtdsl.Network(op)
    dt = trtdsl.dtypes.dtype_of(dtype)
    a, b = net.add_input("a", dt, ["n", 8]), net.add_input("b", dt, ["n", 8])
    build(a, b).mark_output("y")
    net.add_profile(n=(1, 4, 8))
    av, bv = torch.randn(5, 8).to(dtype), torch.randn(5, 8).to(dtype)
    got = TorchExecutor(net).run({"a": av, "b": bv})["y"]
    torch.testing.assert_close(got, ref(av, bv), **_TOL[dtype])


def test_two_networks_built_interleaved_stay_separate() -> None:
    mlp = MLP(4, 8)
    mlp.load_state_dict({k: torch.randn(v.shape) for k, v in mlp.named_parameters()})
    n1, n2 = trtdsl.Network("one"), trtdsl.Network("two")
    x1, x2 = n1.add_input("x", "float32", ["n", 4]), n2.add_input("x", "float32", ["n", 4])
    h1 = mlp(x1)
    h2 = F.relu(x2)
    with n1.scope():
        with n2.scope():
            r2 = F.arange(x2.shape[0])  # the innermost scope
        r1 = F.arange(4)
    h2 = mlp(h2)
    y1, y2 = h1 + F.cast(r1, "float32"), h2 * 2.0
    y1.mark_output("y")
    y2.mark_output("y")
    r2.mark_output("r")
    assert r1.network is n1 and r2.network is n2
    for net in (n1, n2):
        own = {id(t) for t in net.inputs.values()} | {id(t) for la in net.layers for t in la.outputs}
        assert all(id(t) in own for la in net.layers for t in la.inputs)
    # Each network got its own constants for the shared weights.
    assert sum(la.name == "fc1.weight" for la in n1.layers) == 1
    assert sum(la.name == "fc1.weight" for la in n2.layers) == 1
    n1.add_profile(n=(1, 2, 4))
    n2.add_profile(n=(1, 2, 4))
    xv = torch.randn(3, 4)
    out1, out2 = TorchExecutor(n1).run({"x": xv}), TorchExecutor(n2).run({"x": xv})
    ref = TorchMLP(4, 8)
    ref.load_state_dict(mlp.state_dict())
    torch.testing.assert_close(out1["y"], ref(xv).detach() + torch.arange(4.0))
    torch.testing.assert_close(out2["y"], ref(torch.relu(xv)).detach() * 2)
    assert torch.equal(out2["r"], torch.arange(3, dtype=torch.int32))


def test_scope_is_closed_even_when_the_body_raises() -> None:
    net = trtdsl.Network("raises")
    with pytest.raises(RuntimeError):
        with net.scope():
            raise RuntimeError("boom")
    assert _network._ACTIVE.get() == []
    with pytest.raises(ScopeError):
        F.arange(3)


@pytest.fixture
def plugin_name():
    name = "test.double"
    yield name
    unregister_plugin(name)


def _double_net(name: str) -> tuple:
    net = trtdsl.Network("plug")
    x = net.add_input("x", "float32", ["n"])
    (y,) = F.plugin(name, [x], factor=2.0)
    y.mark_output("y")
    net.add_profile(n=(1, 2, 8))
    return net, x


def test_plugin_device_implementation_is_preferred_over_the_reference(plugin_name: str) -> None:
    calls: list[str] = []

    def reference(ins, fields, hints):
        calls.append("reference")
        return ins[0] * fields["factor"]

    def cpu_kernel(ins, fields, hints):
        calls.append(f"cpu kernel, hints={hints}")
        return ins[0] * fields["factor"]

    register_plugin(PluginSpec(plugin_name, lambda ins, f: [(ins[0].dtype, ins[0].shape)], reference,
                               implementations={"cpu": cpu_kernel}))
    net, _ = _double_net(plugin_name)
    x = torch.randn(3)
    torch.testing.assert_close(TorchExecutor(net).run({"x": x}, hints={"max_q_len": 3})["y"], 2 * x)
    torch.testing.assert_close(TorchExecutor(net, use_plugin_kernels=False).run({"x": x})["y"], 2 * x)
    assert calls == ["cpu kernel, hints={'max_q_len': 3}", "reference"]


def test_plugin_that_mutates_runs_without_consumers_and_bad_outputs_are_caught(plugin_name: str) -> None:
    def write(ins, fields, hints):
        ins[1].add_(ins[0].sum())  # in-place update, like the K/V cache write
        return ins[0].to(torch.float16)  # wrong dtype: the shape rule says float32

    register_plugin(PluginSpec(plugin_name, lambda ins, f: [(ins[0].dtype, ins[0].shape)], write,
                               mutates=(1,)))
    net = trtdsl.Network("mut")
    x, cache = net.add_input("x", "float32", [3]), net.add_input("cache", "float32", [2])
    F.plugin(plugin_name, [x, cache])
    (x * 1.0).mark_output("y")  # nothing reads the plugin's output
    ex = TorchExecutor(net)
    buf = torch.zeros(2)
    with pytest.raises(PluginError, match="output 0 is torch.float16.*declares float32"):
        ex.run({"x": torch.ones(3), "cache": buf})
    assert torch.equal(buf, torch.full((2,), 3.0))  # it ran although no output depends on it


def test_dead_layers_are_not_run() -> None:
    net = trtdsl.Network("dead")
    x = net.add_input("x", "float32", ["n"])
    F.log(x - 100.0)  # unused: never evaluated
    (x + 1.0).mark_output("y")
    net.add_profile(n=(1, 2, 4))
    ex = TorchExecutor(net)
    assert len(ex._plan) < len(net.layers)
    torch.testing.assert_close(ex.run({"x": torch.ones(2)})["y"], torch.full((2,), 2.0))
