"""Lazy access to the ``tensorrt`` module, and the dtype / enum maps every part of the backend uses.

TensorRT is an optional dependency that needs a GPU machine, so nothing here imports it at module
import time. Modules of this backend write::

    if TYPE_CHECKING:
        import tensorrt as trt          # mypy sees the real API (the stubs in CI)
    else:
        from ._trt import trt           # at run time: a proxy that imports tensorrt on first use

so the code is type-checked against TensorRT's real signatures, and importing trtdsl never needs it.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING, Any

from ...dtypes import DType
from ...errors import BackendError

if TYPE_CHECKING:
    import tensorrt

__all__ = ["trt", "require_tensorrt", "INSTALL_HINT", "trt_dtype", "dtype_of_trt"]

INSTALL_HINT = ("TensorRT is not installed. On a Linux machine with an NVIDIA GPU and CUDA 12, run\n"
                "    pip install --extra-index-url https://pypi.nvidia.com tensorrt-cu12\n"
                "(TensorRT 11.x; check with `python -c \"import tensorrt; print(tensorrt.__version__)\"`), "
                "or build with the default backend: `--backend torch`.")


def require_tensorrt() -> ModuleType:
    """The ``tensorrt`` module, or a :class:`BackendError` that says how to install it."""
    try:
        module = importlib.import_module("tensorrt")
    except ImportError as exc:
        raise BackendError(f"{INSTALL_HINT}\n  (import failed: {exc})") from None
    except OSError as exc:  # the bindings are there but libnvinfer is not
        raise BackendError(f"TensorRT's Python bindings are installed but its libraries failed to "
                           f"load: {exc}\n{INSTALL_HINT}") from None
    version = str(getattr(module, "__version__", "0"))
    if int(version.split(".")[0]) < 11:
        raise BackendError(f"trtdsl's TensorRT backend targets TensorRT 11 (strongly typed networks "
                           f"only); found tensorrt {version}. {INSTALL_HINT}")
    return module


class _LazyTensorRT:
    """Forwards attribute access to the ``tensorrt`` module, importing it on first use."""

    def __getattr__(self, name: str) -> Any:
        return getattr(require_tensorrt(), name)


trt: Any = _LazyTensorRT()

# trtdsl dtype -> TensorRT DataType name. int4 IR tensors are *packed* storage (two codes per byte,
# shape counted in bytes, see trtdsl.quantization), which only plugins consume: they travel as INT8
# bytes so shapes and sizes stay those of the IR.
_DTYPE_NAMES = {DType.float32: "FLOAT", DType.float16: "HALF", DType.bfloat16: "BF16",
                DType.fp8: "FP8", DType.int8: "INT8", DType.int4: "INT8", DType.int32: "INT32",
                DType.int64: "INT64", DType.bool: "BOOL"}


def trt_dtype(dtype: DType) -> "tensorrt.DataType":
    """The TensorRT ``DataType`` of a trtdsl dtype."""
    result: tensorrt.DataType = getattr(require_tensorrt().DataType, _DTYPE_NAMES[dtype])
    return result


def dtype_of_trt(dtype: "tensorrt.DataType") -> DType:
    """The trtdsl dtype of a TensorRT ``DataType`` (the inverse of :func:`trt_dtype`, int8 for int4)."""
    for ours, name in _DTYPE_NAMES.items():
        if ours is not DType.int4 and dtype.name == name:
            return ours
    raise BackendError(f"TensorRT tensor type {dtype.name} has no trtdsl dtype")
