"""The state of one lowering: the TensorRT network being written, the IR-tensor -> ``ITensor`` map,
the host buffers TensorRT reads weights from, and symbolic dims materialized as shape tensors.

Symbolic dims (``num_tokens``, ``2*batch + 1``, a data-dependent slice size) become int64 ``[1]``
shape tensors: each symbol is sliced out of ``add_shape`` of the tensor it comes from (see
``Network.symbol_sources``), and polynomials are built from it with elementwise SUM / PROD /
FLOOR_DIV layers. Results are cached per dim, so every expression is built once per network.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence, TypeVar

import torch

from ...dtypes import DType
from ...errors import BackendError
from ...ir.network import Layer, Network, Tensor
from ...ir.symbolic import Dim, SymDim
from ._trt import trt_dtype

if TYPE_CHECKING:
    import tensorrt as trt
else:
    from ._trt import trt

__all__ = ["LoweringContext", "is_static_dims", "static_dims", "dims_tuple"]

_L = TypeVar("_L", bound="trt.ILayer")


def is_static_dims(dims: Sequence[Dim]) -> bool:
    return all(isinstance(d, int) for d in dims)


def static_dims(dims: Sequence[Dim]) -> list[int]:
    """The dims as ints; BackendError if one is symbolic (callers check ``is_static_dims`` first)."""
    out = [d for d in dims if isinstance(d, int)]
    if len(out) != len(dims):
        raise BackendError(f"TensorRT lowering: expected static dims, got {tuple(dims)}")
    return out


def dims_tuple(dims: trt.Dims) -> tuple[int, ...]:
    """A TensorRT ``Dims`` as a tuple (``-1`` for dynamic dims)."""
    return tuple(int(dims[i]) for i in range(len(dims)))


@dataclass
class LoweringContext:
    """What emitters share while one IR network is written into ``network``."""

    network: trt.INetworkDefinition
    ir: Network
    values: dict[int, trt.ITensor] = field(default_factory=dict)  # id(IR Tensor) -> ITensor
    # TensorRT reads constant weights from host memory until the build finishes: keep them alive.
    keepalive: list[torch.Tensor] = field(default_factory=list)
    _dims: dict[str, trt.ITensor] = field(default_factory=dict)
    _shapes: dict[int, trt.ITensor] = field(default_factory=dict)
    _counter: int = 0

    # -- tensors and layers ---------------------------------------------------------------------------
    def value(self, t: Tensor) -> trt.ITensor:
        try:
            return self.values[id(t)]
        except KeyError:
            raise BackendError(f"TensorRT lowering: tensor {t.name!r} is used before the layer that "
                               "produces it was lowered (the network's layer order is broken)") from None

    def finish(self, trt_layer: _L, layer: Layer, suffix: str = "") -> _L:
        """Name a TensorRT layer after the IR layer (and its module path) so engine inspection and
        error messages point at the model code."""
        trt_layer.name = layer.name + (f"/{suffix}" if suffix else "")
        trt_layer.metadata = layer.module_path or "<root>"
        return trt_layer

    def helper_name(self, hint: str) -> str:
        self._counter += 1
        return f"trtdsl.{hint}.{self._counter}"

    def constant(self, value: torch.Tensor, dtype: DType, shape: Sequence[int], name: str) -> trt.ITensor:
        """A constant layer holding ``value`` (any device; copied to contiguous host memory)."""
        host = value.detach().to("cpu").contiguous()
        if dtype is DType.int4:  # packed int4 storage travels as its bytes (see _trt.trt_dtype)
            host = host.view(torch.int8)
        if host.dtype != dtype.torch and dtype is not DType.int4:
            host = host.to(dtype.torch)
        self.keepalive.append(host)
        weights = trt.Weights(trt_dtype(dtype), host.data_ptr(), host.numel())
        layer = self.network.add_constant(trt.Dims(list(shape)), weights)
        layer.name = name
        return layer.get_output(0)

    def int64_constant(self, values: Sequence[int], scalar: bool = False) -> trt.ITensor:
        data = torch.tensor(list(values), dtype=torch.int64)
        shape: list[int] = [] if scalar else [len(values)]
        return self.constant(data.reshape(shape), DType.int64, shape, self.helper_name("const"))

    def elementwise(self, a: trt.ITensor, b: trt.ITensor, op: trt.ElementWiseOperation) -> trt.ITensor:
        layer = self.network.add_elementwise(a, b, op)
        layer.name = self.helper_name("shape_math")
        return layer.get_output(0)

    # -- symbolic dims as shape tensors ---------------------------------------------------------------
    def shape_of(self, t: trt.ITensor) -> trt.ITensor:
        """``add_shape`` of a tensor (int64 ``[rank]``), cached."""
        if id(t) not in self._shapes:
            layer = self.network.add_shape(t)
            layer.name = self.helper_name("shape")
            self._shapes[id(t)] = layer.get_output(0)
        return self._shapes[id(t)]

    def _axis_of(self, t: trt.ITensor, axis: int) -> trt.ITensor:
        layer = self.network.add_slice(self.shape_of(t), trt.Dims([axis]), trt.Dims([1]), trt.Dims([1]))
        layer.name = self.helper_name("dim")
        return layer.get_output(0)

    def symbol(self, name: str) -> trt.ITensor:
        """The run-time value of a symbol, as an int64 ``[1]`` tensor."""
        if name in self._dims:
            return self._dims[name]
        source = self.ir.symbol_sources.get(name)
        if source is None:
            raise BackendError(f"TensorRT lowering: symbolic dim {name!r} has no recorded source in "
                               f"network {self.ir.name!r}")
        if source[0] == "input":
            out = self._axis_of(self.value(self.ir.inputs[source[1]]), int(source[2]))
        elif source[0] == "layer_output":
            layer = next((lay for lay in self.ir.layers if lay.name == source[1]), None)
            if layer is None:
                raise BackendError(f"TensorRT lowering: dim {name!r} comes from unknown layer {source[1]!r}")
            out = self._axis_of(self.value(layer.outputs[int(source[2])]), int(source[3]))
        elif source[0] == "value":
            tensor = next((t for lay in self.ir.layers for t in lay.outputs if t.name == source[1]), None)
            if tensor is None:
                raise BackendError(f"TensorRT lowering: dim {name!r} comes from unknown tensor {source[1]!r}")
            shuffle = self.network.add_shuffle(self.value(tensor))
            shuffle.reshape_dims = trt.Dims([1])
            cast = self.network.add_cast(shuffle.get_output(0), trt.DataType.INT64)
            shuffle.name, cast.name = self.helper_name("dim_value"), self.helper_name("dim_value")
            out = cast.get_output(0)
        else:
            raise BackendError(f"TensorRT lowering: dim {name!r} has an unknown source {source!r}")
        self._dims[name] = out
        return out

    def dim(self, d: Dim) -> trt.ITensor:
        """One dim (int or polynomial) as an int64 ``[1]`` tensor."""
        key = repr(d)
        if key in self._dims:
            return self._dims[key]
        if isinstance(d, int):
            out = self.int64_constant([d])
        else:
            out = self._polynomial(d)
        self._dims[key] = out
        return out

    def _polynomial(self, d: SymDim) -> trt.ITensor:
        op = trt.ElementWiseOperation
        total: trt.ITensor | None = None
        for mono, coeff in d.terms:
            term: trt.ITensor | None = None if coeff == 1 else self.int64_constant([coeff])
            for atom in mono:
                if isinstance(atom, str):
                    factor = self.symbol(atom)
                else:  # ("floordiv", dim, divisor): a floor division that is not exact
                    factor = self.elementwise(self.dim(atom[1]), self.int64_constant([atom[2]]),
                                              op.FLOOR_DIV)
                term = factor if term is None else self.elementwise(term, factor, op.PROD)
            term = term if term is not None else self.int64_constant([coeff])
            total = term if total is None else self.elementwise(total, term, op.SUM)
        assert total is not None  # a SymDim has at least one term
        return total

    def shape_tensor(self, dims: Sequence[Dim]) -> trt.ITensor:
        """A whole shape as an int64 ``[rank]`` shape tensor (static dims as constants)."""
        if is_static_dims(dims):
            return self.int64_constant(static_dims(dims))
        parts = [self.dim(d) for d in dims]
        if len(parts) == 1:
            return parts[0]
        layer = self.network.add_concatenation(parts)
        layer.axis = 0
        layer.name = self.helper_name("shape")
        return layer.get_output(0)
