"""Which GEMMs cost the most accuracy when quantized, and the ``float_fraction`` recipe built on it.

A quantized model's loss is rarely spread evenly over its GEMMs: on SmolLM2-135M the fp8 gate/up GEMM
of the last layer moves the logits about 3x more than any other group. :func:`gemm_sensitivity` measures,
for every group of GEMMs reading one activation (q/k/v; o; gate/up; down), how far the network's
output distribution moves when only that group is quantized: the mean KL divergence
``KL(p_float || p_quantized)`` of the ``logits`` rows over a few calibration steps (every token
with a network built with ``context_logits=True``, else the last token of each sequence).
:func:`choose_float_groups` keeps the most sensitive groups, by KL per weight, in float while they
hold at most a given fraction of the quantizable GEMM weights; ``QuantConfig(float_fraction=...)``
runs both inside ``quantize_network`` (ModelOpt's ``auto_quantize`` makes the same trade with a
bits budget). The ranking uses calibration text only, never the text accuracy is measured on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch

from ..errors import ConfigError
from ..ir.network import Network
from ..passes.dce import eliminate_dead_code
from .calibration import progress_bar
from .graph import GemmSite, clone_network, find_gemm_sites, group_by_input

__all__ = ["GroupSensitivity", "gemm_sensitivity", "choose_float_groups"]

#: Quantizes one group of GEMMs of a (cloned) network in place, with the recipe being ranked.
QuantizeGroup = Callable[[Network, list[GemmSite]], None]


@dataclass(frozen=True)
class GroupSensitivity:
    """One group of GEMMs sharing an input: its layer names, weight count and measured KL."""

    layers: tuple[str, ...]
    weights: int
    kl: float


def _log_probs(network: Network, feeds: Sequence[Mapping[str, Any]]) -> list[torch.Tensor]:
    from ..backends.torch_executor import TorchExecutor

    if "logits" not in network.outputs:
        raise ConfigError(f"gemm_sensitivity: network {network.name!r} has no 'logits' output to compare")
    executor = TorchExecutor(network, "cpu")
    return [executor.run(feed)["logits"].double().log_softmax(-1) for feed in feeds]


def _kl(reference: list[torch.Tensor], other: list[torch.Tensor]) -> float:
    total = sum(float((ref.exp() * (ref - out)).sum()) for ref, out in zip(reference, other))
    return total / sum(ref.shape[0] for ref in reference)


def gemm_sensitivity(network: Network, feeds: Sequence[Mapping[str, Any]], quantize_group: QuantizeGroup,
                     exclude: Sequence[str] = (), progress: bool = False) -> list[GroupSensitivity]:
    """Every GEMM group of ``network`` (outside ``exclude``) with the KL its quantization alone causes
    over ``feeds`` (step feeds of the float network), most sensitive first.

    ``quantize_group(net, group)`` quantizes one group in place (``quantize_network`` passes its own
    recipe); the network itself is not modified. Costs one network run per feed and group."""
    if not feeds:
        raise ConfigError("gemm_sensitivity: needs at least one calibration step feed")
    reference = _log_probs(network, feeds)
    groups = group_by_input(find_gemm_sites(network, exclude))
    ranking = []
    for group in progress_bar(groups, progress, "GEMM sensitivity", "group"):
        names = {site.layer.name for site in group}
        net = clone_network(network)
        quantize_group(net, [s for s in find_gemm_sites(net, exclude) if s.layer.name in names])
        eliminate_dead_code(net)
        ranking.append(GroupSensitivity(tuple(site.layer.name for site in group),
                                        sum(site.weight.numel() for site in group),
                                        _kl(reference, _log_probs(net, feeds))))
    return sorted(ranking, key=lambda g: -g.kl)


def choose_float_groups(ranking: Sequence[GroupSensitivity], fraction: float) -> list[GroupSensitivity]:
    """The groups to leave in float: by decreasing KL per weight, each that still fits in
    ``fraction`` of all ranked groups' weights (a greedy knapsack: a large group that does not fit is
    skipped for smaller ones after it)."""
    budget = fraction * sum(g.weights for g in ranking)
    chosen, used = [], 0
    for group in sorted(ranking, key=lambda g: -g.kl / max(g.weights, 1)):
        if group.kl > 0.0 and used + group.weights <= budget:
            chosen.append(group)
            used += group.weights
    return chosen
