"""The quantization pass on a hand-built MLP network: every mode against the float network, the
graph it writes, calibration, and the errors for what it cannot do."""

from __future__ import annotations

import pytest
import torch

import trtdsl
import trtdsl.functional as F
from trtdsl.backends.torch_executor import TorchExecutor
from trtdsl.errors import ConfigError
from trtdsl.ir.network import LayerKind, Network
from trtdsl.quantization import (CALIBRATION_TOPICS, EVALUATION_TOPICS, QuantConfig, builtin_text,
                                 calibrate, collect_statistics, quantize_network)

K, HIDDEN = 64, 128


def _param(name: str, value: torch.Tensor) -> trtdsl.Parameter:
    p = trtdsl.Parameter(tuple(value.shape), value=value)
    p.qualname = name
    return p


def build_mlp(in_features: int = K) -> Network:
    """``y = down(relu(gate(n)) * up(n))`` with ``n = rms_norm(x)``: gate/up share the norm's output
    (a group whose scales fold into the norm), down reads a product (a scale needs a multiply)."""
    g = torch.Generator().manual_seed(0)
    net = Network("mlp")
    x = net.add_input("x", "float32", ["tokens", in_features])
    norm = _param("norm.weight", torch.rand(in_features, generator=g) + 0.5)
    gate = _param("gate.weight", torch.randn(HIDDEN, in_features, generator=g) / in_features ** 0.5)
    up = _param("up.weight", torch.randn(HIDDEN, in_features, generator=g) / in_features ** 0.5)
    down = _param("down.weight", torch.randn(32, HIDDEN, generator=g) / HIDDEN ** 0.5)
    n = F.rms_norm(x, norm, eps=1e-6)
    F.linear(F.relu(F.linear(n, gate)) * F.linear(n, up), down).mark_output("y")
    return net


def activations(seed: int, rows: int = 24, k: int = K) -> torch.Tensor:
    # Channels with very different ranges, as LLM activations have (what AWQ/SmoothQuant exploit).
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, k, generator=g) * torch.logspace(-1, 1, k)


@pytest.fixture(scope="module")
def mlp() -> Network:
    return build_mlp()


@pytest.fixture(scope="module")
def feeds() -> list[dict[str, torch.Tensor]]:
    return [{"x": activations(s)} for s in range(4)]


def _run(net: Network, x: torch.Tensor) -> torch.Tensor:
    return TorchExecutor(net).run({"x": x})["y"]


def _plain_torch_mlp(net: Network, x: torch.Tensor) -> torch.Tensor:
    """The float MLP in plain torch from the network's own weights (an independent reference)."""
    w = {layer.attrs["weight_name"]: layer.attrs["value"] for layer in net.layers
         if layer.kind is LayerKind.CONSTANT and "weight_name" in layer.attrs}
    n = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w["norm.weight"]
    return (torch.relu(n @ w["gate.weight"].T) * (n @ w["up.weight"].T)) @ w["down.weight"].T


# Tolerances on the output's relative error: ~2x what each format's rounding gives on this MLP.
MODES = [("int8_wo", 0, 0.025, "trtdsl.weight_only_gemm"),
         ("int8_wo", 32, 0.025, "trtdsl.weight_only_gemm"),
         ("int4_wo", 32, 0.35, "trtdsl.weight_only_gemm"),
         ("int4_awq", 32, 0.3, "trtdsl.weight_only_gemm"),
         ("fp8", 0, 0.15, "trtdsl.fp8_gemm"),
         ("int8_sq", 0, 0.04, "trtdsl.int8_gemm")]


@pytest.mark.parametrize("mode,group_size,tol,plugin", MODES)
def test_each_mode_stays_close_to_the_float_network(mlp: Network, feeds: list, mode: str,
                                                    group_size: int, tol: float, plugin: str) -> None:
    before = mlp.summary()
    qnet = quantize_network(mlp, mode, calibration_feeds=feeds, group_size=group_size, progress=False)
    assert mlp.summary() == before, "the input network must not change"
    counts = qnet.layer_counts()
    assert "matrix_multiply" not in counts and counts["plugin"] == 3
    assert {layer.attrs["name"] for layer in qnet.layers if layer.kind is LayerKind.PLUGIN} == {plugin}
    x = activations(99)  # not a calibration batch
    ref = _plain_torch_mlp(mlp, x)
    out = _run(qnet, x)
    rel = float((out - ref).norm() / ref.norm())
    assert rel < tol, f"{mode}: relative error {rel:.4f}"
    assert rel > 1e-6, f"{mode}: suspiciously exact -- is anything quantized?"
    assert qnet.metadata["quantization"]["mode"] == mode


def test_awq_is_more_accurate_than_round_to_nearest(mlp: Network, feeds: list) -> None:
    x = activations(123)
    ref = _plain_torch_mlp(mlp, x)
    err = {mode: float((_run(quantize_network(mlp, mode, calibration_feeds=feeds, group_size=32,
                                              progress=False), x) - ref).norm())
           for mode in ("int4_wo", "int4_awq")}
    assert err["int4_awq"] < err["int4_wo"]


@pytest.mark.parametrize("mode", ["int4_awq", "int8_sq"])
def test_input_scales_fold_into_the_norm_or_become_one_multiply(mlp: Network, feeds: list,
                                                                 mode: str) -> None:
    qnet = quantize_network(mlp, mode, calibration_feeds=feeds, group_size=32, progress=False)
    norm_weight = next(layer.attrs["value"] for layer in qnet.layers
                       if layer.attrs.get("weight_name") == "norm.weight")
    original = next(layer.attrs["value"] for layer in mlp.layers
                    if layer.attrs.get("weight_name") == "norm.weight")
    assert not torch.equal(norm_weight, original)  # gate/up's scales went into the norm ...
    producers = {}  # weight name -> kind of the layer producing that GEMM's activation
    for layer in qnet.layers:
        if layer.kind is LayerKind.PLUGIN:
            weight = layer.inputs[1].producer.name.rsplit(".", 1)[0]
            producers[weight] = (layer.inputs[0].producer.kind, layer.inputs[0].producer.attrs.get("op"))
    assert producers["gate.weight"] == producers["up.weight"] == (LayerKind.NORMALIZATION, None)
    # ... down's input (a product, not a norm's output) gets one multiply by a constant
    assert producers["down.weight"] == (LayerKind.ELEMENTWISE, "prod")
    assert len([la for la in qnet.layers if la.kind is LayerKind.ELEMENTWISE]) == 2  # 1 + the MLP's


def test_excluded_gemms_stay_float(mlp: Network) -> None:
    qnet = quantize_network(mlp, "int8_wo", exclude=("down.*",), progress=False)
    assert qnet.layer_counts()["matrix_multiply"] == 1
    assert any(layer.attrs.get("weight_name") == "down.weight" for layer in qnet.layers)
    assert not any(layer.attrs.get("weight_name") == "gate.weight" for layer in qnet.layers)


def test_int4_weights_are_packed_constants_named_after_the_weight(mlp: Network) -> None:
    qnet = quantize_network(mlp, "int4_wo", group_size=32, progress=False)
    qweight = next(la for la in qnet.layers if la.name == "gate.weight.qweight")
    scales = next(la for la in qnet.layers if la.name == "gate.weight.scales")
    assert qweight.outputs[0].dtype is trtdsl.int4 and qweight.outputs[0].shape == (HIDDEN, K // 2)
    assert scales.outputs[0].dtype is trtdsl.float32 and scales.outputs[0].shape == (HIDDEN, K // 32)


def test_calibration_records_the_gemm_input_ranges(mlp: Network, feeds: list) -> None:
    gemm = next(la for la in mlp.layers if la.kind is LayerKind.MATRIX_MULTIPLY)
    name = gemm.inputs[0].name
    stats = collect_statistics(mlp, [name], feeds, max_rows=40, progress=False)
    norm_w = next(la.attrs["value"] for la in mlp.layers if la.attrs.get("weight_name") == "norm.weight")
    xs = torch.cat([f["x"] for f in feeds])
    normed = xs * torch.rsqrt(xs.pow(2).mean(-1, keepdim=True) + 1e-6) * norm_w
    torch.testing.assert_close(stats.amax[name], normed.abs().amax(0))
    torch.testing.assert_close(stats.abs_mean(name), normed.abs().mean(0))
    assert stats.samples[name].shape == (40, K) and stats.steps == 4


def test_builtin_text_splits_are_disjoint_and_present() -> None:
    assert not set(CALIBRATION_TOPICS) & set(EVALUATION_TOPICS)
    calib, held_out = builtin_text("calibration"), builtin_text("evaluation")
    assert len(calib) > 20_000 and len(held_out) > 20_000 and calib[:200] not in held_out
    with pytest.raises(ConfigError, match="split"):
        builtin_text("train")


@pytest.mark.parametrize("kwargs,match", [
    ({"mode": "int3"}, "mode 'int3' is unknown"),
    ({"mode": "int4_wo", "group_size": 100}, "group_size 100"),
    ({"mode": None}, "nothing to do"),
    ({"mode": "int8_wo", "kv_cache_dtype": "int4"}, "kv_cache_dtype"),
    ({"mode": "int8_sq", "smoothquant_alpha": 1.5}, "smoothquant_alpha"),
])
def test_config_errors_name_the_bad_field(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        QuantConfig(**kwargs)


@pytest.mark.parametrize("mode", ["fp8", "int4_awq", "int8_sq"])
def test_calibrated_modes_need_calibration_feeds(mlp: Network, mode: str) -> None:
    with pytest.raises(ConfigError, match="calibration_feeds"):
        quantize_network(mlp, mode)


def test_unsupported_networks_are_refused(mlp: Network) -> None:
    qnet = quantize_network(mlp, "int8_wo", progress=False)
    with pytest.raises(ConfigError, match="already quantized"):
        quantize_network(qnet, "int8_wo")
    with pytest.raises(ConfigError, match="even number of input features"):
        quantize_network(build_mlp(in_features=63), "int4_wo")
    with pytest.raises(ConfigError, match="no GEMM"):
        quantize_network(mlp, "int8_wo", exclude=("*",))
    with pytest.raises(ConfigError, match="trtdsl.attention"):
        quantize_network(mlp, None, kv_cache_dtype="fp8", calibration_feeds=[])


def test_one_calibration_serves_every_mode(mlp: Network, feeds: list) -> None:
    stats = calibrate(mlp, feeds, progress=False)
    x = activations(7)
    for mode in ("fp8", "int8_sq"):
        direct = quantize_network(mlp, mode, calibration_feeds=feeds, progress=False)
        reused = quantize_network(mlp, mode, calibration=stats)
        torch.testing.assert_close(_run(reused, x), _run(direct, x), rtol=0, atol=0)
    other = Network("other")
    y = other.add_input("x", "float32", ["tokens", K])
    F.linear(y, _param("w", torch.randn(8, K))).mark_output("y")
    with pytest.raises(ConfigError, match="lack GEMM inputs"):
        quantize_network(other, "fp8", calibration=stats)
