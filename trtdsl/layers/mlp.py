"""Feed-forward blocks: ``MLP`` (up, activation, down: GPT-2) and ``GatedMLP`` (SwiGLU: Llama).

The activation is picked once at construction from :data:`ACTIVATIONS`, so ``forward`` has no
branches and an unknown name fails when the model is created, not when it is built."""

from __future__ import annotations

import functools
from typing import Any, Callable

from .. import functional as F
from ..errors import ConfigError
from ..ir.network import Tensor
from ..module import Module
from .linear import ColumnLinear, RowLinear

__all__ = ["ACTIVATIONS", "MLP", "GatedMLP", "activation_fn"]

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu": functools.partial(F.gelu, approximate="none"),
    "gelu_tanh": functools.partial(F.gelu, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
}


def activation_fn(name: str) -> Callable[[Tensor], Tensor]:
    """The activation called ``name``; raises ConfigError listing the known ones."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ConfigError(f"unknown activation {name!r}; supported: {sorted(ACTIVATIONS)}") from None


class MLP(Module):
    """``proj(act(fc(x)))``."""

    def __init__(self, hidden_size: int, intermediate_size: int, activation: str = "gelu_tanh",
                 bias: bool = True, dtype: Any = "float32", tp_size: int = 1, tp_rank: int = 0):
        super().__init__()
        self.act = activation_fn(activation)
        self.fc = ColumnLinear(hidden_size, intermediate_size, bias, dtype, tp_size, tp_rank)
        self.proj = RowLinear(intermediate_size, hidden_size, bias, dtype, tp_size, tp_rank)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.act(self.fc(x)))


def _gated(act: Callable[[Tensor], Tensor], gate_up: Tensor) -> Tensor:
    gate, up = F.chunk(gate_up, 2, dim=-1)
    return F.mul(act(gate), up)


class GatedMLP(Module):
    """``down(act(gate(x)) * up(x))`` with one fused ``gate_up`` weight (gate rows, then up rows),
    so the two input projections are one matmul. ``activation="silu"`` is SwiGLU (``F.swiglu``,
    which backends may fuse)."""

    def __init__(self, hidden_size: int, intermediate_size: int, activation: str = "silu",
                 bias: bool = False, dtype: Any = "float32", tp_size: int = 1, tp_rank: int = 0):
        super().__init__()
        self.gated_act = F.swiglu if activation == "silu" else \
            functools.partial(_gated, activation_fn(activation))
        self.gate_up = ColumnLinear(hidden_size, 2 * intermediate_size, bias, dtype, tp_size, tp_rank)
        self.down = RowLinear(intermediate_size, hidden_size, bias, dtype, tp_size, tp_rank)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(self.gated_act(self.gate_up(x)))
