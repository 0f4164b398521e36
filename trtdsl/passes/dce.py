"""Dead-code elimination: drop every layer that no network output depends on.

Plugins that write one of their inputs in place (``PluginSpec.mutates``, e.g. a K/V cache update)
are kept even when their outputs are unused, because the write itself is the effect."""

from __future__ import annotations

from ..ir.network import LayerKind, Network
from ..plugins.registry import get_plugin
from .graph import sync_bookkeeping

__all__ = ["eliminate_dead_code"]


def _has_side_effects(layer) -> bool:  # type: ignore[no-untyped-def]
    if layer.kind is not LayerKind.PLUGIN:
        return False
    return bool(get_plugin(layer.attrs["name"]).mutates)


def eliminate_dead_code(net: Network) -> int:
    """Remove unused layers in place; returns how many were removed."""
    needed = {id(t) for t in net.outputs.values()}
    keep = []
    for layer in reversed(net.layers):
        if any(id(t) in needed for t in layer.outputs) or _has_side_effects(layer):
            keep.append(layer)
            needed.update(id(t) for t in layer.inputs)
    removed = len(net.layers) - len(keep)
    if removed:
        net.layers[:] = keep[::-1]
        sync_bookkeeping(net)
        # Parameter-constant cache entries of removed constants must not be reused by later ops.
        live = {id(layer.outputs[0]) for layer in net.layers if layer.kind is LayerKind.CONSTANT}
        net._param_constants = {k: t for k, t in net._param_constants.items() if id(t) in live}
    return removed
