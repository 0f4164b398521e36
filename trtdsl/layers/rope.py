"""Rotary position embedding: the frozen :class:`RopeConfig` and the ``rope_cos_sin`` table that the
attention plugin reads (``[max_positions, rotary_dim]``, cos of each position's angles, then sin).

Every scaling variant is folded into the table at build time, so the kernels only ever look rows up:

- ``default``: ``inv_freq[j] = theta ** (-2j / rotary_dim)``;
- ``linear``: positions divided by ``factor`` (``inv_freq / factor``);
- ``llama3``: Llama 3.1's piecewise rescaling of low/medium/high frequencies;
- ``dynamic`` (dynamic NTK): position ``p`` uses the base Hugging Face uses when the longest sequence
  is ``p + 1`` tokens. This equals Hugging Face token by token (decode), and for any prompt shorter
  than ``original_max_positions``; a longer prompt processed in one step gets, in Hugging Face, the
  base of its full length at every position, which no position-indexed table can reproduce.

``inv_freq`` is computed in float32 like Hugging Face (its rounding is systematic, so matching it
keeps logits within float32 noise); angles and their cos/sin are then computed in float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import ConfigError
from ..plugins.attention_reference import rope_cos_sin_table

__all__ = ["RopeConfig", "ROPE_SCALING_TYPES", "rope_inv_freq", "rope_cos_sin"]

ROPE_SCALING_TYPES = ("default", "linear", "dynamic", "llama3")


@dataclass(frozen=True)
class RopeConfig:
    """How a model rotates q and k.

    Attributes:
        rotary_dim: features of each head that rotate (``head_dim * partial_rotary_factor``), even.
        theta: the base wavelength (``rope_theta``).
        style: ``"neox"`` (rotate halves, Llama) or ``"gptj"`` (rotate interleaved pairs).
        scaling: one of :data:`ROPE_SCALING_TYPES`.
        factor: the scaling factor (``linear``, ``dynamic``, ``llama3``).
        low_freq_factor, high_freq_factor: ``llama3`` only.
        original_max_positions: the pre-training context (``llama3``, ``dynamic``).
    """

    rotary_dim: int
    theta: float = 10000.0
    style: str = "neox"
    scaling: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_positions: int = 0

    def __post_init__(self) -> None:
        if self.scaling not in ROPE_SCALING_TYPES:
            raise ConfigError(f"unsupported RoPE scaling type {self.scaling!r}; supported: "
                              f"{list(ROPE_SCALING_TYPES)}")
        if self.rotary_dim <= 0 or self.rotary_dim % 2:
            raise ConfigError(f"rotary_dim={self.rotary_dim} must be a positive even number")
        if self.style not in ("neox", "gptj"):
            raise ConfigError(f"rope style {self.style!r}; expected 'neox' or 'gptj'")
        if self.scaling != "default" and self.factor <= 0:
            raise ConfigError(f"RoPE scaling {self.scaling!r} needs a positive factor, got {self.factor}")
        if self.scaling in ("llama3", "dynamic") and self.original_max_positions <= 0:
            raise ConfigError(f"RoPE scaling {self.scaling!r} needs original_max_positions > 0")


def _base_inv_freq(theta: float, dim: int) -> torch.Tensor:
    exponents = torch.arange(0, dim, 2, dtype=torch.int64).to(torch.float32) / dim
    return 1.0 / (theta ** exponents)


def _llama3(inv_freq: torch.Tensor, cfg: RopeConfig) -> torch.Tensor:
    old = cfg.original_max_positions
    low_wavelen, high_wavelen = old / cfg.low_freq_factor, old / cfg.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    # Long wavelengths (low frequencies) are slowed down by `factor`, short ones kept, and the band
    # between interpolated smoothly.
    scaled = torch.where(wavelen > low_wavelen, inv_freq / cfg.factor, inv_freq)
    smooth = (old / wavelen - cfg.low_freq_factor) / (cfg.high_freq_factor - cfg.low_freq_factor)
    smoothed = (1 - smooth) * scaled / cfg.factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, scaled)


def rope_inv_freq(cfg: RopeConfig) -> torch.Tensor:
    """The float32 ``[rotary_dim // 2]`` inverse frequencies (all scalings but ``dynamic``, which
    depends on the position; see :func:`rope_cos_sin`)."""
    inv_freq = _base_inv_freq(cfg.theta, cfg.rotary_dim)
    if cfg.scaling == "linear":
        return inv_freq / cfg.factor
    if cfg.scaling == "llama3":
        return _llama3(inv_freq, cfg)
    return inv_freq


def _dynamic_table(cfg: RopeConfig, max_positions: int) -> torch.Tensor:
    dim, orig = cfg.rotary_dim, cfg.original_max_positions
    positions = torch.arange(max_positions, dtype=torch.float64)
    seq_len = torch.clamp(positions + 1, min=orig)
    bases = cfg.theta * ((cfg.factor * seq_len / orig) - (cfg.factor - 1)) ** (dim / (dim - 2))
    exponents = (torch.arange(0, dim, 2, dtype=torch.int64).to(torch.float32) / dim).to(torch.float64)
    inv_freq = (1.0 / bases[:, None].to(torch.float32) ** exponents.to(torch.float32)).to(torch.float64)
    angles = positions[:, None] * inv_freq
    return torch.cat([angles.cos(), angles.sin()], dim=-1).to(torch.float32)


def rope_cos_sin(cfg: RopeConfig | None, max_positions: int) -> torch.Tensor:
    """The plugin's float32 ``[max_positions, rotary_dim]`` table (``[1, 0]`` when ``cfg`` is None:
    the model has no RoPE)."""
    if cfg is None:
        return torch.zeros(1, 0, dtype=torch.float32)
    if cfg.scaling == "dynamic":
        return _dynamic_table(cfg, max_positions)
    return rope_cos_sin_table(rope_inv_freq(cfg), max_positions)
