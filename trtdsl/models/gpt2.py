"""GPT-2: learned absolute positions, LayerNorm, a gelu-tanh MLP and a head tied to the token
embedding. Hugging Face stores GPT-2's projections as ``Conv1D`` (``[in, out]``); the mapping table
transposes them to ``[out, in]`` at load."""

from __future__ import annotations

from typing import Any, Mapping

import torch

from ..errors import ConfigError
from ..ir.network import Tensor
from ..layers import MLP, Attention, DecoderLayer, Embedding, LayerNorm, Linear, StepBatch
from ..module import ModuleList
from .base import CausalLM, require
from .config import ModelConfig
from .convert import WeightRule

__all__ = ["GPT2LMHeadModel", "GPT2_WEIGHT_MAP"]

_H = "transformer.h.{i}."
GPT2_WEIGHT_MAP: tuple[WeightRule, ...] = (
    WeightRule("embed.weight", ("transformer.wte.weight",)),
    WeightRule("position_embed.weight", ("transformer.wpe.weight",)),
    WeightRule("layers.{i}.attention_norm.weight", (_H + "ln_1.weight",)),
    WeightRule("layers.{i}.attention_norm.bias", (_H + "ln_1.bias",)),
    WeightRule("layers.{i}.attention.qkv.weight", (_H + "attn.c_attn.weight",), transpose=True),
    WeightRule("layers.{i}.attention.qkv.bias", (_H + "attn.c_attn.bias",)),
    WeightRule("layers.{i}.attention.dense.weight", (_H + "attn.c_proj.weight",), transpose=True),
    WeightRule("layers.{i}.attention.dense.bias", (_H + "attn.c_proj.bias",)),
    WeightRule("layers.{i}.ffn_norm.weight", (_H + "ln_2.weight",)),
    WeightRule("layers.{i}.ffn_norm.bias", (_H + "ln_2.bias",)),
    WeightRule("layers.{i}.feed_forward.fc.weight", (_H + "mlp.c_fc.weight",), transpose=True),
    WeightRule("layers.{i}.feed_forward.fc.bias", (_H + "mlp.c_fc.bias",)),
    WeightRule("layers.{i}.feed_forward.proj.weight", (_H + "mlp.c_proj.weight",), transpose=True),
    WeightRule("layers.{i}.feed_forward.proj.bias", (_H + "mlp.c_proj.bias",)),
    WeightRule("norm.weight", ("transformer.ln_f.weight",)),
    WeightRule("norm.bias", ("transformer.ln_f.bias",)),
    WeightRule("lm_head.weight", ("lm_head.weight",)),
)

_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh",
                "gelu": "gelu", "relu": "relu"}


class GPT2LMHeadModel(CausalLM):
    """``logits = lm_head(norm(layers(embed(ids) + position_embed(positions))))``."""

    ARCHITECTURE = "gpt2"
    WEIGHT_MAP = GPT2_WEIGHT_MAP
    # The causal-mask buffers older checkpoints saved with the weights.
    IGNORED_WEIGHTS = (r"\.attn\.(masked_)?bias$",)

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        c, dt = config, config.dtype
        self.embed = Embedding(c.vocab_size, c.hidden_size, dt)
        self.position_embed = Embedding(c.max_position_embeddings, c.hidden_size, dt)
        self.layers = ModuleList([DecoderLayer(
            attention_norm=LayerNorm(c.hidden_size, c.norm_eps, dtype=dt),
            attention=Attention(c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim, layer_idx=i,
                                qkv_bias=True, dense_bias=True, dtype=dt,
                                softmax_scale=c.head_dim ** -0.5 /
                                (i + 1 if c.scale_attn_by_inverse_layer_idx else 1)),
            ffn_norm=LayerNorm(c.hidden_size, c.norm_eps, dtype=dt),
            feed_forward=MLP(c.hidden_size, c.intermediate_size, c.hidden_act, True, dt),
        ) for i in range(c.num_layers)])
        self.norm = LayerNorm(c.hidden_size, c.norm_eps, dtype=dt)
        self.lm_head = Linear(c.hidden_size, c.vocab_size, dtype=dt)
        if c.tie_word_embeddings:
            self.lm_head.weight = self.embed.weight

    def forward(self, input_ids: Tensor, batch: StepBatch) -> Tensor:
        h = self.embed(input_ids) + self.position_embed(batch.position_ids)
        for layer in self.layers:
            h = layer(h, batch)
        return self.lm_head(self.norm(batch.logits_rows(h))).cast("float32")

    def check_build_limits(self, max_seq_len: int) -> None:
        super().check_build_limits(max_seq_len)
        if max_seq_len > self.config.max_position_embeddings:
            raise ConfigError(f"GPT2LMHeadModel: max_seq_len={max_seq_len} exceeds the "
                              f"{self.config.max_position_embeddings} learned positions (n_positions)")

    @classmethod
    def canonical_hf_names(cls, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # OpenAI's original checkpoints name weights without the "transformer." prefix.
        return {n if n.startswith(("transformer.", "lm_head.")) else f"transformer.{n}": t
                for n, t in tensors.items()}

    @classmethod
    def config_from_hf(cls, hf: Mapping[str, Any], dtype: Any = "float32") -> ModelConfig:
        if hf.get("model_type", "gpt2") != "gpt2":
            raise ConfigError(f"GPT2LMHeadModel: model_type {hf.get('model_type')!r} is not 'gpt2'")
        require(hf, ("vocab_size", "n_embd", "n_layer", "n_head"), "gpt2")
        act = hf.get("activation_function", "gelu_new")
        if act not in _ACTIVATIONS:
            raise ConfigError(f"gpt2: activation_function={act!r} is not supported; supported: "
                              f"{sorted(_ACTIVATIONS)}")
        if not hf.get("scale_attn_weights", True):
            raise ConfigError("gpt2: scale_attn_weights=False (unscaled attention) is not supported")
        if hf.get("add_cross_attention"):
            raise ConfigError("gpt2: add_cross_attention (encoder-decoder use) is not supported")
        hidden, heads = int(hf["n_embd"]), int(hf["n_head"])
        return ModelConfig(
            architecture="gpt2", hf_model_type="gpt2", vocab_size=int(hf["vocab_size"]),
            hidden_size=hidden, num_layers=int(hf["n_layer"]), num_heads=heads, num_kv_heads=heads,
            head_dim=hidden // heads, intermediate_size=int(hf.get("n_inner") or 4 * hidden),
            max_position_embeddings=int(hf.get("n_positions", 1024)),
            norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)), hidden_act=_ACTIVATIONS[act],
            rope=None, qkv_bias=True, dense_bias=True, mlp_bias=True,
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", True)),
            scale_attn_by_inverse_layer_idx=bool(hf.get("scale_attn_by_inverse_layer_idx", False)),
            dtype=dtype, bos_token_id=hf.get("bos_token_id"), eos_token_id=hf.get("eos_token_id"))
