"""Token / position embedding: a gather of rows of a ``[num_embeddings, dim]`` table."""

from __future__ import annotations

from typing import Any

from .. import functional as F
from ..ir.network import Tensor
from ..module import Module, Parameter

__all__ = ["Embedding"]


class Embedding(Module):
    """``weight[ids]`` for int32/int64 ``ids`` of any shape."""

    def __init__(self, num_embeddings: int, embedding_dim: int, dtype: Any = "float32"):
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.weight = Parameter((num_embeddings, embedding_dim), dtype)

    def forward(self, ids: Tensor) -> Tensor:
        return F.embedding(ids, self.weight)
