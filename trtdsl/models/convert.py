"""Hugging Face tensors -> a trtdsl state dict, through one mapping table per architecture.

A table is a tuple of :class:`WeightRule`: a trtdsl parameter name (``{i}`` = layer index), the HF
tensor(s) it is made of (several are concatenated along dim 0: q/k/v -> qkv, gate/up -> gate_up),
and whether HF stores them transposed (GPT-2's ``Conv1D``). Conversion checks everything before
anything is loaded and reports every missing, unexpected or mis-shaped tensor in ONE
:class:`~trtdsl.errors.CheckpointError`, named as the checkpoint names them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

from ..errors import CheckpointError
from ..module import Module, Parameter

__all__ = ["WeightRule", "convert_checkpoint"]


@dataclass(frozen=True)
class WeightRule:
    """``target`` (trtdsl name) is ``cat([HF sources...], dim=0)``, each transposed if ``transpose``."""

    target: str
    sources: tuple[str, ...]
    transpose: bool = False

    def pattern(self) -> re.Pattern:
        return re.compile(re.escape(self.target).replace(re.escape("{i}"), r"(?P<i>\d+)") + "$")


def _model_parameters(model: Module) -> dict[str, Parameter]:
    """Every parameter name, tied aliases included (``lm_head.weight`` and ``embed.weight``)."""
    out: dict[str, Parameter] = {}
    for prefix, module in model.named_modules():
        for name, param in module._parameters.items():
            out[f"{prefix}.{name}" if prefix else name] = param
    return out


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _find_rule(name: str, rules: Sequence[WeightRule]) -> tuple[WeightRule, str] | None:
    for rule in rules:
        m = rule.pattern().match(name)
        if m:
            return rule, m.groupdict().get("i") or ""
    return None


def convert_checkpoint(model: Module, tensors: Mapping[str, torch.Tensor], rules: Sequence[WeightRule],
                       ignore: Sequence[str] = (), dtype: torch.dtype = torch.float32,
                       source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The trtdsl state dict of ``model`` from HF-named ``tensors``, converted to ``dtype``.

    ``ignore`` holds regexes of checkpoint entries that are not weights (cached RoPE frequencies,
    GPT-2's causal-mask buffers). Raises one CheckpointError listing every problem."""
    problems: list[str] = []
    used: set[str] = set()
    out: dict[str, torch.Tensor] = {}
    done: set[int] = set()
    deferred: list[tuple[Parameter, str]] = []  # missing under one tied name; maybe found under another
    params = _model_parameters(model)
    for target, param in params.items():
        found = _find_rule(target, rules)
        if found is None:
            problems.append(f"no weight-mapping rule for model parameter {target!r} (a bug in the "
                            f"{type(model).__name__} mapping table)")
            continue
        rule, i = found
        names = [s.format(i=i) for s in rule.sources]
        present = [n for n in names if n in tensors]
        if id(param) in done:  # a tied alias: its weight is already converted; consume any copy
            used.update(present)
            continue
        missing = [n for n in names if n not in tensors]
        if missing:
            if any(p is param and n != target for n, p in params.items()):
                # e.g. lm_head.weight absent from a tied checkpoint: embed.weight provides it
                deferred.append((param, f"missing: {', '.join(missing)} (for {target} {param.shape})"))
                continue
            problems.append(f"missing: {', '.join(missing)} (for {target} {param.shape})")
            used.update(present)
            continue
        used.update(names)
        parts = [tensors[n].t() if rule.transpose else tensors[n] for n in names]
        described = " + ".join(f"{n} {_shape(p)}" for n, p in zip(names, parts))
        if any(p.ndim != len(param.shape) or p.shape[1:] != torch.Size(param.shape[1:]) for p in parts) \
                or sum(p.shape[0] for p in parts) != param.shape[0]:
            problems.append(f"shape mismatch: {described}{' (transposed)' if rule.transpose else ''} "
                            f"-> {target}: the model expects {param.shape}")
            continue
        value = torch.cat(parts, dim=0) if len(parts) > 1 else parts[0]
        out[target] = value.to(dtype).contiguous()
        done.add(id(param))
    problems += [msg for param, msg in deferred if id(param) not in done]
    ignored = [re.compile(p) for p in ignore]
    problems += [f"unexpected: {n} {_shape(t)}" for n, t in tensors.items()
                 if n not in used and not any(p.search(n) for p in ignored)]
    if problems:
        raise CheckpointError(f"{source} does not fit {type(model).__name__} ({len(problems)} "
                              "problems):\n  " + "\n  ".join(problems))
    return out

