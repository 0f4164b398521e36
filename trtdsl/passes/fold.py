"""Constant folding: a layer whose inputs are all constants is evaluated once, at build time, with
the torch layer functions (the executor's own semantics), and becomes a constant.

Folding must not blow up the engine: a result is folded only if it is no larger than
``max_elements`` or than its inputs together (so a cast or transpose of a big weight folds — the
engine stores the converted weight instead of the original — but expanding a scalar into a huge
tensor does not). ``SHAPE`` of a statically shaped tensor folds even when the tensor is not constant.
"""

from __future__ import annotations

import math

import torch

from ..ir.network import Layer, LayerKind, Network
from ..backends.torch_layers import LAYER_FUNCTIONS
from .graph import sync_bookkeeping

__all__ = ["fold_constants"]

_NEVER = {LayerKind.CONSTANT, LayerKind.PLUGIN}


def _static_numel(shape: tuple) -> int | None:
    if not all(isinstance(d, int) for d in shape):
        return None
    return math.prod(shape)


def _foldable(layer: Layer, max_elements: int) -> bool:
    if layer.kind in _NEVER or len(layer.outputs) != 1:
        return False
    out_numel = _static_numel(layer.outputs[0].shape)
    if out_numel is None:
        return False
    if layer.kind is LayerKind.SHAPE:
        return _static_numel(layer.inputs[0].shape) is not None
    if not all(t.producer is not None and t.producer.kind is LayerKind.CONSTANT for t in layer.inputs):
        return False
    in_numel = sum(_static_numel(t.shape) or 0 for t in layer.inputs)
    return out_numel <= max(max_elements, in_numel)


def fold_constants(net: Network, max_elements: int = 1 << 16) -> int:
    """Fold constant sub-graphs in place; returns how many layers became constants."""
    folded = 0
    ctx = {"constants": {}, "plugin_impls": {}, "device": torch.device("cpu"), "hints": {}}
    for layer in net.layers:
        if not _foldable(layer, max_elements):
            continue
        if layer.kind is LayerKind.SHAPE:
            value = torch.tensor([int(d) for d in layer.inputs[0].shape], dtype=torch.int64)
        else:
            ins = [t.producer.attrs["value"] for t in layer.inputs]  # type: ignore[union-attr]
            try:
                (value,) = LAYER_FUNCTIONS[layer.kind](layer, ins, {}, ctx)
            except (KeyError, RuntimeError, ValueError, IndexError):
                continue  # needs a run-time symbol or is not evaluable here: leave it to the run
        value = value.detach().contiguous()
        attrs = {"value": value, "folded_from": layer.kind.value}
        names = [t.producer.attrs.get("weight_name") for t in layer.inputs if t.producer is not None]
        if len(names) == 1 and names[0]:
            attrs["weight_name"] = names[0]  # a cast/transpose of a weight is still that weight
        layer.kind, layer.inputs, layer.attrs = LayerKind.CONSTANT, [], attrs
        folded += 1
    if folded:
        sync_bookkeeping(net)
    return folded
