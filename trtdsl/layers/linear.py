"""Linear layers, with the tensor-parallel split chosen at construction (Megatron style).

``ColumnLinear`` splits the output features over ``tp_size`` ranks (no communication needed);
``RowLinear`` splits the input features and would need an all-reduce of the partial sums, which the
IR does not have yet, so it only accepts ``tp_size == 1`` for now (the parameters already take the
per-rank shapes, so checkpoints converted per rank load unchanged once the collective exists).
"""

from __future__ import annotations

from typing import Any

from .. import functional as F
from ..errors import ConfigError
from ..ir.network import Tensor
from ..module import Module, Parameter

__all__ = ["Linear", "ColumnLinear", "RowLinear"]


def _check_tp(name: str, features: int, tp_size: int, tp_rank: int) -> int:
    if tp_size < 1 or not 0 <= tp_rank < tp_size:
        raise ConfigError(f"{name}: tp_rank={tp_rank} must be in [0, tp_size={tp_size})")
    if features % tp_size:
        raise ConfigError(f"{name}: {features} features do not split evenly over tp_size={tp_size}")
    return features // tp_size


class Linear(Module):
    """``y = x @ weight.T + bias`` with ``weight [out_features, in_features]`` (torch layout)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False, dtype: Any = "float32"):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = Parameter((out_features, in_features), dtype)
        self.bias = Parameter((out_features,), dtype) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)


class ColumnLinear(Linear):
    """A linear layer whose output features are split over ``tp_size`` ranks; this rank holds
    features ``[tp_rank * out / tp_size, (tp_rank + 1) * out / tp_size)``."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False, dtype: Any = "float32",
                 tp_size: int = 1, tp_rank: int = 0):
        local = _check_tp("ColumnLinear", out_features, tp_size, tp_rank)
        super().__init__(in_features, local, bias, dtype)
        self.tp_size, self.tp_rank = tp_size, tp_rank


class RowLinear(Linear):
    """A linear layer whose input features are split over ``tp_size`` ranks (partial sums would be
    all-reduced; only ``tp_size == 1`` until the IR has a collective op)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False, dtype: Any = "float32",
                 tp_size: int = 1, tp_rank: int = 0):
        local = _check_tp("RowLinear", in_features, tp_size, tp_rank)
        if tp_size != 1:
            raise ConfigError(f"RowLinear: tp_size={tp_size} needs an all-reduce, which trtdsl's IR "
                              "does not have yet; build with tp_size=1")
        super().__init__(local, out_features, bias, dtype)
        self.tp_size, self.tp_rank = tp_size, tp_rank
