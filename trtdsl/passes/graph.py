"""Graph helpers shared by the passes: consumers, stable topological re-ordering, and keeping the
network's module bookkeeping (``module_layers``/``module_outputs``) consistent after rewrites."""

from __future__ import annotations

from ..errors import NetworkError
from ..ir.network import Layer, Network, Tensor

__all__ = ["consumers", "output_ids", "toposort", "sync_bookkeeping"]


def consumers(net: Network) -> dict[int, list[Layer]]:
    """``id(tensor) -> layers reading it`` (a layer reading a tensor twice is listed once)."""
    out: dict[int, list[Layer]] = {}
    for layer in net.layers:
        seen: set[int] = set()
        for t in layer.inputs:
            if id(t) not in seen:
                seen.add(id(t))
                out.setdefault(id(t), []).append(layer)
    return out


def output_ids(net: Network) -> set[int]:
    return {id(t) for t in net.outputs.values()}


def toposort(net: Network) -> None:
    """Re-order ``net.layers`` topologically, keeping the original order wherever it is valid
    (a rewrite may place a layer before the producer of one of its inputs). Kahn's algorithm with
    the original position as priority, iterative so deep networks do not hit the recursion limit."""
    import heapq
    layers = net.layers
    produced_by = {id(t): i for i, layer in enumerate(layers) for t in layer.outputs}
    users: list[list[int]] = [[] for _ in layers]
    indegree = [0] * len(layers)
    for i, layer in enumerate(layers):
        deps = {produced_by[id(t)] for t in layer.inputs if id(t) in produced_by}
        indegree[i] = len(deps)
        for d in deps:
            users[d].append(i)
    ready = [i for i, n in enumerate(indegree) if n == 0]
    heapq.heapify(ready)
    order: list[Layer] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(layers[i])
        for u in users[i]:
            indegree[u] -= 1
            if indegree[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(layers):
        stuck = [layers[i].name for i, n in enumerate(indegree) if n > 0][:5]
        raise NetworkError(f"network {net.name!r} has a cycle (or a dangling input) through {stuck}")
    net.layers[:] = order


def sync_bookkeeping(net: Network) -> None:
    """Drop removed layers from ``module_layers`` and stale tensors from ``module_outputs``."""
    names = {layer.name for layer in net.layers}
    live: set[int] = {id(t) for t in net.inputs.values()}
    for layer in net.layers:
        live.update(id(t) for t in layer.outputs)
    net.module_layers = {p: [n for n in ns if n in names] for p, ns in net.module_layers.items()}
    net.module_outputs = {p: ts for p, ts in net.module_outputs.items() if all(id(t) in live for t in ts)}


def producer_of(t: Tensor) -> Layer | None:
    return t.producer
