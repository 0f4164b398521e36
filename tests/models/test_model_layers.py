"""Layer-level checks: RoPE tables against transformers' RoPE init functions, typed errors of the
attention plugin's shape rule and of build-time choices."""

from __future__ import annotations

import pytest
import torch
import transformers as tf
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

import trtdsl
import trtdsl.functional as F
from trtdsl.errors import ConfigError, PluginError, ShapeError
from trtdsl.layers import Attention, GatedMLP, RopeConfig, RowLinear, rope_cos_sin, rope_inv_freq
from trtdsl.plugins.attention import ATTENTION_PLUGIN


@pytest.mark.parametrize("params", [
    {"rope_type": "default", "rope_theta": 500000.0},
    {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0},
    {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
     "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
])
def test_inv_freq_matches_transformers(params: dict) -> None:
    config = tf.LlamaConfig(hidden_size=128, num_attention_heads=2, rope_parameters=params)
    if params["rope_type"] == "default":  # transformers 5 computes this one inside each model
        want = 1.0 / params["rope_theta"] ** (torch.arange(0, 64, 2).float() / 64)
    else:
        want, _ = ROPE_INIT_FUNCTIONS[params["rope_type"]](config, "cpu")
    cfg = RopeConfig(rotary_dim=64, theta=params["rope_theta"], scaling=params["rope_type"],
                     factor=params.get("factor", 1.0), low_freq_factor=params.get("low_freq_factor", 1.0),
                     high_freq_factor=params.get("high_freq_factor", 4.0),
                     original_max_positions=params.get("original_max_position_embeddings", 0))
    torch.testing.assert_close(rope_inv_freq(cfg), want, rtol=1e-6, atol=0)


def test_dynamic_ntk_table_row_uses_the_base_of_its_sequence_length() -> None:
    config = tf.LlamaConfig(hidden_size=64, num_attention_heads=2, max_position_embeddings=16,
                            rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0})
    table = rope_cos_sin(RopeConfig(rotary_dim=32, scaling="dynamic", factor=2.0,
                                    original_max_positions=16), 40)
    for pos in (3, 15, 16, 39):  # unscaled up to the original length, scaled beyond
        inv_freq, _ = ROPE_INIT_FUNCTIONS["dynamic"](config, "cpu", seq_len=pos + 1)
        angles = pos * inv_freq.double()
        torch.testing.assert_close(table[pos], torch.cat([angles.cos(), angles.sin()]).float(),
                                   atol=2e-6, rtol=0)


def test_rope_config_rejects_unknown_scaling() -> None:
    with pytest.raises(ConfigError, match="unsupported RoPE scaling type 'yarn'"):
        RopeConfig(rotary_dim=64, scaling="yarn")


def _plugin_inputs(net: trtdsl.Network, qkv_features: int) -> list:
    i32 = "int32"
    return [net.add_input("qkv", "float32", ["n", qkv_features]), net.add_input("pos", i32, ["n"]),
            net.add_input("seq_lens", i32, ["b"]), net.add_input("past", i32, ["b"]),
            net.add_input("cu", i32, ["b1"]), net.add_input("tables", i32, ["b", "m"]),
            net.add_input("kv", "float32", [2, "blocks", 2, 2, 4, 16]),
            F.constant(torch.zeros(8, 16), network=net)]


def _fields(**kw: object) -> dict:
    return {"num_heads": 4, "num_kv_heads": 2, "head_dim": 16, "layer_idx": 0, "tokens_per_block": 4,
            "softmax_scale": 0.25, "rotary_dim": 16, "rope_style": "neox", **kw}


def test_attention_plugin_shape_rule() -> None:
    net = trtdsl.Network()
    (out,) = F.plugin(ATTENTION_PLUGIN, _plugin_inputs(net, 128), **_fields())
    assert out.dtype.value == "float32" and out.shape[1] == 64 and str(out.shape[0]) == "n"
    with pytest.raises(ShapeError, match=r"qkv has 96 features; \(num_heads \+ 2 \* num_kv_heads\)"):
        F.plugin(ATTENTION_PLUGIN, _plugin_inputs(trtdsl.Network(), 96), **_fields())
    with pytest.raises(PluginError, match="not a multiple of num_kv_heads=3"):
        F.plugin(ATTENTION_PLUGIN, _plugin_inputs(trtdsl.Network(), 128), **_fields(num_kv_heads=3))
    with pytest.raises(ShapeError, match="layer_idx=5 is outside kv_cache's 2 layers"):
        F.plugin(ATTENTION_PLUGIN, _plugin_inputs(trtdsl.Network(), 128), **_fields(layer_idx=5))


def test_build_time_choices_fail_at_construction() -> None:
    with pytest.raises(ConfigError, match="unknown activation 'swish'"):
        GatedMLP(64, 128, activation="swish")
    with pytest.raises(ConfigError, match="num_heads=6 is not a multiple of num_kv_heads=4"):
        Attention(64, 6, 4, 16, layer_idx=0)
    with pytest.raises(ConfigError, match="unknown attention backend 'flash'"):
        Attention(64, 4, 4, 16, layer_idx=0, backend="flash")
    with pytest.raises(ConfigError, match="all-reduce"):
        RowLinear(64, 64, tp_size=2, tp_rank=0)
