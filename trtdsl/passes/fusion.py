"""Fusion passes.

* :func:`fuse_elementwise` groups trees of pointwise layers (elementwise, unary, activation, cast,
  select) whose intermediate results have exactly one consumer and are not network outputs into one
  ``trtdsl.pointwise`` plugin layer (``silu(gate) * up`` becomes one layer). Worth it on backends that
  compile such a layer into one kernel; TensorRT fuses pointwise layers itself, so the builder only
  runs this for the torch backend.
* :func:`fuse_add_rms_norm` rewrites ``n = rms_norm(a + b)`` into one ``trtdsl.add_rms_norm`` layer
  producing both ``n`` and ``a + b`` (the residual stream), the pattern of every pre-norm decoder.
  The builder applies it only where the backend has a kernel for it.
* :func:`fuse_swiglu` rewrites what ``F.swiglu`` writes (``gate, up = chunk(x, 2, -1)``;
  ``gate * sigmoid(gate) * up``) into one ``trtdsl.swiglu`` layer, again only where the backend
  has a kernel (three small kernels per decoder layer become one).

Both keep the tensors (names, shapes, consumers) of the values they produce, only their producer
changes, so network outputs and debug outputs are untouched.
"""

from __future__ import annotations

from ..ir.network import Layer, LayerKind, Network
from ..ir.symbolic import dim_equal
from . import fused_plugins
from .graph import consumers, output_ids, sync_bookkeeping, toposort

__all__ = ["fuse_elementwise", "fuse_add_rms_norm", "fuse_swiglu"]

_POINTWISE = {LayerKind.ELEMENTWISE, LayerKind.UNARY, LayerKind.ACTIVATION, LayerKind.CAST,
              LayerKind.SELECT}


def _groups(net: Network) -> list[list[Layer]]:
    """Pointwise trees (members in network order, root last) of at least two layers.

    A layer absorbs the group of an input's producer when that input feeds only this layer and is
    not a network output; the producer is then that group's root, so every group keeps exactly one
    value that escapes it (its root's output)."""
    users = consumers(net)
    outs = output_ids(net)
    group_of: dict[int, list[Layer]] = {}
    for layer in net.layers:
        if layer.kind not in _POINTWISE:
            continue
        group = [layer]
        for t in dict.fromkeys(layer.inputs):
            p = t.producer
            if p is None or id(p) not in group_of or id(t) in outs or len(p.outputs) != 1:
                continue
            if [id(u) for u in users.get(id(t), [])] != [id(layer)]:
                continue
            group = group_of[id(p)] + group
        for member in group:
            group_of[id(member)] = group
    position = {id(x): i for i, x in enumerate(net.layers)}
    result = []
    for layer in net.layers:
        g = group_of.get(id(layer))
        if g is not None and len(g) > 1 and max(g, key=lambda x: position[id(x)]) is layer:
            result.append(sorted(g, key=lambda x: position[id(x)]))
    return result


def _program(group: list[Layer]) -> tuple[tuple, list]:
    """The plugin program of a group and its external inputs."""
    index = {id(layer.outputs[0]): j for j, layer in enumerate(group)}
    inputs: list = []
    in_index: dict[int, int] = {}
    steps = []
    for layer in group:
        args = []
        for t in layer.inputs:
            if id(t) in index:
                args.append(("tmp", index[id(t)]))
            else:
                if id(t) not in in_index:
                    in_index[id(t)] = len(inputs)
                    inputs.append(t)
                args.append(("in", in_index[id(t)]))
        steps.append({"kind": layer.kind.value, "attrs": dict(layer.attrs), "args": tuple(args)})
    return tuple(steps), inputs


def fuse_elementwise(net: Network) -> int:
    """Fuse pointwise trees in place; returns the number of layers removed."""
    removed = 0
    for group in _groups(net):
        root = group[-1]
        program, inputs = _program(group)
        out = root.outputs[0]
        members = {id(x) for x in group[:-1]}
        net.layers[:] = [x for x in net.layers if id(x) not in members]
        root.kind, root.inputs = LayerKind.PLUGIN, inputs
        root.attrs = {"name": fused_plugins.POINTWISE, "version": "1",
                      "fields": {"program": program, "out_dtype": out.dtype, "out_shape": out.shape}}
        removed += len(group) - 1
    if removed:
        sync_bookkeeping(net)
    return removed


def fuse_add_rms_norm(net: Network) -> int:
    """Fuse ``rms_norm(a + b)`` (same-shaped ``a``, ``b``) in place; returns how many were fused."""
    fused = 0
    for norm in list(net.layers):
        if norm.kind is not LayerKind.NORMALIZATION or norm.attrs.get("kind") != "rms":
            continue
        total = norm.inputs[0]
        add = total.producer
        if add is None or add.kind is not LayerKind.ELEMENTWISE or add.attrs.get("op") != "sum":
            continue
        a, b = add.inputs
        if len(a.shape) != len(total.shape) or not all(
                dim_equal(x, y) and dim_equal(x, z) for x, y, z in zip(a.shape, b.shape, total.shape)):
            continue  # a broadcasting add is not the residual pattern
        fused_layer = norm
        norm_out = norm.outputs[0]
        fused_layer.kind = LayerKind.PLUGIN
        fused_layer.inputs = [a, b, norm.inputs[1]]
        fused_layer.attrs = {"name": fused_plugins.ADD_RMS_NORM, "version": "1",
                             "fields": {"axes": tuple(norm.attrs["axes"]), "epsilon": norm.attrs["epsilon"]}}
        total.producer = fused_layer
        fused_layer.outputs = [norm_out, total]
        net.layers.remove(add)
        fused += 1
    if fused:
        # Consumers of a + b may sit between the add and the norm: restore a topological order.
        toposort(net)
        sync_bookkeeping(net)
    return fused


def _halves(gate_slice: Layer, up_slice: Layer) -> bool:
    """The two slices take the first and second half of the same tensor's last dim."""
    if gate_slice.kind is not LayerKind.SLICE or up_slice.kind is not LayerKind.SLICE:
        return False
    if gate_slice.inputs[0] is not up_slice.inputs[0] or gate_slice.attrs.get("dynamic") or \
            up_slice.attrs.get("dynamic") or gate_slice.attrs.get("mode") != "default":
        return False
    x = gate_slice.inputs[0]
    width = x.shape[-1]
    if not isinstance(width, int) or width % 2:
        return False
    half, rank = width // 2, len(x.shape)
    lead = tuple(0 for _ in range(rank - 1))
    return (gate_slice.attrs["start"] == lead + (0,) and up_slice.attrs["start"] == lead + (half,)
            and gate_slice.attrs["stride"] == (1,) * rank and up_slice.attrs["stride"] == (1,) * rank
            and gate_slice.attrs["size"][-1] == half and up_slice.attrs["size"][-1] == half)


def swiglu_match(out_mul: Layer, users: dict) -> tuple[Layer, ...] | None:
    """(gate slice, up slice, sigmoid, gate * sigmoid, out mul) if ``out_mul`` ends the pattern."""
    if out_mul.kind is not LayerKind.ELEMENTWISE or out_mul.attrs.get("op") != "prod":
        return None
    silu_mul, up_slice = (t.producer for t in out_mul.inputs)
    if silu_mul is None or up_slice is None or silu_mul.kind is not LayerKind.ELEMENTWISE or \
            silu_mul.attrs.get("op") != "prod":
        return None
    gate, sig_out = silu_mul.inputs
    sig = sig_out.producer
    if sig is None or sig.kind is not LayerKind.ACTIVATION or sig.attrs.get("op") != "sigmoid" or \
            sig.inputs[0] is not gate or gate.producer is None:
        return None
    if not _halves(gate.producer, up_slice):
        return None
    inner = [gate, sig_out, silu_mul.outputs[0], up_slice.outputs[0]]
    if any(len(users.get(id(t), [])) != (2 if t is gate else 1) for t in inner):
        return None  # an intermediate value is used elsewhere: keep the layers
    return gate.producer, up_slice, sig, silu_mul, out_mul


def fuse_swiglu(net: Network) -> int:
    """Fuse ``F.swiglu``'s layers in place; returns how many were fused."""
    users = consumers(net)
    outs = output_ids(net)
    fused = 0
    for layer in list(net.layers):
        match = swiglu_match(layer, users)
        if match is None or any(id(t) in outs for m in match[:-1] for t in m.outputs):
            continue
        gate_slice, up_slice, sig, silu_mul, out_mul = match
        x = gate_slice.inputs[0]
        out_mul.kind = LayerKind.PLUGIN
        out_mul.inputs = [x]
        out_mul.attrs = {"name": fused_plugins.SWIGLU, "version": "1", "fields": {}}
        for dead in (gate_slice, up_slice, sig, silu_mul):
            net.layers.remove(dead)
        fused += 1
    if fused:
        sync_bookkeeping(net)
    return fused
