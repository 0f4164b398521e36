"""``ModelConfig``: the one frozen, documented description of a decoder-only model.

Hugging Face's ``config.json`` is converted to it ONCE (by each architecture's ``config_from_hf``);
everything downstream (layers, the weight mapping, engine files through :meth:`ModelConfig.to_dict`)
reads only this, so HF's many spellings of the same setting are handled in one place.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from ..dtypes import DType, dtype_of
from ..errors import ConfigError, DTypeError
from ..layers.rope import RopeConfig

__all__ = ["ModelConfig"]

_FLOAT_DTYPES = (DType.float32, DType.float16, DType.bfloat16)


@dataclass(frozen=True)
class ModelConfig:
    """A decoder-only transformer.

    Attributes:
        architecture: the trtdsl model family (a key of ``trtdsl.models.MODEL_REGISTRY``).
        vocab_size, hidden_size, num_layers, intermediate_size: the usual sizes.
        num_heads, num_kv_heads, head_dim: attention heads (``num_kv_heads < num_heads`` is GQA).
        max_position_embeddings: the longest sequence the model supports (a hard limit for learned
            position embeddings, the RoPE table's default length otherwise).
        norm_eps: epsilon of every RmsNorm / LayerNorm.
        hidden_act: activation of the feed-forward block (a key of ``trtdsl.layers.ACTIVATIONS``).
        rope: rotary embedding, or None for learned absolute positions (GPT-2).
        qkv_bias, dense_bias, mlp_bias: which linear layers have a bias.
        tie_word_embeddings: the LM head reuses the token-embedding matrix.
        sliding_window: attention window in tokens, or None; networks are only built for
            ``max_seq_len <= sliding_window`` (then the window never truncates anything).
        scale_attn_by_inverse_layer_idx: GPT-2 option, softmax scale divided by ``layer_idx + 1``.
        dtype: the build dtype; weights are converted to it at load.
        hf_model_type: the Hugging Face ``model_type`` this came from (informational).
        bos_token_id, eos_token_id: special tokens (eos may be a list), for runtimes.
    """

    architecture: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    max_position_embeddings: int
    norm_eps: float
    hidden_act: str
    rope: RopeConfig | None = None
    qkv_bias: bool = False
    dense_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    sliding_window: int | None = None
    scale_attn_by_inverse_layer_idx: bool = False
    dtype: str = "float32"
    hf_model_type: str = ""
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        try:
            dt = dtype_of(self.dtype)
        except DTypeError as exc:
            raise ConfigError(f"model dtype: {exc}") from None
        if dt not in _FLOAT_DTYPES:
            raise ConfigError(f"model dtype {self.dtype!r}: expected float32, float16 or bfloat16")
        object.__setattr__(self, "dtype", dt.value)
        if isinstance(self.eos_token_id, list):
            object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))
        if self.num_kv_heads <= 0 or self.num_heads % self.num_kv_heads:
            raise ConfigError(f"num_heads={self.num_heads} must be a multiple of "
                              f"num_kv_heads={self.num_kv_heads}")
        for name in ("vocab_size", "hidden_size", "num_layers", "head_dim", "intermediate_size",
                     "max_position_embeddings"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be positive")

    @property
    def torch_dtype(self) -> Any:
        return dtype_of(self.dtype).torch

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict; :meth:`from_dict` inverts it."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ModelConfig":
        """Rebuild from :meth:`to_dict`'s output; unknown or missing keys raise ConfigError."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"ModelConfig: unknown keys {unknown}; known: {sorted(known)}")
        values = dict(d)
        if values.get("rope") is not None and not isinstance(values["rope"], RopeConfig):
            values["rope"] = RopeConfig(**values["rope"])
        try:
            return cls(**values)
        except TypeError as exc:
            raise ConfigError(f"ModelConfig: {exc}") from None
