"""``Module``, ``Parameter``, ``ModuleList`` and ``ModuleDict``: PyTorch's module system, for networks.

A module's ``forward`` takes and returns network tensors; calling a module names every layer it
creates after the module's path (``model.layers.3.attention.qkv.matmul``) and records them, so
inspection and debug outputs map layers back to modules. Parameters hold torch tensors (on the CPU)
and become constants of the network the first time an op uses them.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Iterator, Mapping, Sequence

import torch

from .dtypes import DType, dtype_of
from .errors import CheckpointError
from .ir.network import Network, Tensor
from .ir.symbolic import shape_repr

__all__ = ["Parameter", "Module", "ModuleList", "ModuleDict"]


class Parameter:
    """A named weight with a declared shape and dtype; its value is a CPU torch tensor (or None
    until a state dict is loaded)."""

    _trtdsl_parameter = True

    def __init__(self, shape: Sequence[int], dtype: Any = "float32", value: torch.Tensor | None = None):
        self.shape = tuple(int(d) for d in shape)
        self.dtype: DType = dtype_of(dtype)
        self.qualname = "<unregistered parameter>"
        self.value: torch.Tensor | None = None
        if value is not None:
            self.set_value(value)

    def set_value(self, value: torch.Tensor) -> None:
        if tuple(value.shape) != self.shape:
            raise CheckpointError(f"parameter {self.qualname!r}: value shape {tuple(value.shape)} != "
                                  f"declared {shape_repr(self.shape)}")
        if self.dtype is not DType.int4 and value.dtype != self.dtype.torch:
            raise CheckpointError(f"parameter {self.qualname!r}: value dtype {value.dtype} != declared "
                                  f"{self.dtype.value}")
        self.value = value.detach().cpu().contiguous()

    def __repr__(self) -> str:
        state = "set" if self.value is not None else "empty"
        return f"Parameter({self.qualname!r}, {self.dtype.value}{shape_repr(self.shape)}, {state})"


class Module:
    """Base class of network building blocks. Subclasses assign sub-modules and parameters as
    attributes in ``__init__`` (where build-time choices are made) and write ``forward``."""

    # Set with object.__setattr__ in __init__ (our __setattr__ routes everything else).
    _parameters: "OrderedDict[str, Parameter]"
    _modules: "OrderedDict[str, Module]"
    _path: str

    def __init__(self) -> None:
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_path", "")

    def __setattr__(self, name: str, value: Any) -> None:
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__}.__init__ must call super().__init__() "
                                 f"before assigning {name!r}")
        self._parameters.pop(name, None)
        self._modules.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement forward()")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        net = _find_network(args, kwargs)
        if net is None:
            return self.forward(*args, **kwargs)
        if not net.in_module:
            self.assign_names()  # the outermost call names every parameter and sub-module
        with net.module_scope(self._path):
            out = self.forward(*args, **kwargs)
        outs = [t for t in (out if isinstance(out, (tuple, list)) else [out]) if isinstance(t, Tensor)]
        if self._path and outs:
            net.module_outputs[self._path] = outs
        return out

    # -- traversal ------------------------------------------------------------------------------------
    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, "Module"]]:
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        seen: set[int] = set()
        for mod_prefix, module in self.named_modules(prefix):
            for name, param in module._parameters.items():
                if id(param) not in seen:  # tied weights are listed once, under their first name
                    seen.add(id(param))
                    yield (f"{mod_prefix}.{name}" if mod_prefix else name), param

    def parameters(self) -> Iterator[Parameter]:
        for _, p in self.named_parameters():
            yield p

    def modules(self) -> Iterator["Module"]:
        for _, m in self.named_modules():
            yield m

    def children(self) -> Iterator["Module"]:
        return iter(self._modules.values())

    def assign_names(self, prefix: str = "") -> None:
        """Give every sub-module its path and every parameter its full name, from this root."""
        for path, module in self.named_modules(prefix):
            object.__setattr__(module, "_path", path)
        for name, param in self.named_parameters(prefix):
            param.qualname = name

    def num_parameters(self) -> int:
        total = 0
        for p in self.parameters():
            n = 1
            for d in p.shape:
                n *= d
            total += n
        return total

    # -- state dicts ----------------------------------------------------------------------------------
    def state_dict(self) -> "OrderedDict[str, torch.Tensor]":
        """Name -> value of every parameter (tied parameters appear under each of their names)."""
        out: OrderedDict[str, torch.Tensor] = OrderedDict()
        for mod_prefix, module in self.named_modules():
            for name, param in module._parameters.items():
                if param.value is not None:
                    out[f"{mod_prefix}.{name}" if mod_prefix else name] = param.value
        return out

    def load_state_dict(self, state: Mapping[str, torch.Tensor], strict: bool = True) -> None:
        """Load values by name. Every missing, unexpected, mis-shaped or mis-typed tensor is listed
        in one :class:`CheckpointError`; nothing is loaded unless all of them fit."""
        self.assign_names()
        expected: dict[str, Parameter] = {}
        for mod_prefix, module in self.named_modules():
            for name, param in module._parameters.items():
                expected[f"{mod_prefix}.{name}" if mod_prefix else name] = param
        problems: list[str] = []
        if strict:
            problems += [f"missing: {n} {p.dtype.value}{shape_repr(p.shape)}"
                         for n, p in expected.items() if n not in state and not _tied_loaded(p, expected, state)]
            problems += [f"unexpected: {n} {tuple(v.shape)}" for n, v in state.items() if n not in expected]
        for name, value in state.items():
            found = expected.get(name)
            if found is None:
                continue
            param = found
            if tuple(value.shape) != param.shape:
                problems.append(f"shape mismatch: {name} is {tuple(value.shape)} in the checkpoint, "
                                f"the model expects {shape_repr(param.shape)}")
            elif param.dtype is not DType.int4 and value.dtype != param.dtype.torch:
                problems.append(f"dtype mismatch: {name} is {value.dtype} in the checkpoint, the model "
                                f"expects {param.dtype.value}")
        if problems:
            raise CheckpointError(f"state dict does not match {type(self).__name__} "
                                  f"({len(problems)} problems):\n  " + "\n  ".join(problems))
        for name, value in state.items():
            if name in expected:
                expected[name].set_value(value)

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__}("]
        for name, p in self._parameters.items():
            lines.append(f"  ({name}): {p.dtype.value}{shape_repr(p.shape)}")
        for name, m in self._modules.items():
            lines.append("  (" + name + "): " + repr(m).replace("\n", "\n  "))
        return "\n".join(lines) + ")" if len(lines) > 1 else f"{type(self).__name__}()"


def _tied_loaded(param: Parameter, expected: dict[str, Parameter], state: Mapping[str, Any]) -> bool:
    """A tied parameter counts as present if any of its names is in the state dict."""
    return any(p is param and n in state for n, p in expected.items())


def _find_network(args: Sequence[Any], kwargs: Mapping[str, Any]) -> Network | None:
    for v in list(args) + list(kwargs.values()):
        if isinstance(v, Tensor):
            return v.network
        if isinstance(v, (list, tuple)):
            for item in v:
                if isinstance(item, Tensor):
                    return item.network
        if isinstance(v, Mapping):
            for item in v.values():
                if isinstance(item, Tensor):
                    return item.network
    return None


class ModuleList(Module):
    """A list of modules registered as ``0``, ``1``, ... (``model.layers.3``)."""

    def __init__(self, modules: Sequence[Module] = ()):
        super().__init__()
        for m in modules:
            self.append(m)

    def append(self, module: Module) -> "ModuleList":
        setattr(self, str(len(self._modules)), module)
        return self

    def __getitem__(self, index: int) -> Module:
        return list(self._modules.values())[index]

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(list(self._modules.values()))


class ModuleDict(Module):
    """A dict of modules registered under their keys."""

    def __init__(self, modules: Mapping[str, Module] | None = None):
        super().__init__()
        for k, m in (modules or {}).items():
            self[k] = m

    def __setitem__(self, key: str, module: Module) -> None:
        setattr(self, key, module)

    def __getitem__(self, key: str) -> Module:
        return self._modules[key]

    def __contains__(self, key: str) -> bool:
        return key in self._modules

    def __len__(self) -> int:
        return len(self._modules)

    def keys(self) -> Any:
        return self._modules.keys()

    def items(self) -> Any:
        return self._modules.items()

    def values(self) -> Any:
        return self._modules.values()

    def __iter__(self) -> Iterator[str]:
        return iter(self._modules)
