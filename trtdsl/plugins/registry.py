"""The plugin registry: a plugin is a named layer with attributes, an output-shape rule and a torch
reference implementation, so every network runs everywhere (the CPU executor runs the reference).
Fast implementations (CUDA kernels, TensorRT plugins) register against the same name later."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import PluginError

__all__ = ["PluginSpec", "register_plugin", "unregister_plugin", "get_plugin", "registered_plugins"]

ShapeRule = Callable[[list, dict], list]  # (input Tensors, fields) -> [(DType, shape), ...]
Reference = Callable[..., Any]  # (list[torch.Tensor], fields, hints) -> torch.Tensor | list


@dataclass
class PluginSpec:
    """A plugin kind. ``mutates`` lists the inputs it writes in place (e.g. the K/V cache)."""

    name: str
    shape_rule: ShapeRule
    reference: Reference
    version: str = "1"
    mutates: tuple[int, ...] = ()
    doc: str = ""
    # Device implementations by device type ("cuda"), registered by kernel packages.
    implementations: dict[str, Reference] = field(default_factory=dict)


_REGISTRY: dict[str, PluginSpec] = {}


def register_plugin(spec: PluginSpec) -> PluginSpec:
    """Register (or re-register, e.g. on module reload) a plugin kind by name."""
    _REGISTRY[spec.name] = spec
    return spec


def unregister_plugin(name: str) -> None:
    """Remove a plugin kind (tests that register temporary plugins clean up with this)."""
    _REGISTRY.pop(name, None)


def get_plugin(name: str) -> PluginSpec:
    if name not in _REGISTRY:
        _load_builtin_plugins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise PluginError(f"unknown plugin {name!r}; registered plugins: {sorted(_REGISTRY)}") from None


def registered_plugins() -> dict[str, PluginSpec]:
    _load_builtin_plugins()
    return dict(_REGISTRY)


# Modules whose import registers plugins. The registry has no discovery step, so a new module that
# registers plugins is added here (the TensorRT coverage test then asks for its lowering). The passes'
# modules too: an engine file holds the plugins its build's passes made, and a fresh process must know
# them to run it.
PLUGIN_MODULES = ("trtdsl.plugins.attention", "trtdsl.passes.fused_plugins", "trtdsl.quantization.plugins",
                  "trtdsl.quantization.kv_cache", "trtdsl.passes.fp8_act_fuse", "trtdsl.passes.int4_tile_gemm",
                  "trtdsl.passes.deferred_norm")


def _load_builtin_plugins() -> None:
    import importlib
    for module in PLUGIN_MODULES:
        importlib.import_module(module)
