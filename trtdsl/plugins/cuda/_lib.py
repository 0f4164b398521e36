"""ctypes binding of the C ABI in ``plugins_cuda/include/trtdsl/plugins.h`` (loaded lazily)."""

from __future__ import annotations

import ctypes
import threading

from trtdsl.errors import PluginError

from ._build import build_plugins

_P, _I, _I64, _F, _SZ = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_float, ctypes.c_size_t

# Argument types per launcher, in ABI order (kept next to plugins.h: change both together).
_SIGNATURES: dict[str, list] = {
    "trtdsl_rmsnorm": [_P, _P, _P, _P, _P, _I64, _I64, _I64, _I64, _I64, _I64, _F, _I, _P],
    "trtdsl_swiglu": [_P, _P, _I64, _I64, _I64, _I64, _I, _P],
    "trtdsl_rope_kv_write": [_P, _I64, _P, _I64, _P, _I64, _P, _I64, _P, _P, _P, _I, _P, _I64, _P, _I, _I,
                             _I, _I, _I, _I, _I, _I, _I, _I, _P],
    "trtdsl_context_attention": [_P, _I64, _P, _I64, _P, _P, _P, _I, _P, _I64, _P, _I64, _I, _I, _I, _I, _I,
                                 _F, _I, _I, _I, _P],
    "trtdsl_decode_attention_workspace": [_I, _I, _I, _I, _I, ctypes.POINTER(_I), ctypes.POINTER(_SZ)],
    "trtdsl_decode_attention": [_P, _I64, _P, _I64, _P, _P, _P, _I, _P, _I64, _P, _I64, _I, _I, _I, _I, _I,
                                _F, _I, _I, _P, _SZ, _I, _I, _P],
    "trtdsl_rope_kv_write_quant": [_P, _I64, _P, _I64, _P, _I64, _P, _P, _P, _I, _P, _I64, _P, _I, _I, _I, _I,
                                   _I, _I, _I, _I, _I, _I, _P, _I, _I, _P, _P],
    "trtdsl_context_attention_quant": [_P, _I64, _P, _I64, _P, _P, _P, _I, _P, _I64, _P, _I64, _I, _I, _I, _I,
                                       _I, _F, _I, _I, _I, _P, _I, _P],
    "trtdsl_decode_attention_quant": [_P, _I64, _P, _I64, _P, _P, _P, _I, _P, _I64, _P, _I64, _I, _I, _I, _I,
                                      _I, _F, _I, _I, _P, _SZ, _I, _I, _P, _I, _P],
}

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None


def register_signatures(signatures: dict[str, list]) -> None:
    """Add launchers' argument types (modules with kernels of their own call this at import), so
    every launcher is called with declared types: ctypes would otherwise truncate 64-bit pointers."""
    with _lock:
        _SIGNATURES.update(signatures)
        if _lib is not None:
            _bind(_lib, signatures)


def _bind(handle: ctypes.CDLL, signatures: dict[str, list]) -> None:
    for name, argtypes in signatures.items():
        fn = getattr(handle, name)
        fn.argtypes, fn.restype = argtypes, _I


def lib() -> ctypes.CDLL:
    """The loaded kernel library, built on first use."""
    global _lib
    with _lock:
        if _lib is None:
            path = build_plugins()
            try:
                handle = ctypes.CDLL(str(path))
            except OSError as exc:
                raise PluginError(f"could not load the CUDA plugin library {path}: {exc}") from exc
            handle.trtdsl_error_string.restype = ctypes.c_char_p
            handle.trtdsl_error_string.argtypes = [_I]
            _bind(handle, _SIGNATURES)
            _lib = handle
        return _lib


def call(name: str, *args) -> None:
    """Call launcher ``name``; turn a non-zero status into a PluginError naming the kernel."""
    handle = lib()
    status = getattr(handle, name)(*args)
    if status != 0:
        msg = handle.trtdsl_error_string(status).decode()
        raise PluginError(f"{name} failed with status {status}: {msg}")
