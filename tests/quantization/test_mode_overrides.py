"""QuantConfig.mode_overrides: GEMMs matching a glob are quantized weight-only with their own mode (a
mixed recipe, e.g. an fp8 model with an int8 weight-only LM head); each GEMM stores exactly what the
uniform recipe of its mode would, and the network runs."""

from __future__ import annotations

import pytest
import torch

from trtdsl.backends.torch_executor import TorchExecutor
from trtdsl.errors import ConfigError
from trtdsl.ir.network import LayerKind, Network
from trtdsl.quantization import QuantConfig, quantize_network

from test_pass import activations, build_mlp


def _gemms(net: Network) -> dict[str, tuple[str, dict, list[torch.Tensor]]]:
    """weight name -> (plugin, fields, constant inputs) of every quantized GEMM."""
    out = {}
    for layer in net.layers:
        if layer.kind is LayerKind.PLUGIN:
            consts = [t.producer.attrs["value"] for t in layer.inputs[1:]]
            name = layer.inputs[1].producer.name.split(".")[0]  # "down.weight.qweight" -> "down"
            out[name] = (layer.attrs["name"], dict(layer.attrs["fields"]), consts)
    return out


@pytest.mark.parametrize("main,gptq", [("fp8", False), ("fp8", True), ("int4_awq", False)])
def test_matching_gemms_get_their_own_mode(main: str, gptq: bool) -> None:
    feeds = [{"x": activations(s, rows=64)} for s in range(4)]
    kw = dict(calibration_feeds=feeds, progress=False, awq_grid=5, gptq=gptq, group_size=64)
    mixed_net = quantize_network(build_mlp(), main, mode_overrides=[["down*", "int8_wo"]], **kw)
    mixed = _gemms(mixed_net)
    uniform = _gemms(quantize_network(build_mlp(), main, **kw))
    int8 = _gemms(quantize_network(build_mlp(), "int8_wo", **kw))
    assert sorted(mixed) == ["down", "gate", "up"]
    for name, (plugin, fields, consts) in mixed.items():
        want = int8[name] if name == "down" else uniform[name]
        assert plugin == want[0] and fields == want[1], name
        for a, b in zip(consts, want[2], strict=True):
            assert torch.equal(a, b), name
    assert mixed["down"][1]["bits"] == 8
    assert mixed_net.metadata["quantization"]["mode_overrides"] == [["down*", "int8_wo"]]
    y = TorchExecutor(mixed_net).run({"x": activations(9)})["y"]
    assert torch.isfinite(y).all()


def test_lm_head_override_needs_the_head_not_excluded(tmp_path) -> None:
    transformers = pytest.importorskip("transformers")
    from trtdsl.models import from_hugging_face
    from trtdsl.quantization import prefill_feeds, token_chunks
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=1,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path)
    net = from_hugging_face(tmp_path, "float32").build_network(max_batch_size=1, max_num_tokens=16, max_seq_len=32,
                                                               tokens_per_block=8)
    feeds = list(prefill_feeds(net, token_chunks(list(range(3, 67)), 16, 2), 1))
    heads = {}
    for exclude in ((), ("*lm_head*",)):
        q = quantize_network(net, "fp8", calibration_feeds=feeds, progress=False, exclude=exclude,
                             mode_overrides=[["*lm_head*", "int8_wo"]])
        plugins = {layer.module_path: layer.attrs["name"] for layer in q.layers if layer.kind is LayerKind.PLUGIN}
        heads[exclude] = plugins.get("lm_head")
        assert list(plugins.values()).count("trtdsl.fp8_gemm") == 4  # q/k/v, o, gate/up, down
    assert heads == {(): "trtdsl.weight_only_gemm", ("*lm_head*",): None}  # exclude wins


def test_mode_overrides_config() -> None:
    cfg = QuantConfig(mode="fp8", exclude=(), mode_overrides=[["*lm_head*", "int8_wo"]],
                      group_size_overrides=[["*lm_head*", 0]])
    assert cfg.mode_overrides == (("*lm_head*", "int8_wo"),) and hash(cfg)
    assert cfg.to_dict()["mode_overrides"] == [["*lm_head*", "int8_wo"]]
    for bad in ([["*", "fp8"]], [["*", "int4_awq"]], ["*lm_head*"]):
        with pytest.raises(ConfigError, match="mode_overrides"):
            QuantConfig(mode="fp8", mode_overrides=bad)
    with pytest.raises(ConfigError, match="mode_overrides"):
        QuantConfig(kv_cache_dtype="fp8", mode_overrides=[["*", "int8_wo"]])
    with pytest.raises(ConfigError, match="group_size_overrides"):
        QuantConfig(mode="fp8", group_size_overrides=[["*", 64]])
