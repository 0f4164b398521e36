"""Every plugin layer the quantization pass can emit has a TensorRT plugin of the right signature.

A tiny random Llama (``trtdsl.models``, no checkpoint) is quantized in every mode and format (int4
with and without zeros, fp8 static and dynamic, quantized K/V caches), passed through the graph
passes a ``--backend tensorrt`` build runs, and each plugin layer's lowering plan is checked against
the layer: the TensorRT plugin takes exactly the layer's inputs, in order (matched by the names the
quantization pass gives its constants), and the attributes the layer carries. The
``@trtp.register`` / ``@trtp.impl`` functions are checked statically (their source, parsed) against
the same table: TensorRT is not installed here, and nothing is mocked.
"""

from __future__ import annotations

import ast
import inspect
from typing import Any

import pytest
import torch

from trtdsl.backends.tensorrt import (NATIVE_PLUGIN_LOWERINGS, PLUGIN_LOWERINGS, PluginLowering,
                                      PluginSignature, plan_plugin)
from trtdsl.backends.tensorrt import plugins as trt_plugins
from trtdsl.builder import BuildConfig, Builder
from trtdsl.errors import BackendError, PluginError
from trtdsl.ir.network import Layer, LayerKind, Network
from trtdsl.layers import RopeConfig
from trtdsl.models import LlamaForCausalLM, ModelConfig
from trtdsl.passes import optimize
from trtdsl.quantization import CalibrationStats, calibrate, prefill_feeds, quantize_network, token_chunks

VOCAB = 64


@pytest.fixture(scope="module")
def model() -> LlamaForCausalLM:
    config = ModelConfig(architecture="llama", vocab_size=VOCAB, hidden_size=64, num_layers=1,
                         num_heads=4, num_kv_heads=2, head_dim=16, intermediate_size=128,
                         max_position_embeddings=64, norm_eps=1e-5, hidden_act="silu",
                         rope=RopeConfig(rotary_dim=16), tie_word_embeddings=True)
    llama = LlamaForCausalLM.from_config(config)
    g = torch.Generator().manual_seed(0)
    for _, p in llama.named_parameters():
        p.set_value(torch.randn(p.shape, generator=g) * 0.1)
    return llama


@pytest.fixture(scope="module")
def network(model: LlamaForCausalLM) -> Network:
    return model.build_network(max_batch_size=2, max_num_tokens=32, max_seq_len=32, tokens_per_block=8)


@pytest.fixture(scope="module")
def stats(network: Network) -> CalibrationStats:
    ids = torch.randint(0, VOCAB, (64,), generator=torch.Generator().manual_seed(1)).tolist()
    feeds = list(prefill_feeds(network, token_chunks(ids, 16, 4), batch_size=2))
    return calibrate(network, feeds, progress=False, hessians=True)  # once, for every case below


# (mode, kv_cache_dtype, QuantConfig options) -> the TensorRT plugins its network must use. The
# expectations follow docs/quantization.md: zeros are the int4 modes' default and opt-in for int8_wo;
# fp8 has a static input scale unless fp8_dynamic.
CASES: list[tuple[str | None, str | None, dict[str, Any], set[str]]] = [
    ("int8_wo", None, {}, {"weight_only_gemm", "attention"}),
    ("int8_wo", None, {"zero_point": True}, {"weight_only_gemm_zeros", "attention"}),
    ("int8_wo", None, {"group_size": 0}, {"weight_only_gemm", "attention"}),
    ("int4_wo", None, {}, {"weight_only_gemm_zeros", "attention"}),
    ("int4_wo", None, {"zero_point": False}, {"weight_only_gemm", "attention"}),
    ("int4_wo", None, {"gptq": True}, {"weight_only_gemm_zeros", "attention"}),
    ("int4_awq", None, {"awq_grid": 2, "awq_clip": False}, {"weight_only_gemm_zeros", "attention"}),
    ("int4_awq", "int8", {"awq_grid": 2, "awq_clip": False, "zero_point": False},
     {"weight_only_gemm", "attention_quant_kv"}),
    ("fp8", None, {}, {"fp8_gemm", "attention"}),
    ("fp8", None, {"fp8_dynamic": True}, {"fp8_gemm_dynamic", "attention"}),
    ("fp8", None, {"fp8_center_inputs": "norm+swiglu", "fp8_lowrank": 2}, {"fp8_gemm", "attention"}),
    ("fp8", "fp8", {"fp8_dynamic": True, "fp8_per_channel_weights": False},
     {"fp8_gemm_dynamic", "attention_quant_kv"}),
    ("int8_sq", None, {}, {"int8_gemm", "attention"}),
    ("int8_sq", "int8", {}, {"int8_gemm", "attention_quant_kv"}),
    (None, "fp8", {}, {"attention_quant_kv"}),
    (None, "int8", {"kv_cache_scales": "tensor"}, {"attention_quant_kv"}),
    (None, "fp8", {"kv_cache_rotation": "hadamard"}, {"attention_quant_kv"}),
    # the mean key subtracted: k_bias is a 10th input (the pass's "<layer>.k_bias" constant)
    (None, "fp8", {"kv_cache_center_k": True}, {"attention_quant_kv_centered"}),
    (None, "int8", {"kv_cache_center_k": True, "kv_cache_rotation": "hadamard"}, {"attention_quant_kv_centered"}),
]


def _check_plans(net: Network) -> set[str]:
    """Plan every TensorRT-plugin layer of ``net``, check each plan against its layer, and return
    the TensorRT plugins used."""
    used = set()
    for layer in net.layers:
        if layer.kind is not LayerKind.PLUGIN or layer.attrs["name"] in NATIVE_PLUGIN_LOWERINGS:
            continue
        plan = plan_plugin(layer)
        inputs = plan.signature.inputs
        assert plan.plugin == layer.attrs["name"] and plan.num_outputs >= len(layer.outputs)
        assert len(inputs) == len(layer.inputs), (layer.name, inputs)
        # Input 0 (x / qkv) is an activation; the rest are the pass's named constants
        # ("<weight>.scales", "<layer>.kv_scales", ...) or the network's own inputs.
        for want, tensor in zip(inputs[1:], layer.inputs[1:]):
            assert tensor.name == want or tensor.name.endswith("." + want), (layer.name, want, tensor.name)
        fields = layer.attrs["fields"]
        # Every TensorRT attribute is the layer's field, or the lowering's default where it has none.
        assert plan.attrs == {name: fields.get(name, default)
                              for name, _, default in PLUGIN_LOWERINGS[plan.plugin].fields}
        assert set(fields) - set(plan.attrs) <= set(PLUGIN_LOWERINGS[plan.plugin].implied_fields)
        used.add(plan.signature.qdp_name)
    return used


@pytest.mark.parametrize("mode,kv,options,expected", CASES,
                         ids=[f"{m}-{kv}-{'-'.join(f'{k}={v}' for k, v in o.items())}"
                              for m, kv, o, _ in CASES])
def test_every_quantized_layer_gets_the_tensorrt_plugin_of_its_format(
        network: Network, stats: CalibrationStats, mode: str | None, kv: str | None,
        options: dict[str, Any], expected: set[str]) -> None:
    options = {"group_size": 32, **options}
    qnet = quantize_network(network, mode, kv_cache_dtype=kv, calibration=stats, progress=False, **options)
    optimize(qnet)  # the passes a --backend tensorrt build runs (its fusions are off by default)
    assert _check_plans(qnet) == expected


@pytest.mark.parametrize("quantization,options,expected", [
    ("int4_wo", {}, {"weight_only_gemm_zeros", "attention"}),
    ("fp8", {"fp8_dynamic": True}, {"fp8_gemm_dynamic", "attention"}),
])
def test_the_tensorrt_build_pipeline_emits_only_lowerable_plugins(
        model: LlamaForCausalLM, quantization: str, options: dict, expected: set[str]) -> None:
    """Through the Builder itself (modes that need no calibration, so it stays fast)."""
    config = BuildConfig(backend="tensorrt", max_batch_size=2, max_seq_len=32, max_num_tokens=32,
                         tokens_per_block=8, quantization=quantization, quant_group_size=32,
                         quant_options=options)
    engine = Builder(config).build(model)
    assert _check_plans(engine.network) == expected


# -- the register / impl functions, read from the source ------------------------------------------------
def _plugin_id(decorator: ast.expr) -> tuple[str, str] | None:
    """``("register" | "impl", qdp_name)`` of ``@trtp.register(f"{NAMESPACE}::name")``."""
    if not (isinstance(decorator, ast.Call) and isinstance(decorator.func, ast.Attribute)
            and isinstance(decorator.args[0], ast.JoinedStr)):
        return None
    tail = decorator.args[0].values[-1]
    assert isinstance(tail, ast.Constant) and tail.value.startswith("::")
    return decorator.func.attr, tail.value[2:]


def _registered_functions() -> dict[tuple[str, str], tuple[str, ast.FunctionDef]]:
    """``(kind, qdp_name) -> (registrar name, function)`` for every decorated plugin function."""
    found = {}
    for registrar in ast.parse(inspect.getsource(trt_plugins)).body:
        if not isinstance(registrar, ast.FunctionDef):
            continue
        for node in ast.walk(registrar):
            if isinstance(node, ast.FunctionDef):
                for key in filter(None, map(_plugin_id, node.decorator_list)):
                    assert key not in found, f"{key} is defined twice"
                    found[key] = (registrar.name, node)
    return found


def _run_plugin_call(impl: ast.FunctionDef) -> ast.Call:
    calls = [n for n in ast.walk(impl) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
             and n.func.id == "run_plugin"]
    assert len(calls) == 1, f"{impl.name} must call run_plugin once"
    return calls[0]


def _call_fields(call: ast.Call, impl: ast.FunctionDef) -> set[str]:
    """The keys of run_plugin's ``fields`` argument: a literal ``{}`` or a ``dict(...)`` variable."""
    arg = call.args[2]
    if isinstance(arg, ast.Dict):
        return {k.value for k in arg.keys if isinstance(k, ast.Constant)}
    assert isinstance(arg, ast.Name)
    (assign,) = [n for n in ast.walk(impl) if isinstance(n, ast.Assign)
                 and any(isinstance(t, ast.Name) and t.id == arg.id for t in n.targets)]
    assert isinstance(assign.value, ast.Call) and isinstance(assign.value.func, ast.Name)
    return {k.arg for k in assign.value.keywords if k.arg}


def _all_signatures() -> list[tuple[str, PluginLowering, PluginSignature]]:
    return [(name, lowering, sig) for name, lowering in PLUGIN_LOWERINGS.items()
            for sig in lowering.signatures]


@pytest.mark.parametrize("plugin,lowering,sig", _all_signatures(),
                         ids=[s.qdp_name for _, _, s in _all_signatures()])
def test_register_and_impl_take_the_signature_inputs_and_call_run_plugin_with_them(
        plugin: str, lowering: PluginLowering, sig: PluginSignature) -> None:
    functions = _registered_functions()
    assert ("register", sig.qdp_name) in functions and ("impl", sig.qdp_name) in functions
    registrar, describe = functions["register", sig.qdp_name]
    _, impl = functions["impl", sig.qdp_name]
    assert trt_plugins.REGISTRARS[sig.qdp_name].__name__ == registrar
    field_names = [name for name, _, _ in lowering.fields]
    assert [a.arg for a in describe.args.args] == [*sig.inputs, *field_names]
    assert [a.arg for a in impl.args.args] == [*sig.inputs, *field_names, "outputs", "stream"]
    # attribute annotations are the lowering's types (TensorRT checks values against them)
    for arg, (_, kind, _) in zip(describe.args.args[len(sig.inputs):], lowering.fields):
        assert isinstance(arg.annotation, ast.Name) and arg.annotation.id == kind.__name__
    returns = describe.returns
    n_out = len(returns.slice.elts) if isinstance(returns, ast.Subscript) and \
        isinstance(returns.slice, ast.Tuple) else 1
    assert n_out == lowering.num_outputs
    call = _run_plugin_call(impl)
    assert isinstance(call.args[0], ast.Constant) and call.args[0].value == plugin
    assert isinstance(call.args[1], ast.List)
    assert [n.id for n in call.args[1].elts if isinstance(n, ast.Name)] == list(sig.inputs)
    assert _call_fields(call, impl) == {*field_names, *lowering.implied_fields}


def test_every_tensorrt_plugin_is_some_signature_and_has_a_registrar() -> None:
    names = [s.qdp_name for _, _, s in _all_signatures()]
    assert len(names) == len(set(names))
    assert set(trt_plugins.REGISTRARS) == set(names)
    defined = {name for kind, name in _registered_functions() if kind == "register"}
    assert defined == set(names)


# -- what cannot be lowered says so -------------------------------------------------------------------
def _first_plugin(net: Network, name: str) -> Layer:
    return next(layer for layer in net.layers if layer.kind is LayerKind.PLUGIN and layer.attrs["name"] == name)


@pytest.fixture(scope="module")
def int4_layer(network: Network) -> Layer:
    qnet = quantize_network(network, "int4_wo", group_size=32, progress=False)
    return _first_plugin(qnet, "trtdsl.weight_only_gemm")


def _variant(layer: Layer, inputs: list | None = None, **fields: Any) -> Layer:
    attrs = dict(layer.attrs, fields={**layer.attrs["fields"], **fields})
    attrs["fields"] = {k: v for k, v in attrs["fields"].items() if v is not None}
    return Layer(layer.kind, layer.name, layer.inputs if inputs is None else inputs, layer.outputs,
                 attrs, layer.module_path)


def test_an_input_count_without_a_tensorrt_plugin_is_a_backend_error(int4_layer: Layer) -> None:
    with pytest.raises(BackendError, match=r"has 2 inputs .*weight_only_gemm_zeros") as exc:
        plan_plugin(_variant(int4_layer, inputs=int4_layer.inputs[:2]))
    assert int4_layer.name in str(exc.value) and "qweight" in str(exc.value)


def test_an_attribute_tensorrt_would_drop_is_a_backend_error(int4_layer: Layer) -> None:
    with pytest.raises(BackendError, match=r"\['act_order'\].*does not take"):
        plan_plugin(_variant(int4_layer, act_order=True))


def test_a_missing_attribute_is_a_plugin_error(int4_layer: Layer) -> None:
    with pytest.raises(PluginError, match="lacks attribute 'group_size'"):
        plan_plugin(_variant(int4_layer, group_size=None))


def test_native_and_unknown_plugins_are_not_planned_as_tensorrt_plugins() -> None:
    with pytest.raises(BackendError, match="native TensorRT layers"):
        plan_plugin(Layer(LayerKind.PLUGIN, "fused", [], [], {"name": "trtdsl.swiglu", "fields": {}}, ""))
    with pytest.raises(BackendError, match="has no TensorRT lowering"):
        plan_plugin(Layer(LayerKind.PLUGIN, "mystery", [], [], {"name": "acme.gemm", "fields": {}}, ""))


def test_a_lowering_with_two_signatures_of_one_arity_is_rejected() -> None:
    with pytest.raises(BackendError, match="distinct input counts"):
        PluginLowering((PluginSignature("a", ("x", "w")), PluginSignature("b", ("x", "v"))), ())
