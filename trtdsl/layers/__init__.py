"""Reusable building blocks of LLMs, as ``trtdsl.Module`` subclasses.

Every build-time choice (activation, bias, attention backend, RoPE scaling, tensor-parallel split)
is made in ``__init__``; ``forward`` only writes ops.
"""

from .attention import ATTENTION_BACKENDS, Attention, StepBatch, block_causal_mask, rope_rows
from .decoder import DecoderLayer
from .embedding import Embedding
from .linear import ColumnLinear, Linear, RowLinear
from .mlp import ACTIVATIONS, MLP, GatedMLP, activation_fn
from .norm import LayerNorm, RmsNorm
from .rope import ROPE_SCALING_TYPES, RopeConfig, rope_cos_sin, rope_inv_freq

__all__ = ["Attention", "StepBatch", "ATTENTION_BACKENDS", "block_causal_mask", "rope_rows",
           "DecoderLayer", "Embedding", "Linear", "ColumnLinear", "RowLinear", "MLP", "GatedMLP",
           "ACTIVATIONS", "activation_fn", "RmsNorm", "LayerNorm", "RopeConfig", "ROPE_SCALING_TYPES",
           "rope_cos_sin", "rope_inv_freq"]
