"""Network <-> JSON-compatible dict, for the engine file (no pickle anywhere).

Attribute values are encoded with small tagged objects so every IR value round-trips exactly:
``{"$t": [...]}`` tuple, ``{"$d": {...}}`` dict, ``{"$s": [[atoms, coeff], ...]}`` symbolic dim (an
atom is a symbol name or ``{"$fd": [dim, divisor]}``, an opaque floor division), ``{"$dt": "bf16"}``
DType, ``{"$w": i}`` the i-th weight buffer (constant values live outside the JSON, in the engine's
aligned weight section). Floats keep ``inf``/``nan`` (Python's json writes ``Infinity``/``NaN``).
"""

from __future__ import annotations

import enum
from typing import Any, Callable

import torch

from ..dtypes import DType
from ..errors import EngineError
from ..ir.network import InputSpec, Layer, LayerKind, Network, Profile, Tensor
from ..ir.symbolic import SymDim

__all__ = ["encode_value", "decode_value", "network_to_dict", "network_from_dict"]

WeightRef = Callable[[torch.Tensor], int]


def encode_value(value: Any, weight_ref: WeightRef | None = None, where: str = "value") -> Any:
    """Encode an IR value (attr, shape, metadata) into JSON-compatible data."""
    if value is None or isinstance(value, (bool, int, float, str)):
        if isinstance(value, enum.Enum):  # str-enums (LayerKind) are also str: keep their value
            return value.value
        return value
    if isinstance(value, DType):
        return {"$dt": value.value}
    if isinstance(value, SymDim):
        return {"$s": [[[_encode_atom(a) for a in mono], coeff] for mono, coeff in value.terms]}
    if isinstance(value, tuple):
        return {"$t": [encode_value(v, weight_ref, where) for v in value]}
    if isinstance(value, list):
        return [encode_value(v, weight_ref, where) for v in value]
    if isinstance(value, dict):
        return {"$d": {str(k): encode_value(v, weight_ref, where) for k, v in value.items()}}
    if isinstance(value, torch.Tensor):
        if weight_ref is None:
            raise EngineError(f"{where}: a tensor value cannot be stored here")
        return {"$w": weight_ref(value)}
    raise EngineError(f"{where}: cannot serialize a {type(value).__name__} ({value!r}); engine attrs "
                      "must be None/bool/int/float/str, tuples, lists, dicts, DTypes, SymDims or tensors")


def _encode_atom(atom: Any) -> Any:
    if isinstance(atom, str):
        return atom
    _, dim, divisor = atom
    return {"$fd": [encode_value(dim), divisor]}


def decode_value(data: Any, weights: list[torch.Tensor] | None = None) -> Any:
    """Inverse of :func:`encode_value`."""
    if isinstance(data, list):
        return [decode_value(v, weights) for v in data]
    if not isinstance(data, dict):
        return data
    if "$t" in data:
        return tuple(decode_value(v, weights) for v in data["$t"])
    if "$d" in data:
        return {k: decode_value(v, weights) for k, v in data["$d"].items()}
    if "$dt" in data:
        return DType(data["$dt"])
    if "$s" in data:
        terms = tuple((tuple(_decode_atom(a) for a in mono), int(coeff)) for mono, coeff in data["$s"])
        return SymDim(terms)
    if "$w" in data:
        if weights is None:
            raise EngineError("a weight reference appears where no weights are loaded")
        return weights[data["$w"]]
    raise EngineError(f"unknown tagged value {sorted(data)} in the engine graph")


def _decode_atom(atom: Any) -> Any:
    if isinstance(atom, str):
        return atom
    dim, divisor = atom["$fd"]
    return ("floordiv", decode_value(dim), int(divisor))


def _tensor_dict(t: Tensor) -> dict:
    return {"name": t.name, "dtype": t.dtype.value, "shape": encode_value(tuple(t.shape))}


def network_to_dict(net: Network, weight_ref: WeightRef) -> dict:
    """The whole network as JSON-compatible data; tensors in attrs go through ``weight_ref``."""
    layers = []
    for layer in net.layers:
        attrs = {k: encode_value(v, weight_ref, f"layer {layer.name!r} attr {k!r}")
                 for k, v in layer.attrs.items()}
        layers.append({"kind": layer.kind.value, "name": layer.name, "module_path": layer.module_path,
                       "inputs": [t.name for t in layer.inputs],
                       "outputs": [_tensor_dict(t) for t in layer.outputs], "attrs": attrs})
    live = {id(t) for layer in net.layers for t in layer.outputs} | {id(t) for t in net.inputs.values()}
    return {
        "name": net.name,
        "inputs": [{"name": n, "tensor": net.inputs[n].name, "dtype": spec.dtype.value,
                    "shape": encode_value(tuple(spec.shape))} for n, spec in net.input_specs.items()],
        "layers": layers,
        "outputs": {n: t.name for n, t in net.outputs.items()},
        "profiles": [{k: list(v) for k, v in p.ranges.items()} for p in net.profiles],
        "symbol_sources": {k: encode_value(v) for k, v in net.symbol_sources.items()},
        "module_layers": dict(net.module_layers),
        "module_outputs": {p: [t.name for t in ts] for p, ts in net.module_outputs.items()
                           if all(id(t) in live for t in ts)},
        "metadata": encode_value(dict(net.metadata), weight_ref, "network metadata"),
        "counter": net._counter,
    }


def network_from_dict(data: dict, weights: list[torch.Tensor]) -> Network:
    """Rebuild a :class:`Network` (same layer, tensor and output names) from :func:`network_to_dict`."""
    try:
        return _network_from_dict(data, weights)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise EngineError(f"the engine graph is malformed ({type(exc).__name__}: {exc})") from None


def _network_from_dict(data: dict, weights: list[torch.Tensor]) -> Network:
    net = Network(data["name"])
    tensors: dict[str, Tensor] = {}
    for spec in data["inputs"]:
        t = net.add_input(spec["name"], spec["dtype"], decode_value(spec["shape"]))
        t.name = spec["tensor"]
        net._names.add(t.name)
        tensors[t.name] = t
    net.input_specs = {n: InputSpec(n, s.dtype, s.shape) for n, s in net.input_specs.items()}
    for ld in data["layers"]:
        layer = Layer(LayerKind(ld["kind"]), ld["name"], [tensors[n] for n in ld["inputs"]], [],
                      {k: decode_value(v, weights) for k, v in ld["attrs"].items()}, ld["module_path"])
        for od in ld["outputs"]:
            out = Tensor(od["name"], DType(od["dtype"]), decode_value(od["shape"]), net, layer)
            layer.outputs.append(out)
            tensors[out.name] = out
            net._names.add(out.name)
        net._names.add(layer.name)
        net.layers.append(layer)
    net.outputs = {n: tensors[t] for n, t in data["outputs"].items()}
    net.profiles = [Profile({k: tuple(v) for k, v in p.items()}) for p in data["profiles"]]
    net.symbol_sources = {k: decode_value(v) for k, v in data["symbol_sources"].items()}
    net.module_layers = {k: list(v) for k, v in data["module_layers"].items()}
    net.module_outputs = {p: [tensors[n] for n in names] for p, names in data["module_outputs"].items()}
    net.metadata = decode_value(data["metadata"], weights)
    net._counter = int(data["counter"])
    return net
