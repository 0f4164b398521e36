"""Normalization layers over the last dim (computed in float32, as Hugging Face does)."""

from __future__ import annotations

from typing import Any

from .. import functional as F
from ..ir.network import Tensor
from ..module import Module, Parameter

__all__ = ["RmsNorm", "LayerNorm"]


class RmsNorm(Module):
    """``weight * x / sqrt(mean(x**2) + eps)`` (Llama)."""

    def __init__(self, dim: int, eps: float = 1e-6, dtype: Any = "float32"):
        super().__init__()
        self.eps = eps
        self.weight = Parameter((dim,), dtype)

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, self.weight, self.eps)


class LayerNorm(Module):
    """``(x - mean) / sqrt(var + eps) * weight + bias`` (GPT-2). ``bias=False`` uses zeros."""

    def __init__(self, dim: int, eps: float = 1e-5, bias: bool = True, dtype: Any = "float32"):
        super().__init__()
        self.dim, self.eps = dim, eps
        self.weight = Parameter((dim,), dtype)
        self.bias = Parameter((dim,), dtype) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.dim, self.weight, self.bias, self.eps)
