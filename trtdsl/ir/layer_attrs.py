"""The schema of every layer kind's ``attrs``: what the ops write and what every lowering reads.

``LAYER_ATTRS[kind]`` maps each attr name to its description; ``OPTIONAL_ATTRS[kind]`` lists the
ones that may be absent; ``LAYER_ARITY[kind]`` gives the allowed numbers of inputs and outputs. The
torch executor, the TensorRT lowering and the ONNX exporter call :func:`validate_layer` (or
:func:`validate_network`) before lowering, so a layer written by a new op or a pass that breaks the
contract fails at build time with a message naming the layer, not deep inside a backend.

Dims in shapes (``reshape_dims``, ``start``/``size``, fill ``shape``) are ``int`` or
:class:`~trtdsl.ir.symbolic.SymDim`; each backend materializes symbols its own way.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from ..dtypes import DType
from ..errors import NetworkError
from .network import Layer, LayerKind, Network
from .symbolic import SymDim

__all__ = ["LAYER_ATTRS", "OPTIONAL_ATTRS", "LAYER_ARITY", "ELEMENTWISE_OPS", "UNARY_OPS",
           "ACTIVATION_OPS", "REDUCE_OPS", "validate_layer", "validate_network"]

ELEMENTWISE_OPS = ("sum", "sub", "prod", "div", "floor_div", "pow", "max", "min", "equal", "less",
                   "greater", "and", "or", "xor")
UNARY_OPS = ("exp", "log", "sqrt", "recip", "abs", "neg", "sin", "cos", "erf", "floor", "ceil", "round",
             "not", "sign")
ACTIVATION_OPS = ("relu", "sigmoid", "tanh", "gelu_erf", "gelu_tanh", "leaky_relu", "softplus", "clip")
REDUCE_OPS = ("sum", "avg", "max", "min", "prod")

_PERM = "a permutation of the input's axes (tuple of ints), or None for none"
_DIMS = "tuple of dims (int or SymDim), one per axis of the output"

LAYER_ATTRS: dict[LayerKind, dict[str, str]] = {
    LayerKind.CONSTANT: {
        "value": "the data: a CPU torch.Tensor in the output's storage dtype",
        "weight_name": "checkpoint name of the Parameter it holds (absent for other constants)",
        "folded_from": "kind of the layer the constant-folding pass replaced with this constant",
    },
    LayerKind.CAST: {"to": "the output DType (the only way precision changes)"},
    LayerKind.IDENTITY: {},
    LayerKind.ELEMENTWISE: {
        "op": f"one of {ELEMENTWISE_OPS}; inputs have equal ranks (broadcast by size-1 dims) and "
              "dtypes; equal/less/greater give bool; div truncates integers (TensorRT's DIV)",
    },
    LayerKind.UNARY: {"op": f"one of {UNARY_OPS}"},
    LayerKind.ACTIVATION: {
        "op": f"one of {ACTIVATION_OPS}",
        "alpha": "float parameter: leaky_relu slope, softplus scale, clip lower bound",
        "beta": "float parameter: softplus beta, clip upper bound",
    },
    LayerKind.MATRIX_MULTIPLY: {
        "transpose_a": "bool: use the transpose of the last two axes of input 0",
        "transpose_b": "bool: use the transpose of the last two axes of input 1",
    },
    LayerKind.REDUCE: {
        "op": f"one of {REDUCE_OPS} (avg = mean); keeps the input dtype",
        "axes": "sorted tuple of non-negative axes to reduce",
        "keep_dims": "bool: keep reduced axes as size 1",
    },
    LayerKind.SOFTMAX: {"axis": "non-negative axis; computed in float32, output in the input dtype"},
    LayerKind.NORMALIZATION: {
        "kind": "'rms' (inputs x, scale: w * (x / rms(x)).to(dtype)) or 'layer' (x, scale, bias)",
        "axes": "tuple of the trailing non-negative axes normalized over",
        "epsilon": "float added to the variance / mean square",
    },
    LayerKind.SHUFFLE: {
        "first_transpose": _PERM,
        "reshape_dims": f"{_DIMS} after the first transpose, or None for no reshape",
        "second_transpose": _PERM,
    },
    LayerKind.SLICE: {
        "start": "tuple of per-axis start dims (ignored where 'start' is in dynamic)",
        "size": "tuple of per-axis output sizes (the output shape)",
        "stride": "tuple of per-axis positive int strides",
        "mode": "'default', or 'wrap' (indices taken modulo the input size: expand of size-1 axes)",
        "dynamic": "tuple naming which of 'start', 'size', 'stride' come from extra int64 [rank] "
                   "inputs, in that order after the data input",
    },
    LayerKind.CONCATENATION: {"axis": "non-negative axis to concatenate along"},
    LayerKind.GATHER: {
        "axis": "non-negative axis of input 0 to gather along",
        "mode": "'default' (index_select: out shape x[:axis] + idx + x[axis+1:]) or 'elements' "
                "(torch.gather: same rank, out shape = index shape)",
    },
    LayerKind.SELECT: {},
    LayerKind.SHAPE: {},
    LayerKind.FILL: {
        "op": "'linspace': value at index i is alpha + sum(i[axis] * beta[axis])",
        "shape": _DIMS,
        "alpha": "start value (int or float)",
        "beta": "tuple of per-axis deltas (ints or floats)",
        "dtype": "the output DType",
    },
    LayerKind.TOPK: {
        "op": "'max' (largest first) or 'min' (smallest first); outputs values and int32 indices",
        "k": "positive int",
        "axis": "non-negative axis",
    },
    LayerKind.CUMSUM: {
        "axis": "non-negative axis",
        "exclusive": "bool: each element excludes itself",
        "reverse": "bool: accumulate from the end",
    },
    LayerKind.QUANTIZE: {
        "to": "the quantized DType (int8 or fp8); inputs x, scale: q = x / scale",
        "axis": "per-channel axis of the scale, or None for a per-tensor scale",
    },
    LayerKind.DEQUANTIZE: {
        "to": "the float DType of the output; inputs q, scale: x = q * scale",
        "axis": "per-channel axis of the scale, or None for a per-tensor scale",
    },
    LayerKind.PLUGIN: {
        "name": "registered plugin name (trtdsl.plugins.registry)",
        "version": "the plugin spec's version string",
        "fields": "dict of the plugin's attributes (ints, floats, strings, tuples)",
    },
}

OPTIONAL_ATTRS: dict[LayerKind, frozenset[str]] = {
    LayerKind.CONSTANT: frozenset({"weight_name", "folded_from"}),
    LayerKind.ACTIVATION: frozenset({"alpha", "beta"}),
    LayerKind.QUANTIZE: frozenset({"axis"}),
    LayerKind.DEQUANTIZE: frozenset({"axis"}),
}

# (min inputs, max inputs or None, number of outputs or None for any)
LAYER_ARITY: dict[LayerKind, tuple[int, int | None, int | None]] = {
    LayerKind.CONSTANT: (0, 0, 1), LayerKind.CAST: (1, 1, 1), LayerKind.IDENTITY: (1, 1, 1),
    LayerKind.ELEMENTWISE: (2, 2, 1), LayerKind.UNARY: (1, 1, 1), LayerKind.ACTIVATION: (1, 1, 1),
    LayerKind.MATRIX_MULTIPLY: (2, 2, 1), LayerKind.REDUCE: (1, 1, 1), LayerKind.SOFTMAX: (1, 1, 1),
    LayerKind.NORMALIZATION: (2, 3, 1), LayerKind.SHUFFLE: (1, 1, 1), LayerKind.SLICE: (1, 4, 1),
    LayerKind.CONCATENATION: (1, None, 1), LayerKind.GATHER: (2, 2, 1), LayerKind.SELECT: (3, 3, 1),
    LayerKind.SHAPE: (1, 1, 1), LayerKind.FILL: (0, 0, 1), LayerKind.TOPK: (1, 1, 2),
    LayerKind.CUMSUM: (1, 1, 1), LayerKind.QUANTIZE: (2, 2, 1), LayerKind.DEQUANTIZE: (2, 2, 1),
    LayerKind.PLUGIN: (0, None, None),
}


def _is_dim(d: Any) -> bool:
    return (isinstance(d, int) and not isinstance(d, bool)) or isinstance(d, SymDim)


def _dims(v: Any) -> bool:
    return isinstance(v, tuple) and all(_is_dim(d) for d in v)


def _ints(v: Any) -> bool:
    return isinstance(v, tuple) and all(isinstance(d, int) and not isinstance(d, bool) for d in v)


def _one_of(*options: Any) -> Callable[[Any], bool]:
    return lambda v: v in options


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_BOOL: Callable[[Any], bool] = lambda v: isinstance(v, bool)  # noqa: E731
_INT: Callable[[Any], bool] = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731

# Type checks per attr; axis ranges and arities are checked in validate_layer.
_CHECKS: dict[LayerKind, dict[str, Callable[[Any], bool]]] = {
    LayerKind.CONSTANT: {"value": lambda v: isinstance(v, torch.Tensor),
                         "weight_name": lambda v: isinstance(v, str),
                         "folded_from": lambda v: isinstance(v, str)},
    LayerKind.CAST: {"to": lambda v: isinstance(v, DType)},
    LayerKind.ELEMENTWISE: {"op": _one_of(*ELEMENTWISE_OPS)},
    LayerKind.UNARY: {"op": _one_of(*UNARY_OPS)},
    LayerKind.ACTIVATION: {"op": _one_of(*ACTIVATION_OPS), "alpha": _number, "beta": _number},
    LayerKind.MATRIX_MULTIPLY: {"transpose_a": _BOOL, "transpose_b": _BOOL},
    LayerKind.REDUCE: {"op": _one_of(*REDUCE_OPS), "axes": _ints, "keep_dims": _BOOL},
    LayerKind.SOFTMAX: {"axis": _INT},
    LayerKind.NORMALIZATION: {"kind": _one_of("rms", "layer"), "axes": _ints, "epsilon": _number},
    LayerKind.SHUFFLE: {"first_transpose": lambda v: v is None or _ints(v),
                        "reshape_dims": lambda v: v is None or _dims(v),
                        "second_transpose": lambda v: v is None or _ints(v)},
    LayerKind.SLICE: {"start": _dims, "size": _dims, "stride": _ints, "mode": _one_of("default", "wrap"),
                      "dynamic": lambda v: isinstance(v, tuple) and
                      list(v) == [k for k in ("start", "size", "stride") if k in v]},
    LayerKind.CONCATENATION: {"axis": _INT},
    LayerKind.GATHER: {"axis": _INT, "mode": _one_of("default", "elements")},
    LayerKind.FILL: {"op": _one_of("linspace"), "shape": _dims, "alpha": lambda v: isinstance(v, (int, float)),
                     "beta": lambda v: isinstance(v, tuple) and all(_number(d) for d in v),
                     "dtype": lambda v: isinstance(v, DType)},
    LayerKind.TOPK: {"op": _one_of("max", "min"), "k": lambda v: _INT(v) and v > 0, "axis": _INT},
    LayerKind.CUMSUM: {"axis": _INT, "exclusive": _BOOL, "reverse": _BOOL},
    LayerKind.QUANTIZE: {"to": lambda v: isinstance(v, DType), "axis": lambda v: v is None or _INT(v)},
    LayerKind.DEQUANTIZE: {"to": lambda v: isinstance(v, DType), "axis": lambda v: v is None or _INT(v)},
    LayerKind.PLUGIN: {"name": lambda v: isinstance(v, str), "version": lambda v: isinstance(v, str),
                       "fields": lambda v: isinstance(v, dict)},
}


def _problems(layer: Layer) -> list[str]:
    kind, attrs = layer.kind, layer.attrs
    schema = LAYER_ATTRS[kind]
    optional = OPTIONAL_ATTRS.get(kind, frozenset())
    out = [f"missing attr {a!r} ({schema[a]})" for a in schema if a not in attrs and a not in optional]
    out += [f"unknown attr {a!r} (known: {sorted(schema)})" for a in attrs if a not in schema]
    checks = _CHECKS.get(kind, {})
    out += [f"attr {a!r} = {attrs[a]!r} is invalid: expected {schema[a]}"
            for a in attrs if a in checks and not checks[a](attrs[a])]
    lo, hi, n_out = LAYER_ARITY[kind]
    if len(layer.inputs) < lo or (hi is not None and len(layer.inputs) > hi):
        out.append(f"{len(layer.inputs)} inputs; expected {lo}" + ("" if hi == lo else f" to {hi or 'any'}"))
    if n_out is not None and len(layer.outputs) != n_out:
        out.append(f"{len(layer.outputs)} outputs; expected {n_out}")
    if out or not layer.inputs:
        return out
    rank = layer.inputs[0].ndim
    axes = [attrs[a] for a in ("axis",) if isinstance(attrs.get(a), int)] + list(attrs.get("axes") or ())
    out += [f"axis {a} out of range for the rank-{rank} input" for a in axes if not 0 <= a < max(rank, 1)]
    for a in ("first_transpose", "second_transpose") if kind is LayerKind.SHUFFLE else ():
        perm = attrs[a]
        if perm is not None and sorted(perm) != list(range(len(perm))):
            out.append(f"attr {a!r} = {perm} is not a permutation")
    if kind is LayerKind.SLICE:
        if not len(attrs["start"]) == len(attrs["size"]) == len(attrs["stride"]) == rank:
            out.append(f"start/size/stride must each have {rank} entries (the input's rank)")
        if len(layer.inputs) != 1 + len(attrs["dynamic"]):
            out.append(f"{len(layer.inputs)} inputs but dynamic = {attrs['dynamic']}")
    return out


def validate_layer(layer: Layer) -> None:
    """Raise :class:`NetworkError` listing every way ``layer`` breaks its kind's schema."""
    problems = _problems(layer)
    if problems:
        raise NetworkError(f"layer {layer.name!r} ({layer.kind.value}, module "
                           f"{layer.module_path or '<root>'!r}) breaks the layer schema of "
                           "trtdsl/ir/layer_attrs.py:\n  " + "\n  ".join(problems))


def validate_network(network: Network) -> None:
    """Validate every layer of ``network`` (lowerings call this once before emitting)."""
    for layer in network.layers:
        validate_layer(layer)
