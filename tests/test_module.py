"""Module system: registration, traversal, state dicts, layer naming by module path, debug outputs."""

from __future__ import annotations

import pytest
import torch

import trtdsl
import trtdsl.functional as F
from trtdsl import Module, ModuleDict, ModuleList, Parameter
from trtdsl.backends.torch_executor import TorchExecutor
from trtdsl.errors import CheckpointError, NetworkError


class Linear(Module):
    def __init__(self, n_in: int, n_out: int, bias: bool = True) -> None:
        super().__init__()
        self.weight = Parameter((n_out, n_in))
        self.bias = Parameter((n_out,)) if bias else None

    def forward(self, x: trtdsl.Tensor) -> trtdsl.Tensor:
        return F.linear(x, self.weight, self.bias)


class Block(Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.attention = ModuleDict({"qkv": Linear(d, 3 * d), "out": Linear(3 * d, d, bias=False)})
        self.norm = Parameter((d,))

    def forward(self, x: trtdsl.Tensor) -> trtdsl.Tensor:
        h = F.rms_norm(x, self.norm)
        return x + self.attention["out"](F.relu(self.attention["qkv"](h)))


class Stack(Module):
    def __init__(self, d: int, n: int) -> None:
        super().__init__()
        self.layers = ModuleList([Block(d) for _ in range(n)])

    def forward(self, x: trtdsl.Tensor) -> trtdsl.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class Model(Module):
    def __init__(self, d: int = 4, n: int = 4) -> None:
        super().__init__()
        self.model = Stack(d, n)
        self.head = Linear(d, 6, bias=False)
        self.tied = self.head.weight  # a tied parameter: one Parameter under two names

    def forward(self, x: trtdsl.Tensor) -> trtdsl.Tensor:
        return self.head(self.model(x))


def _random_state(model: Module) -> dict[str, torch.Tensor]:
    return {name: torch.randn(p.shape) for name, p in model.named_parameters()}


def test_registration_and_traversal() -> None:
    m = Model(d=4, n=2)
    names = [n for n, _ in m.named_modules()]
    assert names == ["", "model", "model.layers", "model.layers.0", "model.layers.0.attention",
                     "model.layers.0.attention.qkv", "model.layers.0.attention.out", "model.layers.1",
                     "model.layers.1.attention", "model.layers.1.attention.qkv",
                     "model.layers.1.attention.out", "head"]
    params = dict(m.named_parameters())
    assert list(params) == ["tied", "model.layers.0.norm", "model.layers.0.attention.qkv.weight",
                            "model.layers.0.attention.qkv.bias", "model.layers.0.attention.out.weight",
                            "model.layers.1.norm", "model.layers.1.attention.qkv.weight",
                            "model.layers.1.attention.qkv.bias", "model.layers.1.attention.out.weight"]
    assert params["model.layers.1.attention.qkv.weight"].shape == (12, 4)
    assert m.num_parameters() == 2 * (4 + 12 * 4 + 12 + 4 * 12) + 6 * 4
    assert len(m.model.layers) == 2 and isinstance(m.model.layers[1], Block)
    assert "qkv" in m.model.layers[0].attention and list(m.model.layers[0].attention.keys()) == ["qkv", "out"]
    # Re-assigning an attribute replaces the registration instead of adding a second one.
    m.head = Linear(4, 6)
    assert "head.bias" in dict(m.named_parameters())
    m.head = None
    assert not any(n.startswith("head") for n, _ in m.named_modules())


def test_module_needs_super_init() -> None:
    class Broken(Module):
        def __init__(self) -> None:
            self.w = Parameter((2,))

    with pytest.raises(AttributeError, match="must call super"):
        Broken()


def test_state_dict_round_trip_and_tied_weights() -> None:
    m = Model()
    state = _random_state(m)
    m.load_state_dict(state)
    sd = m.state_dict()
    assert set(sd) == set(state) | {"head.weight"}  # the tied weight under both names
    assert sd["head.weight"] is sd["tied"]
    for name, value in state.items():
        assert torch.equal(sd[name], value)
    other = Model()
    other.load_state_dict(sd)  # both names of the tied weight given: accepted
    assert torch.equal(other.head.weight.value, state["tied"])


def test_strict_load_lists_every_problem_and_loads_nothing() -> None:
    m = Model(n=4)
    state = _random_state(m)
    del state["model.layers.3.attention.qkv.bias"]
    del state["model.layers.0.norm"]
    state["model.layers.9.norm"] = torch.randn(4)
    state["model.layers.1.attention.qkv.weight"] = torch.randn(12, 5)
    state["model.layers.2.norm"] = torch.randn(4, dtype=torch.float64)
    with pytest.raises(CheckpointError) as err:
        m.load_state_dict(state)
    msg = str(err.value)
    assert "(5 problems)" in msg
    for line in ["missing: model.layers.3.attention.qkv.bias float32(12,)",
                 "missing: model.layers.0.norm float32(4,)",
                 "unexpected: model.layers.9.norm (4,)",
                 "shape mismatch: model.layers.1.attention.qkv.weight is (12, 5) in the checkpoint, "
                 "the model expects (12, 4)",
                 "dtype mismatch: model.layers.2.norm is torch.float64 in the checkpoint, the model "
                 "expects float32"]:
        assert line in msg
    assert all(p.value is None for p in m.parameters())  # nothing loaded
    m.load_state_dict({"model.layers.1.norm": torch.ones(4)}, strict=False)
    assert torch.equal(m.model.layers[1].norm.value, torch.ones(4))


def test_parameter_value_checks_and_empty_parameter_error() -> None:
    p = Parameter((2, 3), "float16")
    with pytest.raises(CheckpointError, match=r"value shape \(3, 2\) != declared \(2, 3\)"):
        p.set_value(torch.zeros(3, 2, dtype=torch.float16))
    with pytest.raises(CheckpointError, match="dtype torch.float32 != declared float16"):
        p.set_value(torch.zeros(2, 3))
    m = Model()
    net = trtdsl.Network("empty")
    with pytest.raises(NetworkError, match="parameter 'model.layers.0.norm' .* has no value; load a state dict"):
        m(net.add_input("x", "float32", ["n", 4]))


def _built(n_layers: int = 4) -> tuple:
    m = Model(n=n_layers)
    m.load_state_dict(_random_state(m))
    net = trtdsl.Network("named")
    x = net.add_input("x", "float32", ["n", 4])
    m(x).mark_output("logits")
    net.add_profile(n=(1, 2, 8))
    return m, net


def test_layer_names_carry_module_paths() -> None:
    _, net = _built()
    names = [layer.name for layer in net.layers]
    assert "model.layers.3.attention.qkv.matmul" in names
    assert "model.layers.3.attention.qkv.add" in names
    assert "model.layers.3.rms_norm" in names and "head.matmul" in names
    assert "model.layers.3.attention.qkv.weight" in names  # weights keep their checkpoint names
    const = next(la for la in net.layers if la.name == "model.layers.3.attention.qkv.weight")
    assert const.attrs["weight_name"] == "model.layers.3.attention.qkv.weight"
    qkv = next(la for la in net.layers if la.name == "model.layers.3.attention.qkv.matmul")
    assert qkv.module_path == "model.layers.3.attention.qkv"
    assert len(names) == len(set(names))  # unique


def test_module_layers_and_outputs_are_recorded() -> None:
    _, net = _built()
    block3 = net.module_layers["model.layers.3"]
    qkv3 = net.module_layers["model.layers.3.attention.qkv"]
    assert set(qkv3) < set(block3) and "model.layers.3.rms_norm" in block3
    assert not any(n.startswith("model.layers.2") for n in block3)
    out = net.module_outputs["model.layers.3.attention.qkv"]
    assert len(out) == 1 and out[0].shape[-1] == 12
    assert net.module_outputs["model"][0].producer.module_path == "model.layers.3"


def test_debug_outputs_beside_normal_outputs_match_a_torch_recomputation() -> None:
    m, net = _built(n_layers=2)
    found = net.tensors_matching(["model.layers.*.attention.qkv", "head.matmul"])
    assert set(found) == {"model.layers.0.attention.qkv", "model.layers.1.attention.qkv", "head.matmul"}
    for name, t in found.items():
        t.mark_output(f"debug/{name}")
    x = torch.randn(3, 4)
    out = TorchExecutor(net).run({"x": x})
    assert set(out) == {"logits"} | {f"debug/{n}" for n in found}
    # Recompute the first block's qkv projection in torch from the loaded weights.
    blk = m.model.layers[0]
    h = torch.nn.functional.rms_norm(x, (4,), blk.norm.value, eps=1e-6)
    qkv = h @ blk.attention["qkv"].weight.value.T + blk.attention["qkv"].bias.value
    torch.testing.assert_close(out["debug/model.layers.0.attention.qkv"], qkv)
    torch.testing.assert_close(out["debug/head.matmul"], out["logits"])
    with pytest.raises(NetworkError, match="matches no module or tensor"):
        net.tensors_matching(["model.nothing.*"])


def test_calling_a_module_twice_in_one_network_shares_weights_and_keeps_names_unique() -> None:
    lin = Linear(3, 3)
    lin.load_state_dict({"weight": torch.randn(3, 3), "bias": torch.randn(3)})
    net = trtdsl.Network("twice")
    x = net.add_input("x", "float32", [2, 3])
    lin(lin(x)).mark_output("y")
    consts = [la for la in net.layers if la.kind is trtdsl.LayerKind.CONSTANT]
    assert len(consts) == 2  # weight and bias once each
    xv = torch.randn(2, 3)
    ref = torch.nn.functional.linear(torch.nn.functional.linear(xv, lin.weight.value, lin.bias.value),
                                     lin.weight.value, lin.bias.value)
    torch.testing.assert_close(TorchExecutor(net).run({"x": xv})["y"], ref)
