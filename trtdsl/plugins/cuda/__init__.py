"""CUDA kernels of trtdsl (sources in ``plugins_cuda/``), built lazily into a cached shared library.

Importing this package needs neither a GPU nor nvcc; the first kernel call (or ``build_plugins()``,
which ``trtdsl build-plugins`` calls) compiles the library."""

from ._build import adopt_objects, build_plugins, library_path, object_paths
from .ops import (context_attention, decode_attention, decode_workspace, paged_attention, rmsnorm,
                  rope_kv_write, swiglu)

__all__ = ["build_plugins", "library_path", "object_paths", "adopt_objects", "rmsnorm", "swiglu", "rope_kv_write",
           "context_attention", "decode_attention", "decode_workspace", "paged_attention"]
