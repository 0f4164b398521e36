"""Plugins: named layers with a torch reference (and, where built, CUDA / TensorRT implementations).

Importing this package registers the built-in ``trtdsl.attention`` plugin; the plugins that other
packages define (fusion passes, quantized GEMMs) register when those packages are imported, and
``get_plugin`` imports them on demand, so a loaded engine finds every plugin it names."""

from . import attention  # noqa: F401  (registers trtdsl.attention)
from .registry import PluginSpec, get_plugin, register_plugin, registered_plugins, unregister_plugin

__all__ = ["PluginSpec", "get_plugin", "register_plugin", "registered_plugins", "unregister_plugin"]
