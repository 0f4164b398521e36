"""Torch bindings of the quantized GEMM kernels (``plugins_cuda/src/quant_gemm.cu``, ``wo_gemv_b*.cu``,
``fp8_gemv.cu``, ``int8_gemv.cu``) and the cuBLASLt paths around them. Formats are those of
:mod:`trtdsl.quantization.numerics`; semantics are the torch references in
:mod:`trtdsl.quantization.plugins`.

* ``weight_only_gemm``: ``m <= gemv_max_m(bits)`` rows (decode; int4 up to 16 on the tensor-core
  kernel) run a GEMV kernel that streams the packed weights once and dequantizes in registers
  (symmetric, or asymmetric with additive ``zeros``); larger ``m`` dequantizes into an fp16/bf16 buffer and calls cuBLAS (``F.linear``). ``m`` is a host-side
  shape, so the choice needs no synchronization.
* ``fp8_gemm``: e4m3 activations from a quantize kernel (static per-tensor ``input_scale``, or dynamic
  per-token when it is ``None``), then for ``m <= FP8_GEMV_MAX_M`` the FP8 GEMV (exact fp8 x fp8
  products, fp32 accumulation: the reference's numerics), else ``torch._scaled_mm`` (cuBLASLt).
* ``int8_gemm``: a per-token quantize kernel, then up to ``INT8_GEMV_MAX_M`` rows the SmoothQuant
  GEMV (``int8_gemv.cu``: int32 sums with ``__dp4a`` and the epilogue in one kernel), else
  ``torch._int_mm`` (int32 out; cuBLASLt wants > 16 rows, so short inputs are zero-padded by the
  quantizer itself) and a scale epilogue: the same exact sums and scale order, so the same outputs.

GEMV launch shapes (rows per block, warps splitting k, loads in flight; ``kQuantGemvConfigs`` in
``quant_gemm.cuh``) come from the tables ``WO_GEMV_CONFIG`` / ``FP8_GEMV_CONFIG`` / ``INT8_GEMV_CONFIG``
below, which ``benchmarks/bench_quant_gemm.py`` measures ("best_config" in its JSON).

Like :mod:`.ops`, nothing here reads device values or synchronizes (CUDA-graph capturable)."""

from __future__ import annotations

import ctypes
from typing import Any

import torch
import torch.nn.functional as F

from trtdsl.errors import PluginError
from trtdsl.quantization.int4_tiles import num_tiles, packed_shapes

from ._lib import call, lib, register_signatures
from .ops import _DTYPE_CODES, _HALF_TYPES, _check, _stream

__all__ = ["GEMV_MAX_M", "GEMV_KERNEL_MAX_M", "FP8_GEMV_MAX_M", "NUM_GEMV_CONFIGS", "WO_GEMV_CONFIG",
           "TC1_CONFIG", "SMALL_N", "tc1_n_class", "LONG_K", "FP8_GEMV_CONFIG", "FP8_TC_CONFIGS", "WO_TC_CONFIGS",
           "WO_TC1_CONFIGS", "INT4_GEMV_MAX_M", "FP8_FUSE_STATIC_QUANT", "gemv_config", "gemv_max_m",
           "gemv_supported",
           "weight_only_gemm", "weight_only_gemv", "dequantize_weight", "quantize_fp8", "quantize_per_token_fp8",
           "fp8_gemv", "fp8_gemv_static", "fp8_gemm",
           "quantize_per_token_int8", "fp8_gemv_supported", "int8_gemv", "int8_gemv_supported", "int8_gemm",
           "INT8_GEMV_MAX_M", "INT8_GEMV_CONFIG", "WO_PACKED_CONFIGS", "PACKED_CONFIG",
           "PACKED_GEMV_MAX_M", "packed_config", "weight_only_gemv_packed", "dequantize_packed", "int4_tile_gemm",
           "int4_tile_gemv_add_norm", "int4_tile_gemv_normed",
           "set_programmatic_launch", "programmatic_launch_enabled"]

# The GEMVs take up to 16 rows (kGemvMaxM / kFp8GemvMaxM) but run on CUDA cores, compute bound from
# m ~ 8 on H100 (docs/quant_kernels.md): at m = 8 the int4 GEMV still beat dequantize + cuBLAS
# (0.55x vs 0.42x of bf16 on the 8B shapes), at m = 16 it lost, so m = 9..16 dequantizes.
GEMV_KERNEL_MAX_M = 16
GEMV_MAX_M = 8
# int4 has the tensor-core decode kernel (configs WO_TC_CONFIGS), not compute bound at m <= 16: at
# m = 16 it took 11-161 us where dequantize + cuBLAS took 28-890 us (H100, 8B shapes).
INT4_GEMV_MAX_M = 16
# The static-scale FP8 GEMV with the quantizer fused in (fp8_gemv_static) is bitwise the two-kernel
# path but measured no faster at m = 1 (H100: 10.0 vs 10.0 us at 4096x4096, 28.0 vs 24.1 us at
# 14336x4096): every block re-quantizes the x it reads with IEEE divisions, which costs what the
# saved launch gains. Off until that is cheaper (docs/quant_kernels.md).
FP8_FUSE_STATIC_QUANT = False
# FP8 GEMV vs _scaled_mm (~0.6-0.85 of copy at any m <= 16): the CUDA-core GEMV does m fp32 FMAs per
# weight byte and lost to _scaled_mm at m = 8 on 3 of 4 8B shapes; the tensor-core GEMV (FP8_TC_CONFIGS)
# takes m = 5..8 in 11.1-44.4 us against _scaled_mm's 17.9-50.8 (H100, quant_gemm_h100_fp8_tc.json).
FP8_GEMV_MAX_M = 8
INT_MM_MIN_M = 24  # torch._int_mm (cuBLASLt int8) needs more than 16 rows; 8-aligned for its tiles
# SmoothQuant rows up to which int8_gemm runs the W8A8 GEMV (kInt8GemvMaxM, __dp4a, bitwise the _int_mm
# path) instead of _int_mm on rows padded to INT_MM_MIN_M.
INT8_GEMV_MAX_M = 8

NUM_GEMV_CONFIGS = 5  # kQuantGemvNumConfigs: CUDA-core launch shapes 1..5 (0 = the C++ automatic choice)
# kWoTcFirstConfig..kWoTcLastConfig: the int4 tensor-core kernel (wo_gemv_tc.cuh), weight-only 4-bit only.
WO_TC_CONFIGS = (8, 9, 10, 11, 12, 13, 14, 15)
# kWoTc1FirstConfig..kWoTc1LastConfig: the int4 tensor-core kernel for one to eight activation rows
# (wo_gemv_tc1.cuh: warps own consecutive k blocks, a row's scales of group 128 come in one vector load
# per step, two steps of loads in flight; rows 2..8 ride in the mma's otherwise idle columns).
# Other shapes (m > 8, k % 128, groups other than 128) run config 11.
WO_TC1_CONFIGS = (16, 17, 18, 19)
WIDE_N = 8192  # n at or above this gives enough blocks for one warp per row group (configs 2, 5)
# (bits, MT, n >= WIDE_N) -> GEMV launch config, MT = m rounded up to 1, 2, 4, 8, 16; missing keys
# use config 1 (the first kernel: int8 at 90-99% of copy). An untuned prior: int4 rows of k = 4096 are
# only 2 KB, so at small m it needs more loads in flight per thread (2) or more, smaller blocks (3).
# After a GPU run, copy bench_quant_gemm.py's "best_config" here (one line per entry).
WO_GEMV_CONFIG: dict[tuple[int, int, bool], int] = {  # measured: quant_gemm_h100.json "summary"
    # m = 1, narrow n: the CUDA-core kernel (config 1) was best or within 2% on the 8B shapes (for
    # group 128 TC1_CONFIG comes first); every other bucket: the tensor-core kernel (10 for wide n,
    # 11 for narrow), 1.2-5x the CUDA-core one from m = 8 and ahead of dequantize + cuBLAS up to m = 16.
    (4, 1, True): 10, (4, 1, False): 1,
    (4, 2, True): 10, (4, 2, False): 11,
    (4, 4, True): 10, (4, 4, False): 11,
    (4, 8, True): 10, (4, 8, False): 11,
    (4, 16, True): 10, (4, 16, False): 11,
}
# int4, m <= 8, group 128, k % 128 == 0: the one-row kernel (configs 16..19) by (MT, n class, k >= LONG_K),
# n class (tc1_n_class) 0: n <= SMALL_N (an 8B's o_proj), 1: other narrow n (qkv), 2: n >= WIDE_N (gate_up,
# LM head). Measured on H100s (2026-12-06, docs/quant_kernels.md), us:
# * m = 1 (quant_gemm_h100_one_row_ab.json, one machine): o 6.6 with 17 (7.4 with 16, 7.9 with 11), qkv 8.2
#   with 16 (11.8 with 17), gate_up 29.0 with 19 (30.3 with 10), LM head 101.5 with 19 (109.0 with 10),
#   down 15.7 with 18 (23.2 with 11).
# * m = 2 / 4 / 8 (quant_gemm_h100_small_m.json): o 7.0 / 7.3 / 7.6 with 18 (8.1 / 8.4 / 8.8 with 11),
#   qkv 8.6 / 9.1 / 9.8 with 16 (9.6 / 9.8 / 10.4), down 16.2 / 16.8 / 18.0 with 18 (23.4 / 23.8 / 25.3),
#   gate_up 30.9 with 19 at m = 2 (32.1 with 10); at m = 4 / 8 config 10 stays (32.3 / 34.7 against
#   32.6 / 35.5 with 19), so those keys are missing (WO_GEMV_CONFIG decides).
LONG_K = 8192
SMALL_N = 4096
TC1_CONFIG: dict[tuple[int, int, bool], int] = {
    (1, 0, False): 17, (1, 1, False): 16, (1, 2, False): 19, (1, 0, True): 18, (1, 1, True): 18, (1, 2, True): 19,
    (2, 0, False): 18, (2, 1, False): 16, (2, 2, False): 19, (2, 0, True): 18, (2, 1, True): 18, (2, 2, True): 19,
    (4, 0, False): 18, (4, 1, False): 16, (4, 0, True): 18, (4, 1, True): 18,
    (8, 0, False): 18, (8, 1, False): 16, (8, 0, True): 18, (8, 1, True): 18,
}
TC1_STEP = {16: 1, 17: 1, 18: 2, 19: 2}  # k blocks of 128 per step of each one-row config
# kFp8TcFirstConfig..kFp8TcLastConfig: the FP8 tensor-core GEMV (fp8_gemv_tc.cuh: e4m3 mma on the codes as
# loaded, 1..8 rows of quantized activations). fp8_gemv_static (in-kernel quantizer), m > 8 and devices
# below compute capability 8.9 run config 1 for these.
FP8_TC_CONFIGS = (20, 21, 22, 23)
FP8_GEMV_MAX_LOWRANK = 64  # kFp8GemvMaxLowRank: the low-rank epilogue term's largest r
# (MT, tc1_n_class(n)) -> SmoothQuant int8 GEMV launch config 1..5 (missing keys use 1).
# H100 (quant_gemm_h100_int8_gemv.json, us at m = 1, config 1 / 4): o 7.9 / 7.6, down 23.0 / 21.0, qkv
# 9.6 / 10.8, gate_up 38.3 / 39.6; at m = 2 config 4 loses on o (8.1 against 7.3). Keyed by (MT, n class
# of tc1_n_class): config 4 for n <= SMALL_N at m = 1. In the 8B decode graph (PDL off,
# decode_profile_int8_sq_table.json) down 21.1 us against 23.0 with config 1; with PDL on the layer is
# unchanged (94.6 against 94.8 us).
INT8_GEMV_CONFIG: dict[tuple[int, int], int] = {(1, 0): 4}
# (MT, n >= WIDE_N) -> FP8 GEMV launch config (fp8 rows are 4 KB like int8's; missing keys use 1).
# H100 (quant_gemm_h100_fp8_tc.json, us; 8B shapes qkv / o / gate_up / down): m = 1, 2: config 1 best or
# within 3 %; m = 4: gate_up 43.9 with 22 (49.4 with 1), the narrow ones within 4 % of config 1; m = 8:
# 12.5 / 11.1 / 44.4 / 26.2 with 21 / 21 / 22 / 21 (config 1: 19.8 / 13.8 / 81.6 / 37.9; o alone
# would take 9.6 with 20).
FP8_GEMV_CONFIG: dict[tuple[int, bool], int] = {(4, True): 22, (8, False): 21, (8, True): 22}

_P, _I, _I64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64
# Argument types of the launchers declared in plugins.h (kept next to it: change both together).
_SIGNATURES: dict[str, list] = {
    "trtdsl_weight_only_gemv": [_P, _P, _P, _P, _I64, _I64, _I64, _I, _I, _I, _I, _P],
    "trtdsl_weight_only_gemv_zp": [_P, _P, _P, _P, _P, _I64, _I64, _I64, _I, _I, _I, _I, _I, _P],
    "trtdsl_weight_only_gemv_packed": [_P, _P, _P, _I, _I, _P, _I64, _I64, _I64, _I, _I, _I, _I, _I, _P],
    "trtdsl_weight_only_gemv_packed_norm": [_P, _P, _P, _I, _I, _P, _I64, _I64, _I64, _I, _I, _I, _I, _I, _P, _P,
                                            _P, _P, _P, _I64, ctypes.c_float, _P],
    "trtdsl_weight_only_dequantize_packed": [_P, _P, _I, _I, _P, _I64, _I64, _I, _I, _I, _I, _P],
    "trtdsl_weight_only_dequantize": [_P, _P, _P, _I64, _I64, _I, _I, _I, _I, _P],
    "trtdsl_weight_only_dequantize_zp": [_P, _P, _P, _P, _I64, _I64, _I, _I, _I, _I, _P],
    "trtdsl_quantize_fp8": [_P, _P, _P, _I64, _I64, _I64, _I, _P],
    "trtdsl_quantize_per_token_fp8": [_P, _P, _P, _I64, _I64, _I64, _I, _P],
    "trtdsl_fp8_gemv": [_P, _P, _P, _I64, _P, _I64, _P, _P, _P, _P, _I64, _I64, _I64, _I64, _I, _I, _P],
    "trtdsl_fp8_gemv_static": [_P, _P, _P, _P, _I64, _P, _I64, _I64, _I64, _I, _I, _P],
    "trtdsl_quantize_per_token_int8": [_P, _P, _P, _I64, _I64, _I64, _I, _P],
    "trtdsl_int8_gemm_epilogue": [_P, _I64, _P, _P, _P, _I64, _I64, _I, _P],
    "trtdsl_int8_gemv": [_P, _P, _P, _P, _P, _I64, _I64, _I64, _I, _I, _P],
    "trtdsl_set_pdl": [_I],  # pdl.cuh
    "trtdsl_pdl_enabled": [],
}
register_signatures(_SIGNATURES)


def set_programmatic_launch(enabled: bool) -> bool:
    """Turn programmatic dependent launch (``plugins_cuda/include/trtdsl/pdl.cuh``) of the kernels that
    support it (quantized GEMVs, fp8 quantizers, RMSNorm, SwiGLU) on or off; returns the previous
    setting. Default: on unless env ``TRTDSL_PDL=0``; only sm_90+ devices get the launch attribute.
    A measurement switch: CUDA graphs captured earlier keep the launches they recorded, so recapture
    after changing it."""
    return bool(lib().trtdsl_set_pdl(1 if enabled else 0))


def programmatic_launch_enabled() -> bool:
    """Whether kernels launched from now on request programmatic dependent launch (see
    :func:`set_programmatic_launch`)."""
    return bool(lib().trtdsl_pdl_enabled())


def _mt(m: int) -> int:
    """The kernels' row bucket: m rounded up to a power of two (1, 2, 4, 8, 16)."""
    return 1 << max(0, m - 1).bit_length()


def tc1_n_class(n: int) -> int:
    """The n bucket of ``TC1_CONFIG``: 0 for n <= SMALL_N, 1 for other n below WIDE_N, 2 from WIDE_N."""
    return 0 if n <= SMALL_N else (1 if n < WIDE_N else 2)


def gemv_config(kind: str, m: int, n: int, bits: int = 4, k: int = 0, group_size: int = 0) -> int:
    """Launch config the tables pick for a ``kind`` ("wo", "fp8" or "int8") GEMV of ``m`` rows, ``n`` outputs,
    ``k`` inputs and (weight-only) ``group_size`` (0 = per channel; k = 0: unknown)."""
    wide = n >= WIDE_N
    if kind == "fp8":
        return FP8_GEMV_CONFIG.get((_mt(m), wide), 1)
    if kind == "int8":
        return INT8_GEMV_CONFIG.get((_mt(m), tc1_n_class(n)), 1)
    if bits == 4 and m <= 8 and group_size == 128 and k > 0 and k % 128 == 0:
        config = TC1_CONFIG.get((_mt(m), tc1_n_class(n), k >= LONG_K))
        if config is not None and (k // 128) % TC1_STEP[config] == 0:  # whole steps (else the C fallback)
            return config
    return WO_GEMV_CONFIG.get((bits, _mt(m), wide), 1)


def _check_config(op: str, config: int, tensor_core: tuple[int, ...] = (), kind: str = "") -> None:
    """``config`` must be a CUDA-core shape 0..NUM_GEMV_CONFIGS or one of the op's ``tensor_core`` configs."""
    if not (0 <= config <= NUM_GEMV_CONFIGS or config in tensor_core):
        extra = f" or {tensor_core[0]}..{tensor_core[-1]} ({kind} tensor cores)" if tensor_core else ""
        raise PluginError(f"{op}: config must be 0..{NUM_GEMV_CONFIGS}{extra}, got {config}")


def gemv_max_m(bits: int) -> int:
    """Rows up to which :func:`weight_only_gemm` runs the GEMV (else dequantize + cuBLAS)."""
    return INT4_GEMV_MAX_M if bits == 4 else GEMV_MAX_M


def _as_2d(op: str, x: torch.Tensor, k: int) -> torch.Tensor:
    _check(op, "x", x, dtypes=_DTYPE_CODES, contiguous=False)
    if x.dim() == 0 or x.shape[-1] != k:
        raise PluginError(f"{op}: x must be [..., {k}], got shape {tuple(x.shape)}")
    return x.reshape(-1, k).contiguous()


def _num_groups(k: int, group_size: int) -> int:
    return 1 if group_size == 0 else -(-k // group_size)


def _check_weight_only(op: str, x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, bits: int,
                       group_size: int, k: int, zeros: torch.Tensor | None = None) -> int:
    if bits not in (4, 8):
        raise PluginError(f"{op}: bits must be 4 or 8, got {bits}")
    if group_size < 0 or (bits == 4 and k % 2):
        raise PluginError(f"{op}: group_size {group_size} must be >= 0 and int4 in_features ({k}) even")
    _check(op, "qweight", qweight, x.device, (torch.int8, torch.uint8), ndim=2)
    if qweight.shape[1] != (k // 2 if bits == 4 else k):
        raise PluginError(f"{op}: qweight has shape {tuple(qweight.shape)}; expected [n, "
                          f"{k // 2 if bits == 4 else k}] for {bits}-bit in_features={k}")
    groups = _num_groups(k, group_size)
    for name, t in (("scales", scales), ("zeros", zeros)):
        if t is None:
            continue
        _check(op, name, t, x.device, (torch.float32,), ndim=2)
        if tuple(t.shape) != (qweight.shape[0], groups):
            raise PluginError(f"{op}: {name} has shape {tuple(t.shape)}, expected "
                              f"({qweight.shape[0]}, {groups})")
    return groups


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def dequantize_weight(qweight: torch.Tensor, scales: torch.Tensor, bits: int, group_size: int,
                      in_features: int, dtype: torch.dtype = torch.bfloat16,
                      zeros: torch.Tensor | None = None) -> torch.Tensor:
    """``codes * scales`` (``+ zeros`` for the asymmetric format) as a ``[n, in_features]`` tensor of
    ``dtype`` (fp32/fp16/bf16); fp32 is bitwise ``numerics.dequantize_weight``."""
    op = "dequantize_weight"
    probe = torch.empty(0, in_features, dtype=dtype, device=qweight.device)
    groups = _check_weight_only(op, probe, qweight, scales, bits, group_size, in_features, zeros)
    out = torch.empty(qweight.shape[0], in_features, dtype=dtype, device=qweight.device)
    call("trtdsl_weight_only_dequantize_zp", qweight.data_ptr(), scales.data_ptr(), _ptr(zeros), out.data_ptr(),
         qweight.shape[0], in_features, bits, group_size, groups, _DTYPE_CODES[dtype], _stream(qweight))
    return out


def gemv_supported(x2: torch.Tensor, bits: int, group_size: int, k: int, max_m: int = GEMV_MAX_M) -> bool:
    """Whether the GEMV kernel takes these rows / shapes (else the dequantize + cuBLAS path)."""
    epv = 16 if bits == 8 else 32  # codes per 16-byte weight load
    return (1 <= x2.shape[0] <= max_m and x2.dtype in _HALF_TYPES and k % epv == 0
            and (group_size == 0 or group_size % epv == 0) and x2.data_ptr() % 16 == 0)


def weight_only_gemv(x2: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, bits: int,
                     group_size: int, groups: int, zeros: torch.Tensor | None = None,
                     config: int | None = None) -> torch.Tensor:
    """The decode kernel on ``x2 [m <= 16, k]`` (callers check :func:`gemv_supported` with
    ``max_m=GEMV_KERNEL_MAX_M``). ``config``: CUDA-core launch shape 1..5, int4 tensor-core kernel
    8..15 (``WO_TC_CONFIGS``), one-row int4 tensor-core kernel 16..19 (``WO_TC1_CONFIGS``), 0 = the C++
    prior, ``None`` = the ``WO_GEMV_CONFIG`` tables."""
    m, k = x2.shape
    n = qweight.shape[0]
    config = gemv_config("wo", m, n, bits, k, group_size) if config is None else config
    _check_config("weight_only_gemv", config, (*WO_TC_CONFIGS, *WO_TC1_CONFIGS) if bits == 4 else (), "int4")
    out = x2.new_empty(m, n)
    call("trtdsl_weight_only_gemv_zp", x2.data_ptr(), qweight.data_ptr(), scales.data_ptr(), _ptr(zeros),
         out.data_ptr(), m, n, k, bits, group_size, groups, config, _DTYPE_CODES[x2.dtype], _stream(x2))
    return out


WO_PACKED_CONFIGS = tuple(range(13))  # kWoPackedConfigs: launch shapes of the tile-16 GEMV (wo_gemv_packed.cuh)
PACKED_GEMV_MAX_M = 8  # rows one tile-16 GEMV launch takes (the mma's 8 columns)
# (m == 1, tc1_n_class(weight rows), k >= LONG_K, group 64) -> tile-16 GEMV launch shape, m <= 8. H100
# (int4_packed_h100.json, 2026-12-06 21:09 UTC, us with zeros): m = 1, g128: o 5.35 (6), qkv 6.95 (1),
# gate_up 25.2 (4, with SwiGLU fused 25.2), down 12.7 (6), LM head 100.3 (4); m = 1, g64: o 5.45 (1), qkv 7.51
# (0), gate_up 27.2 (4), down 14.7 (1), LM head 108.3 (4); m = 4, g128: o 5.91 (2), qkv 7.08 (1), gate_up
# 25.4 (4), down 15.4 (2); m > 1 with g64 was not measured: its m = 1 picks. Since 2026-12-07 08:31 UTC m = 1 g64
# o and down take 11 (8 warps, 4 stages, weights loaded before the PDL wait), from the 8B step with PDL on
# (decode_profile_int4_prewait_final.json: float16 tables 2091 us against 2203 with o 2 / down 2, float32
# tables 2356 against 2389 with o 1 / down 1; the committed tree 2065 against 2182 us in
# decode_profile_int4_prewait.json; the shapes' A/B in docs/quant_kernels.md).
PACKED_CONFIG: dict[tuple[bool, int, bool, bool], int] = {
    (True, 0, False, False): 6, (True, 1, False, False): 1, (True, 2, False, False): 4,
    (True, 0, True, False): 6, (True, 1, True, False): 2, (True, 2, True, False): 4,
    (True, 0, False, True): 11, (True, 1, False, True): 0, (True, 2, False, True): 4,
    (True, 0, True, True): 11, (True, 1, True, True): 1, (True, 2, True, True): 4,
    (False, 0, False, False): 2, (False, 1, False, False): 1, (False, 2, False, False): 4,
    (False, 0, True, False): 2, (False, 1, True, False): 2, (False, 2, True, False): 4,
    (False, 0, False, True): 1, (False, 1, False, True): 0, (False, 2, False, True): 4,
    (False, 0, True, True): 1, (False, 1, True, True): 1, (False, 2, True, True): 4,
}
# Float32 and float16 scale tables (QuantConfig.half_scales) share these picks: the pre-wait A/B measured the
# same best shapes for both (from 2026-12-07 05:50 UTC to then float16 tables had their own table, o and down
# at 2: int4_packed_half_h100.json, decode_profile_int4_retune.json).


def packed_config(m: int, rows: int, k: int, group_size: int) -> int:
    """The ``PACKED_CONFIG`` launch shape for ``m`` activation rows against a pack of ``rows`` weight rows,
    ``k`` inputs, groups of ``group_size`` (either scale table dtype)."""
    return PACKED_CONFIG[(m == 1, tc1_n_class(rows), k >= LONG_K, group_size == 64)]


def _check_pack(op: str, qpacked: torch.Tensor, sz: torch.Tensor, rows: int, k: int,
                device: torch.device) -> None:
    _check(op, "qpacked", qpacked, device, (torch.int8,), ndim=3)
    _check(op, "sz", sz, device, (torch.float32, torch.float16), ndim=4)
    q_shape, sz_shape = packed_shapes(rows, k, sz.shape[1])
    if tuple(qpacked.shape) != q_shape or k % 128:
        raise PluginError(f"{op}: qpacked must be [{q_shape[0]}, k / 128, 1024] for {rows} rows and k % 128 == 0; "
                          f"got {tuple(qpacked.shape)} for k = {k}")
    if tuple(sz.shape[:3]) != sz_shape or sz.shape[3] not in (2, 4):
        raise PluginError(f"{op}: sz must be [{q_shape[0]}, groups, 8, 2 | 4], got {tuple(sz.shape)}")


def weight_only_gemv_packed(x2: torch.Tensor, qpacked: torch.Tensor, sz: torch.Tensor, n: int, group_size: int,
                            swiglu: bool = False, config: int | None = None, *, residual: torch.Tensor | None = None,
                            gamma: torch.Tensor | None = None, ssq: torch.Tensor | None = None,
                            eps: float = 0.0) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """int4 decode GEMV over the tile-16 layout (:mod:`trtdsl.quantization.int4_tiles`): ``x2 [m <= 8, k]``
    fp16/bf16 against ``n`` weight rows, or with ``swiglu`` the ``n`` outputs ``silu(gate) * up`` of a pack
    made with ``swiglu=True`` (2 n rows); ``sz`` float32 or float16. ``config``: launch shape 0..12
    (``WO_PACKED_CONFIGS``), ``None`` = ``packed_config``.

    The deferred RMSNorm (:mod:`trtdsl.passes.deferred_norm`): with ``residual [m, n]`` and ``gamma [n]``
    (no ``swiglu``) returns ``(total, scaled, ssq)``: ``total = T(T(x W^T) + residual)``, ``scaled =
    T(total * gamma)`` and ``ssq [m, ceil(n / 16)]`` float32, each 16-output tile's sum of ``total^2``. With
    ``ssq [m, k / 16]`` (a producer's), the sums are multiplied by ``rsqrt(ssq.sum(-1) / k + eps)`` before
    they are rounded (and before the SwiGLU): ``x2`` then is a producer's ``scaled``."""
    op = "weight_only_gemv_packed"
    _check(op, "x", x2, dtypes=_HALF_TYPES, ndim=2)
    m, k = x2.shape
    rows = 2 * n if swiglu else n
    _check_pack(op, qpacked, sz, rows, k, x2.device)
    if not 1 <= m <= PACKED_GEMV_MAX_M:
        raise PluginError(f"{op}: x must have 1..{PACKED_GEMV_MAX_M} rows, got {m}")
    config = packed_config(m, rows, k, group_size) if config is None else config
    if config not in WO_PACKED_CONFIGS:
        raise PluginError(f"{op}: config must be one of {WO_PACKED_CONFIGS}, got {config}")
    produce = _check_deferred_norm(op, x2, n, swiglu, residual, gamma, ssq, eps)
    out = x2.new_empty(m, n)
    scaled = x2.new_empty(m, n) if produce else None
    ssq_out = x2.new_empty(m, num_tiles(n), dtype=torch.float32) if produce else None
    call("trtdsl_weight_only_gemv_packed_norm", x2.data_ptr(), qpacked.data_ptr(), sz.data_ptr(),
         int(sz.shape[3] == 4), int(sz.dtype == torch.float16), out.data_ptr(), m, n, k, group_size, sz.shape[1],
         int(swiglu), config, _DTYPE_CODES[x2.dtype], _ptr(residual), _ptr(gamma), _ptr(scaled), _ptr(ssq_out),
         _ptr(ssq), k // 16, float(eps), _stream(x2))
    return (out, scaled, ssq_out) if produce else out


def _check_deferred_norm(op: str, x2: torch.Tensor, n: int, swiglu: bool, residual: torch.Tensor | None,
                         gamma: torch.Tensor | None, ssq: torch.Tensor | None, eps: float) -> bool:
    """Validate the deferred norm's tensors; True for a producer (residual and gamma given)."""
    m, k = x2.shape
    if (residual is None) != (gamma is None):
        raise PluginError(f"{op}: the deferred norm's producer needs both residual and gamma")
    if residual is not None and gamma is not None:
        if swiglu:
            raise PluginError(f"{op}: a producer (residual + gamma) cannot fuse the SwiGLU")
        _check(op, "residual", residual, x2.device, (x2.dtype,), ndim=2)
        _check(op, "gamma", gamma, x2.device, (x2.dtype,), ndim=1)
        if tuple(residual.shape) != (m, n) or tuple(gamma.shape) != (n,):
            raise PluginError(f"{op}: residual must be [{m}, {n}] and gamma [{n}], got "
                              f"{tuple(residual.shape)} and {tuple(gamma.shape)}")
    if ssq is not None:
        _check(op, "ssq", ssq, x2.device, (torch.float32,), ndim=2)
        if tuple(ssq.shape) != (m, k // 16):
            raise PluginError(f"{op}: ssq must be float32 [{m}, {k // 16}] (a producer's tile sums "
                              f"of k = {k} outputs), got {tuple(ssq.shape)}")
        if not eps >= 0.0:
            raise PluginError(f"{op}: eps must be >= 0, got {eps}")
    return residual is not None


def dequantize_packed(qpacked: torch.Tensor, sz: torch.Tensor, rows: int, k: int, group_size: int,
                      dtype: torch.dtype, swiglu: bool = False) -> torch.Tensor:
    """A tile-16 pack as ``[rows, k]`` weights of ``dtype`` (fp16/bf16) in the canonical row order (a
    ``swiglu`` pack back to gate rows then up rows): bitwise :func:`dequantize_weight` of the canonical
    tensors."""
    op = "dequantize_packed"
    _check_pack(op, qpacked, sz, rows, k, qpacked.device)
    if dtype not in _HALF_TYPES:
        raise PluginError(f"{op}: dtype must be float16 or bfloat16, got {dtype}")
    out = torch.empty(rows, k, dtype=dtype, device=qpacked.device)
    call("trtdsl_weight_only_dequantize_packed", qpacked.data_ptr(), sz.data_ptr(), int(sz.shape[3] == 4),
         int(sz.dtype == torch.float16), out.data_ptr(), rows, k, group_size, sz.shape[1], int(swiglu),
         _DTYPE_CODES[dtype], _stream(qpacked))
    return out


def int4_tile_gemm(x: torch.Tensor, qpacked: torch.Tensor, sz: torch.Tensor, n: int, k: int, group_size: int,
                   swiglu: bool = False) -> torch.Tensor:
    """``trtdsl.int4_tile_gemm`` on CUDA, ``x [..., k]`` fp16/bf16: up to ``PACKED_GEMV_MAX_M`` rows one
    tile-16 GEMV, up to twice that two (each streams the weights: cheaper than dequantizing them), more rows
    :func:`dequantize_packed` then cuBLAS (then SwiGLU, with ``swiglu``)."""
    from .ops import swiglu as swiglu_op
    x2 = _aligned_2d("int4_tile_gemm", x, k)
    m = x2.shape[0]
    if m == 0:
        return x.new_empty(*x.shape[:-1], n)
    if m <= 2 * PACKED_GEMV_MAX_M:
        out = _cat(_gemv_chunks(x2, qpacked, sz, n, group_size, swiglu))
    else:
        w = dequantize_packed(qpacked, sz, 2 * n if swiglu else n, k, group_size, x2.dtype, swiglu)
        out = F.linear(x2, w)
        out = swiglu_op(out) if swiglu else out
    return out.view(*x.shape[:-1], n)


def int4_tile_gemv_add_norm(x: torch.Tensor, qpacked: torch.Tensor, sz: torch.Tensor, n: int, k: int,
                            group_size: int, residual: torch.Tensor,
                            gamma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The deferred norm's producer (``trtdsl.int4_tile_gemm_add_norm`` at up to ``2 * PACKED_GEMV_MAX_M``
    rows): ``(scaled, total, ssq)`` of :func:`weight_only_gemv_packed` over ``x [..., k]``, one launch per 8
    rows."""
    x2, m = _packed_rows("int4_tile_gemv_add_norm", x, k)
    parts = _gemv_chunks(x2, qpacked, sz, n, group_size, row_args={"residual": residual.reshape(m, n).contiguous()},
                         gamma=gamma.reshape(-1).contiguous())
    total, scaled, ssq = (_cat(list(p)) for p in zip(*parts))
    lead = x.shape[:-1]
    return scaled.view(*lead, n), total.view(*lead, n), ssq.view(*lead, ssq.shape[-1])


def int4_tile_gemv_normed(x: torch.Tensor, qpacked: torch.Tensor, sz: torch.Tensor, n: int, k: int,
                          group_size: int, swiglu: bool, ssq: torch.Tensor, eps: float) -> torch.Tensor:
    """The deferred norm's consumer (``trtdsl.int4_tile_gemm_normed`` at up to ``2 * PACKED_GEMV_MAX_M``
    rows): :func:`weight_only_gemv_packed` of a producer's ``scaled`` with its ``ssq``."""
    x2, m = _packed_rows("int4_tile_gemv_normed", x, k)
    parts = _gemv_chunks(x2, qpacked, sz, n, group_size, swiglu, row_args={"ssq": ssq.reshape(m, -1).contiguous()},
                         eps=eps)
    return _cat(parts).view(*x.shape[:-1], n)


def _aligned_2d(op: str, x: torch.Tensor, k: int) -> torch.Tensor:
    """``x`` as ``[rows, k]`` starting at a 16-byte boundary (the kernels' 16-byte activation loads)."""
    x2 = _as_2d(op, x, k)
    return x2 if x2.data_ptr() % 16 == 0 else x2.clone()


def _packed_rows(op: str, x: torch.Tensor, k: int) -> tuple[torch.Tensor, int]:
    """``x`` as 16-byte aligned ``[m, k]`` rows for the tile GEMV, m in 1..2 * PACKED_GEMV_MAX_M."""
    x2 = _aligned_2d(op, x, k)
    if not 1 <= x2.shape[0] <= 2 * PACKED_GEMV_MAX_M:
        raise PluginError(f"{op}: x must have 1..{2 * PACKED_GEMV_MAX_M} rows, got {x2.shape[0]}")
    return x2, x2.shape[0]


def _gemv_chunks(x2: torch.Tensor, qpacked: torch.Tensor, sz: torch.Tensor, n: int, group_size: int,
                 swiglu: bool = False, row_args: dict[str, torch.Tensor] | None = None, **kwargs: Any) -> list:
    """:func:`weight_only_gemv_packed` over ``x2`` in launches of ``PACKED_GEMV_MAX_M`` rows, the tensors of
    ``row_args`` (one row per activation row) sliced alike; one result per launch."""
    rows = range(0, x2.shape[0], PACKED_GEMV_MAX_M)
    return [weight_only_gemv_packed(x2[i:i + PACKED_GEMV_MAX_M], qpacked, sz, n, group_size, swiglu,
                                    **{name: t[i:i + PACKED_GEMV_MAX_M] for name, t in (row_args or {}).items()},
                                    **kwargs) for i in rows]


def _cat(parts: list[torch.Tensor]) -> torch.Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def weight_only_gemm(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, bits: int,
                     group_size: int, in_features: int, zeros: torch.Tensor | None = None) -> torch.Tensor:
    """``x W^T`` with int8 / packed-int4 weights, group-wise scales and optional additive ``zeros``
    (``W = codes * scales + zeros``); ``x [..., k]`` fp16/bf16 (fp32 runs the dequantize path in fp32)."""
    op = "weight_only_gemm"
    x2 = _as_2d(op, x, in_features)
    groups = _check_weight_only(op, x2, qweight, scales, bits, group_size, in_features, zeros)
    n = qweight.shape[0]
    if x2.shape[0] == 0:
        return x.new_empty(*x.shape[:-1], n)
    zeros = None if zeros is None else zeros.contiguous()
    if gemv_supported(x2, bits, group_size, in_features, gemv_max_m(bits)):
        out = weight_only_gemv(x2, qweight.contiguous(), scales.contiguous(), bits, group_size, groups, zeros)
    else:
        w = dequantize_weight(qweight.contiguous(), scales.contiguous(), bits, group_size, in_features, x2.dtype,
                              zeros)
        out = F.linear(x2, w)
    return out.view(*x.shape[:-1], n)


def quantize_fp8(x2: torch.Tensor, scale: torch.Tensor, pad_rows_to: int = 1) -> torch.Tensor:
    """e4m3 codes of ``x2 / scale`` ([m, k] -> [ceil(m / pad_rows_to) * pad_rows_to, k], zero padding)."""
    op = "quantize_fp8"
    _check(op, "x", x2, dtypes=_DTYPE_CODES, ndim=2)
    _check(op, "input_scale", scale, x2.device, (torch.float32,))
    m, k = x2.shape
    rows = -(-m // pad_rows_to) * pad_rows_to
    out = torch.empty(rows, k, dtype=torch.float8_e4m3fn, device=x2.device)
    call("trtdsl_quantize_fp8", x2.data_ptr(), scale.data_ptr(), out.data_ptr(), m, rows, k,
         _DTYPE_CODES[x2.dtype], _stream(x2))
    return out


def quantize_per_token_fp8(x2: torch.Tensor, pad_rows_to: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic per-row e4m3 codes (rows padded with zeros to a multiple of ``pad_rows_to``) and float32
    scales ``[m, 1]`` (``max|x_row| / 448``): ``numerics.quantize_per_token_fp8`` on the GPU, bitwise."""
    op = "quantize_per_token_fp8"
    _check(op, "x", x2, dtypes=_DTYPE_CODES, ndim=2)
    m, k = x2.shape
    rows = -(-m // pad_rows_to) * pad_rows_to
    codes = torch.empty(rows, k, dtype=torch.float8_e4m3fn, device=x2.device)
    scales = torch.empty(m, 1, dtype=torch.float32, device=x2.device)
    call("trtdsl_quantize_per_token_fp8", x2.data_ptr(), codes.data_ptr(), scales.data_ptr(), m, rows, k,
         _DTYPE_CODES[x2.dtype], _stream(x2))
    return codes, scales


def _check_code_gemv(op: str, xq: torch.Tensor, weight: torch.Tensor, code: torch.dtype, max_m: int,
                     out_dtype: torch.dtype) -> tuple[int, int, int]:
    """Checks of a GEMV on quantized activations (``code`` dtype ``xq [1..max_m, k]``, ``weight [n, k]``,
    k % 16 == 0, a float ``out_dtype``); returns (m, k, n)."""
    _check(op, "xq", xq, dtypes=(code,), ndim=2)
    _check(op, "weight", weight, xq.device, (code,), ndim=2)
    m, k = xq.shape
    n = weight.shape[0]
    if weight.shape[1] != k or k % 16 or not 1 <= m <= max_m:
        raise PluginError(f"{op}: needs xq [1..{max_m}, k] and weight [n, k] with k % 16 == 0, "
                          f"got {tuple(xq.shape)} and {tuple(weight.shape)}")
    if out_dtype not in _DTYPE_CODES:
        raise PluginError(f"{op}: out_dtype must be float32/float16/bfloat16, got {out_dtype}")
    return m, k, n


def fp8_gemv(xq: torch.Tensor, weight: torch.Tensor, x_scale: torch.Tensor, weight_scale: torch.Tensor,
             out_dtype: torch.dtype, config: int | None = None, bias: torch.Tensor | None = None,
             lowrank: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """The FP8 decode kernel: ``(xq W^T) * (x_scale * weight_scale)`` (then ``+ c @ w`` for ``lowrank =
    (c [m, r], w [r, n])``, then ``+ bias [n]``, both in out_dtype and added to the rounded output as
    separate layers would) for e4m3 ``xq [m <= 16, k]``
    (from :func:`quantize_fp8` / :func:`quantize_per_token_fp8`), e4m3 ``weight [n, k]``, ``x_scale``
    ``[1]`` or ``[m, 1]``, ``weight_scale`` ``[1]`` or ``[n]``; ``k % 16 == 0``. ``config``: CUDA-core
    launch shape 1..5, tensor-core kernel 20..23 (``FP8_TC_CONFIGS``), 0 = the C++ prior, ``None`` = the
    ``FP8_GEMV_CONFIG`` table."""
    op = "fp8_gemv"
    m, k, n = _check_code_gemv(op, xq, weight, torch.float8_e4m3fn, GEMV_KERNEL_MAX_M, out_dtype)
    _check(op, "x_scale", x_scale, xq.device, (torch.float32,))
    _check(op, "weight_scale", weight_scale, xq.device, (torch.float32,))
    if x_scale.numel() not in (1, m) or weight_scale.numel() not in (1, n):
        raise PluginError(f"{op}: x_scale must have 1 or {m} values and weight_scale 1 or {n}, got "
                          f"{tuple(x_scale.shape)} and {tuple(weight_scale.shape)}")
    if bias is not None:
        _check(op, "bias", bias, xq.device, (out_dtype,), ndim=1)
        if bias.shape[0] != n:
            raise PluginError(f"{op}: bias has {bias.shape[0]} values, the weight {n} rows")
        bias = bias.contiguous()
    c = w = None
    if lowrank is not None:
        c, w = lowrank
        _check(op, "lowrank c", c, xq.device, (out_dtype,), ndim=2)
        _check(op, "lowrank weight", w, xq.device, (out_dtype,), ndim=2)
        if c.shape[0] != m or w.shape != (c.shape[1], n) or not 1 <= c.shape[1] <= FP8_GEMV_MAX_LOWRANK:
            raise PluginError(f"{op}: lowrank needs c [{m}, r] and w [r, {n}] with 1 <= r <= "
                              f"{FP8_GEMV_MAX_LOWRANK}, got {tuple(c.shape)} and {tuple(w.shape)}")
        c, w = c.contiguous(), w.contiguous()
    config = gemv_config("fp8", m, n) if config is None else config
    _check_config(op, config, FP8_TC_CONFIGS, "fp8")
    out = torch.empty(m, n, dtype=out_dtype, device=xq.device)
    call("trtdsl_fp8_gemv", xq.data_ptr(), weight.data_ptr(), x_scale.data_ptr(), int(x_scale.numel() > 1),
         weight_scale.data_ptr(), int(weight_scale.numel() > 1), out.data_ptr(),
         bias.data_ptr() if bias is not None else None, c.data_ptr() if c is not None else None,
         w.data_ptr() if w is not None else None, 0 if c is None else c.shape[1], m, n, k, config,
         _DTYPE_CODES[out_dtype], _stream(xq))
    return out


def fp8_gemv_static(x2: torch.Tensor, weight: torch.Tensor, input_scale: torch.Tensor,
                    weight_scale: torch.Tensor, config: int | None = None) -> torch.Tensor:
    """The FP8 decode kernel with the static activation quantizer fused in: bitwise
    ``fp8_gemv(quantize_fp8(x2, input_scale), weight, input_scale, weight_scale, x2.dtype, config)`` in
    one launch. ``x2 [m <= 16, k]`` fp16/bf16, 16-byte aligned; ``input_scale [1]``; output in x2's dtype."""
    op = "fp8_gemv_static"
    _check(op, "x", x2, dtypes=_HALF_TYPES, ndim=2)
    _check(op, "weight", weight, x2.device, (torch.float8_e4m3fn,), ndim=2)
    m, k = x2.shape
    n = weight.shape[0]
    if weight.shape[1] != k or k % 16 or not 1 <= m <= GEMV_KERNEL_MAX_M or x2.data_ptr() % 16:
        raise PluginError(f"{op}: needs a 16-byte aligned x [1..{GEMV_KERNEL_MAX_M}, k] and weight [n, k] with "
                          f"k % 16 == 0, got {tuple(x2.shape)} and {tuple(weight.shape)}")
    _check(op, "input_scale", input_scale, x2.device, (torch.float32,))
    _check(op, "weight_scale", weight_scale, x2.device, (torch.float32,))
    if input_scale.numel() != 1 or weight_scale.numel() not in (1, n):
        raise PluginError(f"{op}: input_scale must have 1 value and weight_scale 1 or {n}, got "
                          f"{tuple(input_scale.shape)} and {tuple(weight_scale.shape)}")
    config = gemv_config("fp8", m, n) if config is None else config
    _check_config(op, config, FP8_TC_CONFIGS, "fp8")
    out = torch.empty(m, n, dtype=x2.dtype, device=x2.device)
    call("trtdsl_fp8_gemv_static", x2.data_ptr(), input_scale.data_ptr(), weight.data_ptr(),
         weight_scale.data_ptr(), int(weight_scale.numel() > 1), out.data_ptr(), m, n, k, config,
         _DTYPE_CODES[x2.dtype], _stream(x2))
    return out


def fp8_gemm(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
             input_scale: torch.Tensor | None = None, pad_rows_to: int = 1,
             gemv_max_m: int | None = None) -> torch.Tensor:
    """FP8 W8A8 ``x W^T``: static per-tensor ``input_scale`` ``[1]`` or, with ``None``, dynamic
    per-token activation scales; per-tensor ``[1]`` or per-channel ``[n]`` weight scale. Up to
    ``gemv_max_m`` rows run the FP8 GEMV (k % 16 == 0, any GPU); more rows run cuBLASLt
    ``_scaled_mm`` (k and n multiples of 16, sm_89+)."""
    op = "fp8_gemm"
    _check(op, "weight", weight, dtypes=(torch.float8_e4m3fn,), ndim=2)
    n, k = weight.shape
    x2 = _as_2d(op, x, k)
    _check(op, "weight_scale", weight_scale, x2.device, (torch.float32,), ndim=1)
    if weight_scale.shape[0] not in (1, n):
        raise PluginError(f"{op}: weight_scale must be [1] or [{n}], got {tuple(weight_scale.shape)}")
    m = x2.shape[0]
    if m == 0:
        return x.new_empty(*x.shape[:-1], n)
    if fp8_gemv_supported(m, k, weight, gemv_max_m):
        if input_scale is None:
            xq, xs = quantize_per_token_fp8(x2)
        elif FP8_FUSE_STATIC_QUANT and x2.dtype in _HALF_TYPES and x2.data_ptr() % 16 == 0:  # one launch
            out = fp8_gemv_static(x2, weight.contiguous(), input_scale.reshape(1), weight_scale)
            return out.view(*x.shape[:-1], n)
        else:
            xs = input_scale.reshape(1)
            xq = quantize_fp8(x2, xs)
        return fp8_gemv(xq, weight.contiguous(), xs, weight_scale, x2.dtype).view(*x.shape[:-1], n)
    if k % 16 or n % 16:
        raise PluginError(f"{op}: cuBLASLt FP8 needs in/out features divisible by 16, got k={k}, n={n}")
    wt = weight.t()  # [k, n] column-major: the layout cuBLASLt's fp8 GEMM wants
    if input_scale is None:
        out = _scaled_mm_per_token(x2, wt, weight_scale, pad_rows_to)
    else:
        out = _scaled_mm_static(x2, wt, weight_scale, input_scale, pad_rows_to)
    return out[:m].view(*x.shape[:-1], n)


def _scaled_mm_static(x2: torch.Tensor, wt: torch.Tensor, weight_scale: torch.Tensor, input_scale: torch.Tensor,
                      pad_rows_to: int) -> torch.Tensor:
    n = wt.shape[1]
    xq = quantize_fp8(x2, input_scale.reshape(1), pad_rows_to)
    if weight_scale.shape[0] == 1:
        return torch._scaled_mm(xq, wt, scale_a=input_scale.reshape(()), scale_b=weight_scale.reshape(()),
                                out_dtype=x2.dtype)
    if x2.dtype == torch.bfloat16:  # rowwise scaling (bf16 output only)
        return torch._scaled_mm(xq, wt, scale_a=input_scale.reshape(1, 1).expand(xq.shape[0], 1).contiguous(),
                                scale_b=weight_scale.reshape(1, n), out_dtype=torch.bfloat16)
    # fp16/fp32 with per-channel scales: fp32 result, channel scale applied after
    acc = torch._scaled_mm(xq, wt, scale_a=input_scale.reshape(()), scale_b=_ONE.get(x2.device),
                           out_dtype=torch.float32)
    return (acc * weight_scale).to(x2.dtype)


def _scaled_mm_per_token(x2: torch.Tensor, wt: torch.Tensor, weight_scale: torch.Tensor,
                         pad_rows_to: int) -> torch.Tensor:
    """Dynamic per-token activations: rowwise-scaled cuBLASLt for bf16 output; otherwise an fp32
    product scaled as the reference does, ``acc * (x_scale * w_scale)``."""
    n = wt.shape[1]
    xq, xs = quantize_per_token_fp8(x2, pad_rows_to)
    if x2.dtype == torch.bfloat16:
        if xq.shape[0] != xs.shape[0]:  # padding rows: their codes are zero, any scale works
            xs = torch.cat([xs, xs.new_ones(xq.shape[0] - xs.shape[0], 1)])
        ws = weight_scale.reshape(1, -1).expand(1, n).contiguous()
        return torch._scaled_mm(xq, wt, scale_a=xs, scale_b=ws, out_dtype=torch.bfloat16)
    one = _ONE.get(x2.device)
    acc = torch._scaled_mm(xq, wt, scale_a=one, scale_b=one, out_dtype=torch.float32)[:x2.shape[0]]
    return (acc * (xs * weight_scale)).to(x2.dtype)


class _Ones:
    """One float32 ``1.0`` per device, made once (a fresh tensor per call would be an H2D copy)."""

    def __init__(self) -> None:
        self._by_device: dict[torch.device, torch.Tensor] = {}

    def get(self, device: torch.device) -> torch.Tensor:
        if device not in self._by_device:
            self._by_device[device] = torch.ones((), dtype=torch.float32, device=device)
        return self._by_device[device]


_ONE = _Ones()


def _code_gemv_fits(m: int, k: int, weight: torch.Tensor, max_m: int) -> bool:
    """The shapes a GEMV on quantized activations takes: 1..max_m rows, k % 16 == 0, 16-byte aligned weights."""
    return 1 <= m <= max_m and k % 16 == 0 and weight.data_ptr() % 16 == 0


def fp8_gemv_supported(m: int, k: int, weight: torch.Tensor, gemv_max_m: int | None = None) -> bool:
    """Whether :func:`fp8_gemm` (and the codes path, ``fused_quant_ops.fp8_gemm_codes``) runs the FP8 GEMV
    for ``m`` rows of ``k`` features (else ``_scaled_mm``); ``gemv_max_m`` None: ``FP8_GEMV_MAX_M``."""
    limit = FP8_GEMV_MAX_M if gemv_max_m is None else gemv_max_m
    return _code_gemv_fits(m, k, weight, min(limit, GEMV_KERNEL_MAX_M))


def int8_gemv_supported(m: int, k: int, weight: torch.Tensor, gemv_max_m: int | None = None) -> bool:
    """Whether :func:`int8_gemm` runs the GEMV for ``m`` rows of ``k`` features (else ``_int_mm``)."""
    limit = INT8_GEMV_MAX_M if gemv_max_m is None else min(gemv_max_m, INT8_GEMV_MAX_M)
    return _code_gemv_fits(m, k, weight, limit)


def quantize_per_token_int8(x2: torch.Tensor, min_rows: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row int8 codes (padding rows zero) and scales ``[m, 1]``. With ``min_rows``, the codes have
    ``max(m, min_rows)`` rows rounded up to a multiple of 8 (the ``torch._int_mm`` operand)."""
    op = "quantize_per_token_int8"
    _check(op, "x", x2, dtypes=_DTYPE_CODES, ndim=2)
    m, k = x2.shape
    rows = max(m, min_rows)
    rows = -(-rows // 8) * 8 if min_rows else rows
    codes = torch.empty(rows, k, dtype=torch.int8, device=x2.device)
    scales = torch.empty(m, 1, dtype=torch.float32, device=x2.device)
    call("trtdsl_quantize_per_token_int8", x2.data_ptr(), codes.data_ptr(), scales.data_ptr(), m, rows, k,
          _DTYPE_CODES[x2.dtype], _stream(x2))
    return codes, scales


def int8_gemv(xq: torch.Tensor, weight: torch.Tensor, x_scales: torch.Tensor, weight_scale: torch.Tensor,
              out_dtype: torch.dtype, config: int | None = None) -> torch.Tensor:
    """The SmoothQuant decode kernel: ``(float(xq W^T) * x_scales) * weight_scale`` for int8 codes ``xq
    [m <= 8, k]`` (from :func:`quantize_per_token_int8`), int8 ``weight [n, k]``, ``x_scales [m, 1]``,
    ``weight_scale [n]``; ``k % 16 == 0``. int32 sums are exact, so the output is bitwise the ``_int_mm``
    path's. ``config``: launch shape 1..5, 0 = 1, ``None`` = the ``INT8_GEMV_CONFIG`` table."""
    op = "int8_gemv"
    m, k, n = _check_code_gemv(op, xq, weight, torch.int8, INT8_GEMV_MAX_M, out_dtype)
    _check(op, "x_scales", x_scales, xq.device, (torch.float32,))
    _check(op, "weight_scale", weight_scale, xq.device, (torch.float32,))
    if x_scales.numel() != m or weight_scale.numel() != n:
        raise PluginError(f"{op}: x_scales must have {m} values and weight_scale {n}, got "
                          f"{tuple(x_scales.shape)} and {tuple(weight_scale.shape)}")
    config = gemv_config("int8", m, n) if config is None else config
    _check_config(op, config)
    out = torch.empty(m, n, dtype=out_dtype, device=xq.device)
    call("trtdsl_int8_gemv", xq.data_ptr(), weight.data_ptr(), x_scales.data_ptr(), weight_scale.data_ptr(),
         out.data_ptr(), m, n, k, config, _DTYPE_CODES[out_dtype], _stream(xq))
    return out


def int8_gemm(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
              gemv_max_m: int | None = None) -> torch.Tensor:
    """SmoothQuant W8A8: per-token dynamic int8 activations, per-channel int8 weights, int32 accumulate
    (exact), scaled in float32 and cast to x's dtype. Up to ``gemv_max_m`` rows (None:
    ``INT8_GEMV_MAX_M``) with k % 16 == 0 run :func:`int8_gemv`; the others ``torch._int_mm``, which
    needs k and n multiples of 8 (cuBLASLt)."""
    op = "int8_gemm"
    _check(op, "weight", weight, dtypes=(torch.int8,), ndim=2)
    n, k = weight.shape
    x2 = _as_2d(op, x, k)
    _check(op, "weight_scale", weight_scale, x2.device, (torch.float32,), ndim=1)
    if weight_scale.shape[0] != n:
        raise PluginError(f"{op}: weight_scale must be [{n}], got {tuple(weight_scale.shape)}")
    m = x2.shape[0]
    if m == 0:
        return x2.new_empty(*x.shape[:-1], n)
    if int8_gemv_supported(m, k, weight, gemv_max_m):
        codes, x_scales = quantize_per_token_int8(x2)
        return int8_gemv(codes, weight.contiguous(), x_scales, weight_scale, x2.dtype).view(*x.shape[:-1], n)
    if k % 8 or n % 8:
        raise PluginError(f"{op}: cuBLASLt int8 needs in/out features divisible by 8, got k={k}, n={n}")
    out = x2.new_empty(m, n)
    codes, x_scales = quantize_per_token_int8(x2, INT_MM_MIN_M)
    acc = torch._int_mm(codes, weight.t())  # [rows, n] int32; weight [n, k] row-major = column-major B
    call("trtdsl_int8_gemm_epilogue", acc.data_ptr(), acc.stride(0), x_scales.data_ptr(),
          weight_scale.data_ptr(), out.data_ptr(), m, n, _DTYPE_CODES[x2.dtype], _stream(x2))
    return out.view(*x.shape[:-1], n)
