"""The network IR: ``Network``, ``Tensor``, ``Layer`` and optimization profiles.

A network is an ordered list of layers (creation order is a topological order) whose kinds mirror
TensorRT's layer kinds, so the TensorRT lowering is one emitter per kind and the torch executor one
function per kind. Tensors carry their dtype and a (symbolic) shape inferred when the op is written.

There is no module-level "current network": ops find the network through their input tensors. The
only scope is explicit (``with net.scope():``), needed where an op has no tensor input to find the
network from (``F.arange(5)``, ``F.constant(...)``); using one with no active scope raises
:class:`~trtdsl.errors.ScopeError`.
"""

from __future__ import annotations

import contextlib
import contextvars
import enum
import fnmatch
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from ..dtypes import DType, dtype_of
from ..errors import NetworkError, ProfileError, ScopeError
from .symbolic import Dim, SymDim, shape_repr

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["LayerKind", "Layer", "Tensor", "Network", "Profile", "InputSpec", "active_network"]


class LayerKind(str, enum.Enum):
    """Layer kinds, one per TensorRT ``ILayer`` kind we lower to (see ``ir/layer_attrs.py``)."""

    CONSTANT = "constant"
    CAST = "cast"
    IDENTITY = "identity"
    ELEMENTWISE = "elementwise"
    UNARY = "unary"
    ACTIVATION = "activation"
    MATRIX_MULTIPLY = "matrix_multiply"
    REDUCE = "reduce"
    SOFTMAX = "softmax"
    NORMALIZATION = "normalization"
    SHUFFLE = "shuffle"
    SLICE = "slice"
    CONCATENATION = "concatenation"
    GATHER = "gather"
    SELECT = "select"
    SHAPE = "shape"
    FILL = "fill"
    TOPK = "topk"
    CUMSUM = "cumsum"
    QUANTIZE = "quantize"
    DEQUANTIZE = "dequantize"
    PLUGIN = "plugin"


@dataclass(eq=False)
class Layer:
    """One node of the graph. ``attrs`` are kind-specific (documented in ``ir/layer_attrs.py``)."""

    kind: LayerKind
    name: str
    inputs: list["Tensor"]
    outputs: list["Tensor"] = field(default_factory=list)
    attrs: dict[str, Any] = field(default_factory=dict)
    module_path: str = ""

    def __repr__(self) -> str:
        ins = ", ".join(t.name for t in self.inputs)
        outs = ", ".join(f"{t.name}: {t.dtype.value}{shape_repr(t.shape)}" for t in self.outputs)
        return f"{self.kind.value} {self.name}({ins}) -> {outs}"


class Tensor:
    """A value in a network: name, dtype, (symbolic) shape, and the layer that produces it.

    Operators and methods (``+``, ``@``, ``x[..., :4]``, ``.view``, ``.permute``, ``.cast``, ...) add
    layers to the tensor's own network through ``trtdsl.functional``."""

    __slots__ = ("name", "dtype", "shape", "network", "producer", "__weakref__")
    __array_priority__ = 1000  # so numpy scalars defer to our reflected operators

    def __init__(self, name: str, dtype: DType, shape: tuple, network: "Network",
                 producer: Layer | None = None):
        self.name = name
        self.dtype = dtype
        self.shape = tuple(shape)
        self.network = network
        self.producer = producer

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def size(self, dim: int | None = None) -> Any:
        return self.shape if dim is None else self.shape[dim]

    def mark_output(self, name: str | None = None) -> "Tensor":
        """Mark this tensor as a network output (e.g. a debug output) under ``name``."""
        self.network.mark_output(self, name)
        return self

    def __repr__(self) -> str:
        return f"Tensor({self.name!r}, {self.dtype.value}, shape={shape_repr(self.shape)})"

    def __bool__(self) -> bool:
        raise NetworkError(f"the truth value of network tensor {self.name!r} is only known when the "
                           "network runs; use trtdsl.functional.where(...) instead of `if`/`and`")

    def __iter__(self) -> Iterator["Tensor"]:
        raise NetworkError(f"cannot iterate over network tensor {self.name!r}; use "
                           "trtdsl.functional.split/unbind or indexing")

    def __len__(self) -> int:
        first = self.shape[0] if self.shape else None
        if isinstance(first, int):
            return first
        raise NetworkError(f"len() of tensor {self.name!r} with shape {shape_repr(self.shape)} "
                           "is not static; use tensor.shape[0]")

    __hash__ = object.__hash__


@dataclass
class InputSpec:
    """A network input: name, dtype, shape (named dims for the dynamic ones)."""

    name: str
    dtype: DType
    shape: tuple  # ints and dim names (str)

    @property
    def dynamic_dims(self) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}


@dataclass(frozen=True)
class Profile:
    """One optimization profile: a ``(min, opt, max)`` range for every named dynamic dim."""

    ranges: dict[str, tuple[int, int, int]]

    def shapes_for(self, spec: InputSpec) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """Per-input ``(min, opt, max)`` shapes, the form TensorRT's profiles take."""
        picks = [tuple(self.ranges[d][k] if isinstance(d, str) else d for d in spec.shape)
                 for k in range(3)]
        return picks[0], picks[1], picks[2]

    def contains(self, dims: dict[str, int]) -> bool:
        return all(lo <= dims[n] <= hi for n, (lo, _, hi) in self.ranges.items() if n in dims)


_ACTIVE: contextvars.ContextVar[list["Network"]] = contextvars.ContextVar("trtdsl_active", default=[])


def active_network() -> "Network":
    """The network of the innermost ``with net.scope():`` block; raises ScopeError if none."""
    stack = _ACTIVE.get()
    if not stack:
        raise ScopeError("this op has no tensor input to find its network from: create it inside "
                         "`with network.scope():` or pass a tensor of the network")
    return stack[-1]


class Network:
    """A graph of layers with named inputs, outputs and optimization profiles."""

    def __init__(self, name: str = "network"):
        self.name = name
        self.layers: list[Layer] = []
        self.inputs: dict[str, Tensor] = {}
        self.input_specs: dict[str, InputSpec] = {}
        self.outputs: dict[str, Tensor] = {}
        self.profiles: list[Profile] = []
        # Where each symbol's value comes from: ("input", input_name, axis) or
        # ("value", tensor_name) for data-dependent sizes computed at run time.
        self.symbol_sources: dict[str, tuple] = {}
        self.module_layers: dict[str, list[str]] = {}  # module path -> names of layers it produced
        self.module_outputs: dict[str, list[Tensor]] = {}  # module path -> its forward's outputs
        self.metadata: dict[str, Any] = {}
        self._names: set[str] = set()
        self._module_stack: list[str] = []
        self._param_constants: dict[int, Tensor] = {}
        self._counter = 0

    # -- inputs, outputs, profiles -------------------------------------------------------------------
    def add_input(self, name: str, dtype: Any, shape: Sequence[int | str]) -> Tensor:
        """Add a network input. Dynamic dims are named (``"num_tokens"``) or ``-1`` (auto-named).

        A dim name shared by several inputs is the same symbol: one range in every profile.

        >>> net = Network()
        >>> ids = net.add_input("input_ids", "int32", ["num_tokens"])
        >>> ids.shape
        (num_tokens,)
        """
        if name in self.inputs:
            raise NetworkError(f"network {self.name!r} already has an input named {name!r}")
        dims: list[int | str] = []
        shape_syms: list[Dim] = []
        for axis, d in enumerate(shape):
            if isinstance(d, str):
                dim_name = d
            elif isinstance(d, int) and d == -1:
                dim_name = f"{name}.{axis}"
            elif isinstance(d, int) and d >= 0:
                dims.append(d)
                shape_syms.append(d)
                continue
            else:
                raise NetworkError(f"input {name!r}: dim {axis} is {d!r}; expected a non-negative "
                                   "int, -1 or a dim name")
            dims.append(dim_name)
            shape_syms.append(SymDim.symbol(dim_name))
            self.symbol_sources.setdefault(dim_name, ("input", name, axis))
        spec = InputSpec(name, dtype_of(dtype), tuple(dims))
        tensor = Tensor(self._unique(name), spec.dtype, tuple(shape_syms), self)
        self.inputs[name] = tensor
        self.input_specs[name] = spec
        return tensor

    def add_profile(self, ranges: dict[str, tuple[int, int, int]] | None = None,
                    **kw: tuple[int, int, int]) -> Profile:
        """Add an optimization profile: ``(min, opt, max)`` per dynamic dim name.

        Every dynamic dim of every input must get a range, with ``0 <= min <= opt <= max``."""
        ranges = {**(ranges or {}), **kw}
        needed = {d for spec in self.input_specs.values() for d in spec.dynamic_dims.values()}
        missing, unknown = needed - set(ranges), set(ranges) - needed
        problems = []
        if missing:
            problems.append(f"no range for dynamic dims {sorted(missing)}")
        if unknown:
            problems.append(f"ranges given for unknown dims {sorted(unknown)} (known: {sorted(needed)})")
        for dim, rng in ranges.items():
            if len(rng) != 3 or not all(isinstance(v, int) for v in rng) or not 0 <= rng[0] <= rng[1] <= rng[2]:
                problems.append(f"dim {dim!r}: range {rng} is not (min <= opt <= max) of ints >= 0")
        if problems:
            raise ProfileError(f"profile for network {self.name!r}: " + "; ".join(problems))
        profile = Profile({k: tuple(v) for k, v in ranges.items()})  # type: ignore[misc]
        self.profiles.append(profile)
        return profile

    def mark_output(self, tensor: Tensor, name: str | None = None) -> None:
        if tensor.network is not self:
            raise NetworkError(f"tensor {tensor.name!r} belongs to network {tensor.network.name!r}, "
                               f"not {self.name!r}")
        name = name or tensor.name
        if name in self.outputs and self.outputs[name] is not tensor:
            raise NetworkError(f"network {self.name!r} already has an output named {name!r}")
        self.outputs[name] = tensor

    # -- layers ---------------------------------------------------------------------------------------
    def add_layer(self, kind: LayerKind, op_name: str, inputs: Sequence[Tensor],
                  outputs: Sequence[tuple[DType, tuple]], attrs: dict[str, Any] | None = None,
                  scoped: bool = True) -> Layer:
        """Append a layer; ops call this after inferring the outputs' dtypes and shapes.

        ``scoped=False`` keeps ``op_name`` as the full layer name (weights keep their checkpoint names)."""
        for t in inputs:
            if t.network is not self:
                raise NetworkError(f"op {op_name!r}: input {t.name!r} belongs to network "
                                   f"{t.network.name!r}, not {self.name!r}; tensors of different "
                                   "networks cannot be mixed")
        path = self._module_stack[-1] if self._module_stack else ""
        name = self._unique(f"{path}.{op_name}" if path and scoped else op_name)
        layer = Layer(kind, name, list(inputs), [], dict(attrs or {}), path)
        for i, (dtype, shape) in enumerate(outputs):
            tname = name if len(outputs) == 1 else f"{name}:{i}"
            layer.outputs.append(Tensor(tname, dtype, tuple(shape), self, layer))
        self.layers.append(layer)
        for p in self._module_stack:
            self.module_layers.setdefault(p, []).append(name)
        return layer

    def new_symbol(self, hint: str, source: tuple) -> SymDim:
        """A fresh data-dependent symbol (e.g. the size of a dynamic slice)."""
        self._counter += 1
        name = f"_{hint}{self._counter}"
        self.symbol_sources[name] = source
        return SymDim.symbol(name)

    def _unique(self, name: str) -> str:
        if name not in self._names:
            self._names.add(name)
            return name
        i = 1
        while f"{name}_{i}" in self._names:
            i += 1
        self._names.add(f"{name}_{i}")
        return f"{name}_{i}"

    # -- module scopes --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def module_scope(self, path: str) -> Iterator[None]:
        """Layers created inside are named after (and recorded under) module ``path``."""
        self._module_stack.append(path)
        try:
            yield
        finally:
            self._module_stack.pop()

    @property
    def in_module(self) -> bool:
        return bool(self._module_stack)

    @contextlib.contextmanager
    def scope(self) -> Iterator["Network"]:
        """Make this network the one that tensor-less ops (``F.arange(5)``) add layers to."""
        stack = _ACTIVE.get()
        token = _ACTIVE.set(stack + [self])
        try:
            yield self
        finally:
            _ACTIVE.reset(token)

    # -- inspection -----------------------------------------------------------------------------------
    def tensors_matching(self, patterns: Sequence[str]) -> dict[str, Tensor]:
        """Outputs of the modules whose path matches a glob pattern; a pattern that matches no
        module path is matched against tensor names instead (so ``layers.*`` names the layers'
        outputs, not every weight inside them)."""
        found: dict[str, Tensor] = {}
        for pattern in patterns:
            hit = False
            for path, outs in self.module_outputs.items():
                if fnmatch.fnmatchcase(path, pattern):
                    for i, t in enumerate(outs):
                        found[path if len(outs) == 1 else f"{path}:{i}"] = t
                    hit = True
            if not hit:
                for layer in self.layers:
                    for t in layer.outputs:
                        if fnmatch.fnmatchcase(t.name, pattern):
                            found[t.name] = t
                            hit = True
            if not hit:
                raise NetworkError(f"debug output pattern {pattern!r} matches no module or tensor "
                                   f"of network {self.name!r}")
        return found

    def layer_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for layer in self.layers:
            counts[layer.kind.value] = counts.get(layer.kind.value, 0) + 1
        return counts

    def __repr__(self) -> str:
        return (f"Network({self.name!r}, inputs={list(self.inputs)}, outputs={list(self.outputs)}, "
                f"layers={len(self.layers)})")

    def summary(self) -> str:
        lines = [repr(self)]
        lines += [f"  {layer!r}" for layer in self.layers]
        return "\n".join(lines)


def runtime_value_dtype(value: "torch.Tensor") -> DType:
    return dtype_of(value.dtype)
