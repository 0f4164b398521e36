"""The pre-norm transformer block every decoder-only model here is made of."""

from __future__ import annotations

from ..ir.network import Tensor
from ..module import Module
from .attention import Attention, StepBatch

__all__ = ["DecoderLayer"]


class DecoderLayer(Module):
    """``h = x + attention(attention_norm(x)); out = h + feed_forward(ffn_norm(h))``.

    The norms and the feed-forward block are given, so Llama (RmsNorm + GatedMLP) and GPT-2
    (LayerNorm + MLP) share this block."""

    def __init__(self, attention_norm: Module, attention: Attention, ffn_norm: Module,
                 feed_forward: Module):
        super().__init__()
        self.attention_norm = attention_norm
        self.attention = attention
        self.ffn_norm = ffn_norm
        self.feed_forward = feed_forward

    def forward(self, x: Tensor, batch: StepBatch) -> Tensor:
        h = x + self.attention(self.attention_norm(x), batch)
        return h + self.feed_forward(self.ffn_norm(h))
