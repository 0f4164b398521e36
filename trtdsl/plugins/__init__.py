"""Plugins: named layers with a torch reference (and, where built, CUDA / TensorRT implementations)."""

from .registry import PluginSpec, get_plugin, register_plugin, registered_plugins

__all__ = ["PluginSpec", "get_plugin", "register_plugin", "registered_plugins"]
