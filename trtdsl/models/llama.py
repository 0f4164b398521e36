"""The Llama family: Llama 2 / 3 / 3.1 / 3.2, Mistral, Qwen2, SmolLM2, TinyLlama.

Pre-norm blocks of RmsNorm, GQA attention with RoPE and a SwiGLU MLP; the variants differ only in
configuration (RoPE base and scaling, qkv bias for Qwen2, tied head for SmolLM2 / Llama 3.2 1B),
which :meth:`LlamaForCausalLM.config_from_hf` reads once from ``config.json``.
"""

from __future__ import annotations

from typing import Any, Mapping

from ..errors import ConfigError
from ..ir.network import Tensor
from ..layers import (Attention, DecoderLayer, Embedding, GatedMLP, Linear, RmsNorm, RopeConfig,
                      StepBatch)
from ..module import ModuleList
from .base import CausalLM, require
from .config import ModelConfig
from .convert import WeightRule

__all__ = ["LlamaForCausalLM", "LLAMA_WEIGHT_MAP", "LLAMA_MODEL_TYPES"]

LLAMA_MODEL_TYPES = ("llama", "mistral", "qwen2")

_L = "model.layers.{i}."
LLAMA_WEIGHT_MAP: tuple[WeightRule, ...] = (
    WeightRule("embed.weight", ("model.embed_tokens.weight",)),
    WeightRule("layers.{i}.attention_norm.weight", (_L + "input_layernorm.weight",)),
    WeightRule("layers.{i}.attention.qkv.weight",
               tuple(_L + f"self_attn.{p}_proj.weight" for p in "qkv")),
    WeightRule("layers.{i}.attention.qkv.bias", tuple(_L + f"self_attn.{p}_proj.bias" for p in "qkv")),
    WeightRule("layers.{i}.attention.dense.weight", (_L + "self_attn.o_proj.weight",)),
    WeightRule("layers.{i}.attention.dense.bias", (_L + "self_attn.o_proj.bias",)),
    WeightRule("layers.{i}.ffn_norm.weight", (_L + "post_attention_layernorm.weight",)),
    WeightRule("layers.{i}.feed_forward.gate_up.weight",
               (_L + "mlp.gate_proj.weight", _L + "mlp.up_proj.weight")),
    WeightRule("layers.{i}.feed_forward.gate_up.bias", (_L + "mlp.gate_proj.bias", _L + "mlp.up_proj.bias")),
    WeightRule("layers.{i}.feed_forward.down.weight", (_L + "mlp.down_proj.weight",)),
    WeightRule("layers.{i}.feed_forward.down.bias", (_L + "mlp.down_proj.bias",)),
    WeightRule("norm.weight", ("model.norm.weight",)),
    WeightRule("lm_head.weight", ("lm_head.weight",)),
)

_ROPE_KEYS = {"rope_type", "type", "rope_theta", "factor", "low_freq_factor", "high_freq_factor",
              "original_max_position_embeddings", "partial_rotary_factor"}


def rope_from_hf(hf: Mapping[str, Any], head_dim: int) -> RopeConfig:
    """RopeConfig from either spelling: transformers 5's ``rope_parameters`` or the older
    ``rope_theta`` + ``rope_scaling``."""
    params = dict(hf.get("rope_parameters") or {})
    params = {**dict(hf.get("rope_scaling") or {}), **params}
    kind = params.get("rope_type", params.get("type", "default"))
    unknown = sorted(set(params) - _ROPE_KEYS)
    if kind not in ("default", "linear", "dynamic", "llama3"):
        raise ConfigError(f"unsupported RoPE scaling type {kind!r} in config.json; supported: "
                          "default, linear, dynamic, llama3")
    if unknown:
        raise ConfigError(f"RoPE parameters {unknown} are not supported (rope_type {kind!r})")
    partial = float(params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0)))
    return RopeConfig(
        rotary_dim=int(head_dim * partial),
        theta=float(params.get("rope_theta", hf.get("rope_theta", 10000.0))),
        scaling=kind, factor=float(params.get("factor", 1.0)),
        low_freq_factor=float(params.get("low_freq_factor", 1.0)),
        high_freq_factor=float(params.get("high_freq_factor", 4.0)),
        original_max_positions=int(params.get("original_max_position_embeddings")
                                   or hf.get("max_position_embeddings") or 0))


class LlamaForCausalLM(CausalLM):
    """``logits = lm_head(norm(layers(embed(input_ids))))`` with Llama blocks."""

    ARCHITECTURE = "llama"
    WEIGHT_MAP = LLAMA_WEIGHT_MAP
    IGNORED_WEIGHTS = (r"rotary_emb\.inv_freq$",)  # cached frequencies in old checkpoints

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        c, dt = config, config.dtype
        self.embed = Embedding(c.vocab_size, c.hidden_size, dt)
        self.layers = ModuleList([DecoderLayer(
            attention_norm=RmsNorm(c.hidden_size, c.norm_eps, dt),
            attention=Attention(c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim, layer_idx=i,
                                rotary_dim=c.rope.rotary_dim if c.rope else 0,
                                rope_style=c.rope.style if c.rope else "neox", qkv_bias=c.qkv_bias,
                                dense_bias=c.dense_bias, dtype=dt),
            ffn_norm=RmsNorm(c.hidden_size, c.norm_eps, dt),
            feed_forward=GatedMLP(c.hidden_size, c.intermediate_size, c.hidden_act, c.mlp_bias, dt),
        ) for i in range(c.num_layers)])
        self.norm = RmsNorm(c.hidden_size, c.norm_eps, dt)
        self.lm_head = Linear(c.hidden_size, c.vocab_size, dtype=dt)
        if c.tie_word_embeddings:
            self.lm_head.weight = self.embed.weight

    def forward(self, input_ids: Tensor, batch: StepBatch) -> Tensor:
        h = self.embed(input_ids)
        for layer in self.layers:
            h = layer(h, batch)
        return self.lm_head(self.norm(batch.logits_rows(h))).cast("float32")

    @classmethod
    def config_from_hf(cls, hf: Mapping[str, Any], dtype: Any = "float32") -> ModelConfig:
        model_type = hf.get("model_type", "llama")
        if model_type not in LLAMA_MODEL_TYPES:
            raise ConfigError(f"LlamaForCausalLM: model_type {model_type!r} is not one of "
                              f"{list(LLAMA_MODEL_TYPES)}")
        require(hf, ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size"), model_type)
        act = hf.get("hidden_act", "silu")
        if act != "silu":
            raise ConfigError(f"{model_type}: hidden_act={act!r} is not supported (Llama blocks use silu)")
        heads = int(hf["num_attention_heads"])
        head_dim = int(hf.get("head_dim") or hf["hidden_size"] // heads)
        window = hf.get("sliding_window")
        if model_type == "qwen2" and not hf.get("use_sliding_window", False):
            window = None  # Qwen2 lists a window but only uses it with use_sliding_window
        attention_bias = bool(hf.get("attention_bias", False))
        return ModelConfig(
            architecture="llama", hf_model_type=model_type, vocab_size=int(hf["vocab_size"]),
            hidden_size=int(hf["hidden_size"]), num_layers=int(hf["num_hidden_layers"]),
            num_heads=heads, num_kv_heads=int(hf.get("num_key_value_heads") or heads),
            head_dim=head_dim, intermediate_size=int(hf["intermediate_size"]),
            max_position_embeddings=int(hf.get("max_position_embeddings", 2048)),
            norm_eps=float(hf.get("rms_norm_eps", 1e-6)), hidden_act="silu",
            rope=rope_from_hf(hf, head_dim),
            qkv_bias=model_type == "qwen2" or attention_bias, dense_bias=attention_bias,
            mlp_bias=bool(hf.get("mlp_bias", False)),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            sliding_window=int(window) if window else None, dtype=dtype,
            bos_token_id=hf.get("bos_token_id"), eos_token_id=hf.get("eos_token_id"))
