"""Graph surgery for the quantization pass: copying a network, finding the GEMMs with constant
weights and splicing new layers in place of old ones (consumers and dead-code elimination come from
:mod:`trtdsl.passes`).

The pass never mutates the caller's network: :func:`clone_network` copies the graph structure (layers,
tensors, bookkeeping) while sharing the torch values of constants, which are never written in place.
"""

from __future__ import annotations

import copy
import fnmatch
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import torch

from ..ir.network import Layer, LayerKind, Network, Tensor

__all__ = ["GemmSite", "clone_network", "find_gemm_sites", "group_by_input", "splice",
           "constant_source"]


def clone_network(net: Network) -> Network:
    """A structural copy of ``net``: new Layer/Tensor objects, same names, shared constant values."""
    new = copy.copy(net)  # keeps any attribute added to Network later
    tmap: dict[int, Tensor] = {}

    def tensor(t: Tensor, producer: Layer | None) -> Tensor:
        nt = Tensor(t.name, t.dtype, t.shape, new, producer)
        tmap[id(t)] = nt
        return nt

    new.inputs = {n: tensor(t, None) for n, t in net.inputs.items()}
    new.input_specs = {n: replace(s) for n, s in net.input_specs.items()}
    new.layers = []
    for layer in net.layers:
        nl = Layer(layer.kind, layer.name, [tmap[id(t)] for t in layer.inputs], [],
                   dict(layer.attrs), layer.module_path)
        nl.outputs = [tensor(t, nl) for t in layer.outputs]
        new.layers.append(nl)
    new.outputs = {n: tmap[id(t)] for n, t in net.outputs.items()}
    new.module_outputs = {p: [tmap[id(t)] for t in ts] for p, ts in net.module_outputs.items()}
    new.module_layers = {p: list(names) for p, names in net.module_layers.items()}
    new._param_constants = {k: tmap[id(t)] for k, t in net._param_constants.items() if id(t) in tmap}
    new.profiles = list(net.profiles)
    new.symbol_sources = dict(net.symbol_sources)
    new.metadata = copy.deepcopy(net.metadata)
    new._names = set(net._names)
    new._module_stack = []
    return new


def constant_source(t: Tensor) -> Layer | None:
    """The CONSTANT layer ``t`` comes from, looking through rank-expanding reshapes
    (``expand_rank`` adds leading 1-dims so a 2-D weight can meet a 3-D activation)."""
    layer = t.producer
    while layer is not None and layer.kind is LayerKind.SHUFFLE and \
            layer.attrs.get("first_transpose") is None and layer.attrs.get("second_transpose") is None:
        src, out = layer.inputs[0], layer.outputs[0]
        lead = out.ndim - src.ndim
        if lead < 0 or tuple(out.shape[lead:]) != tuple(src.shape) or any(d != 1 for d in out.shape[:lead]):
            return None  # a real reshape, not just added leading 1-dims
        layer = src.producer
    return layer if layer is not None and layer.kind is LayerKind.CONSTANT else None


@dataclass
class GemmSite:
    """A MATRIX_MULTIPLY ``x @ W^T`` whose ``W`` is a constant: the unit the pass rewrites."""

    layer: Layer
    x: Tensor
    weight_layer: Layer
    weight: torch.Tensor  # float [out, in], torch.nn.Linear's layout

    @property
    def weight_name(self) -> str:
        return str(self.weight_layer.attrs.get("weight_name", self.weight_layer.name))

    def describe(self) -> str:
        return f"GEMM {self.layer.name!r} (weight {self.weight_name!r} {tuple(self.weight.shape)})"


def find_gemm_sites(net: Network, exclude: Sequence[str] = ()) -> list[GemmSite]:
    """Every MATRIX_MULTIPLY with a float constant 2-D weight as its second operand, in network order,
    except those whose layer name, module path or weight name matches an ``exclude`` glob."""
    sites = []
    for layer in net.layers:
        if layer.kind is not LayerKind.MATRIX_MULTIPLY or layer.attrs.get("transpose_a"):
            continue
        src = constant_source(layer.inputs[1])
        if src is None or src.outputs[0].ndim != 2 or not src.outputs[0].dtype.is_float:
            continue
        value = src.attrs["value"]
        weight = value if layer.attrs.get("transpose_b") else value.T
        site = GemmSite(layer, layer.inputs[0], src, weight)
        names = (layer.name, layer.module_path, site.weight_name)
        if any(fnmatch.fnmatchcase(n, p) for p in exclude for n in names):
            continue
        sites.append(site)
    return sites


def group_by_input(sites: Sequence[GemmSite]) -> list[list[GemmSite]]:
    """Sites grouped by their activation tensor (q/k/v share one, gate/up another): smoothing and AWQ
    scales act on the shared input, so they are chosen per group."""
    groups: dict[int, list[GemmSite]] = {}
    for s in sites:
        groups.setdefault(id(s.x), []).append(s)
    return list(groups.values())


def splice(net: Network, at: Layer, build: Callable[[], Tensor | None], *,
           replace_layer: bool, module_path: str) -> Tensor | None:
    """Run ``build`` (which adds layers with ordinary ops, appended at the end of ``net``), then move
    those layers to just before ``at``, keeping creation order a topological order.

    With ``replace_layer``, ``at`` is removed and its (single) output tensor is re-homed onto the last
    new layer, so consumers, network outputs and tensor names stay as they were."""
    start = len(net.layers)
    with net.module_scope(module_path):
        result = build()
    new_layers = net.layers[start:]
    del net.layers[start:]
    index = net.layers.index(at)
    net.layers[index:index] = new_layers
    if replace_layer:
        last = new_layers[-1]
        old_out = at.outputs[0]
        old_out.producer = last
        last.outputs = [old_out]
        net.layers.remove(at)
        names = net.module_layers.get(at.module_path)
        if names and at.name in names:
            names.remove(at.name)
        return old_out
    return result
