"""The TensorRT backend: lowers a trtdsl ``Network`` to a strongly typed TensorRT 11 network, builds
the plan (``rank0.engine``) and runs it with the torch executor's API.

TensorRT is imported lazily: this package imports (and is type-checked in CI against stubs generated
from the TensorRT 11.4 bindings) on machines without it; ``lower_to_tensorrt`` and ``TensorRTRunner``
raise :class:`~trtdsl.errors.BackendError` with the install command there. See docs/tensorrt.md for
what is verified where.

>>> from trtdsl.backends.tensorrt import lower_to_tensorrt, TensorRTRunner   # doctest: +SKIP
>>> lower_to_tensorrt(network, build_config.to_dict(), "engines/tiny")       # doctest: +SKIP
>>> TensorRTRunner("engines/tiny").run(feed)                                  # doctest: +SKIP
"""

from ._trt import INSTALL_HINT, require_tensorrt
from .build import ENGINE_NAME, TensorRTOptions, define_network, lower_to_tensorrt
from .emitters import EMITTERS
from .native_plugins import NATIVE_PLUGIN_LOWERINGS
from .plugins import (PLUGIN_LOWERINGS, PluginLowering, PluginPlan, PluginSignature, plan_plugin,
                      register_tensorrt_plugins)
from .runner import TensorRTRunner

__all__ = ["lower_to_tensorrt", "TensorRTRunner", "TensorRTOptions", "define_network", "EMITTERS",
           "PLUGIN_LOWERINGS", "PluginLowering", "PluginSignature", "PluginPlan", "plan_plugin",
           "NATIVE_PLUGIN_LOWERINGS", "register_tensorrt_plugins",
           "require_tensorrt", "INSTALL_HINT", "ENGINE_NAME"]
