"""Torch binding of the dense decode GEMV (``plugins_cuda/src/dense_gemv.cu``) and the rule that picks
it or cuBLAS per shape.

* :func:`dense_gemv`: ``y = x @ weight^T`` for ``x [..., k]`` with 1..8 rows, fp16 / bf16, fp32
  accumulation, one kernel launch. Checks raise :class:`~trtdsl.errors.PluginError` naming the tensor;
  nothing reads a device value or synchronizes, so calls can be captured in CUDA graphs.
* :func:`gemv_preferred`: whether the GEMV beats cuBLAS (``F.linear``) for ``(m, n, k, dtype)``, from
  the H100 measurements in ``benchmarks/results/dense_gemv_h100.json``. ``m`` is a host-side shape,
  so a CUDA layer can choose per call without synchronizing."""

from __future__ import annotations

import ctypes

import torch

from trtdsl.errors import PluginError

from ._lib import call, register_signatures
from .ops import _DTYPE_CODES, _HALF_TYPES, _check, _stream

__all__ = ["DENSE_GEMV_MAX_M", "NUM_CONFIGS", "dense_gemv", "dense_gemv_supported", "gemv_preferred"]

DENSE_GEMV_MAX_M = 8  # kDenseGemvMaxM in dense_gemv.cuh
NUM_CONFIGS = 5  # kDenseGemvNumConfigs: launch shapes 1..5 (0 = automatic), swept by the benchmark

_P, _I, _I64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64
# Argument types of trtdsl_dense_gemv as declared in plugins.h (change both together).
_SIGNATURES: dict[str, list] = {"trtdsl_dense_gemv": [_P, _P, _P, _I64, _I64, _I64, _I, _I, _P]}
register_signatures(_SIGNATURES)


def dense_gemv_supported(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether :func:`dense_gemv` takes these tensors as they are (else use ``F.linear``): CUDA fp16 /
    bf16 of one dtype, 1..8 rows, ``k % 8 == 0`` and 16-byte aligned data (16-byte loads)."""
    if x.device.type != "cuda" or x.dtype not in _HALF_TYPES or weight.dtype != x.dtype or weight.dim() != 2:
        return False
    k = weight.shape[1]
    rows = x.numel() // k if k and x.dim() and x.shape[-1] == k else 0
    return (1 <= rows <= DENSE_GEMV_MAX_M and k % 8 == 0 and x.data_ptr() % 16 == 0
            and weight.data_ptr() % 16 == 0 and weight.is_contiguous())


def dense_gemv(x: torch.Tensor, weight: torch.Tensor, out: torch.Tensor | None = None,
               config: int = 0) -> torch.Tensor:
    """``x @ weight^T`` (``torch.nn.functional.linear`` without bias) for ``x [..., k]`` with at most
    8 rows in all and ``weight [n, k]``, both fp16 or both bf16; returns ``[..., n]`` in x's dtype.

    ``k`` must be a multiple of 8 and x / weight 16-byte aligned (:func:`dense_gemv_supported`).
    ``out`` (contiguous, ``[..., n]``) receives the result if given. ``config`` forces a launch shape
    (1..5, see ``dense_gemv.cuh``); 0 lets the launcher choose."""
    op = "dense_gemv"
    _check(op, "x", x, dtypes=_HALF_TYPES, contiguous=False)
    _check(op, "weight", weight, x.device, (x.dtype,), ndim=2)
    n, k = weight.shape
    if x.dim() == 0 or x.shape[-1] != k:
        raise PluginError(f"{op}: x must be [..., {k}] to match weight {tuple(weight.shape)}, got shape "
                          f"{tuple(x.shape)}")
    x2 = x.reshape(-1, k).contiguous()
    m = x2.shape[0]
    if not 1 <= m <= DENSE_GEMV_MAX_M:
        raise PluginError(f"{op}: x has {m} rows; the GEMV takes 1..{DENSE_GEMV_MAX_M} (use F.linear)")
    if k % 8 or n < 1:
        raise PluginError(f"{op}: weight {tuple(weight.shape)} needs in_features % 8 == 0 and out_features "
                          f">= 1 (16-byte loads); use F.linear")
    if x2.data_ptr() % 16 or weight.data_ptr() % 16:
        raise PluginError(f"{op}: x and weight must start on 16-byte boundaries (a sliced view is not); "
                          f"call .clone() or use F.linear")
    if not 0 <= config <= NUM_CONFIGS:
        raise PluginError(f"{op}: config {config} is not in 0..{NUM_CONFIGS}")
    shape = (*x.shape[:-1], n)
    if out is None:
        out = x.new_empty(shape)
    else:
        _check(op, "out", out, x.device, (x.dtype,))
        if tuple(out.shape) != shape:
            raise PluginError(f"{op}: out has shape {tuple(out.shape)}, expected {shape}")
    call("trtdsl_dense_gemv", x2.data_ptr(), weight.data_ptr(), out.data_ptr(), m, n, k, config,
          _DTYPE_CODES[x.dtype], _stream(x))
    return out


# Largest m for which the GEMV beats cuBLAS (bf16 F.linear), per shape class of (k, n), to be taken
# from benchmarks/results/dense_gemv_h100.json ("summary" -> "gemv_faster_at_m" per shape), written by
# benchmarks/bench_dense_gemv.py on an H100. NOT MEASURED YET: the one device run of this work failed
# before timing (docs/kernels.md), so the rule prefers cuBLAS everywhere until those numbers exist.
# Measured on an H100 (benchmarks/results/dense_gemv_h100.json, auto config, bf16): the GEMV beats
# cuBLAS at M <= 3 on the small projections (1.21x / 1.12x at M=1, 1.12x / 1.03x at M=3; M=4 loses
# on 4096x6144) and at M = 1 on every large one (1.07x-1.11x; 14336x4096 loses at M=2).
_MAX_M_SMALL = 3  # weights < 64 MiB (4096x4096 o_proj, 4096x6144 qkv)
_MAX_M_LARGE = 1  # weights >= 64 MiB (gate_up, down, lm_head)
_SMALL_WEIGHT_BYTES = 64 << 20


def gemv_preferred(m: int, n: int, k: int, dtype: torch.dtype) -> bool:
    """Whether :func:`dense_gemv` is expected to be faster than cuBLAS for ``x [m, k] @ W[n, k]^T``.

    False whenever the kernel cannot take the shape (``m`` outside 1..8, ``k % 8 != 0``, dtype not
    fp16 / bf16). The rule is the measured crossover of the benchmark, by weight size."""
    if dtype not in _HALF_TYPES or not 1 <= m <= DENSE_GEMV_MAX_M or k % 8 or k < 8 or n < 1:
        return False
    small = n * k * 2 < _SMALL_WEIGHT_BYTES
    return m <= (_MAX_M_SMALL if small else _MAX_M_LARGE)
