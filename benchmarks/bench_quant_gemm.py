"""Benchmark the quantized GEMMs against bf16 ``F.linear`` on Llama-3-8B's GEMM shapes.

Default (decode, ~2.5 min on an H100): M = 1, 8, 16; bf16 ``F.linear``; int4 group-128 with zeros
(the int4 default format) through the dispatcher, its GEMV forced (table config, every CUDA-core launch
config 1..5, the tensor-core kernel's 8..15, the one-row tensor-core kernel's 16..19) and dequantize +
cuBLAS; FP8 per-channel static through the dispatcher (quantize + GEMV), its GEMV on codes quantized
beforehand as in the decode graph (table and every config: CUDA cores 1..5, tensor cores 20..23) and
with the quantizer fused in, ``_scaled_mm``, and the dynamic per-token format; SmoothQuant int8 through
the dispatcher, through ``_int_mm`` and its GEMV (m <= 8, every launch shape). ``--full`` adds M = 2, 4,
128, 2048, int8 weight-only and symmetric int4.

Each case is timed as a CUDA graph of back-to-back calls (median of CUDA-event times / calls), so
Python and launch gaps are excluded, and the calls cycle through enough weight copies (> 4x the L2)
that weights come from HBM as they would in a model. Reported per case: time, achieved bandwidth
(bytes of weights + scales + activations read, over the time), TFLOP/s, and both against the
ceilings measured in the same run: device-to-device copy bandwidth and a bf16 cuBLAS GEMM. The
"summary" gives per shape and M the best GEMV launch config ("best_config": copy into
``WO_GEMV_CONFIG`` / ``FP8_GEMV_CONFIG`` of ``trtdsl/plugins/cuda/quant_ops.py``) and whether the GEMV
beat the large-M path (for ``GEMV_MAX_M`` / ``FP8_GEMV_MAX_M``).
Writes ``benchmarks/results/quant_gemm_<device>.json`` (and ``$OUT``).
Usage: ``python benchmarks/bench_quant_gemm.py [--quick | --full]`` on a CUDA machine."""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import copy_bandwidth_gbps, cuda_time_ms, device_slug, graph_time_ms, write_result  # noqa: E402
from trtdsl.plugins.cuda import quant_ops as Q  # noqa: E402
from trtdsl.quantization import numerics  # noqa: E402

SHAPES = [(4096, 4096), (4096, 14336), (14336, 4096), (4096, 128256)]  # (k, n)
ROWS = [1, 8, 16]
FULL_ROWS = [1, 2, 4, 8, 16, 128, 2048]
DTYPE = torch.bfloat16
G = 128  # group size of the weight-only formats

def gemm_ceiling_tflops(size: int = 8192) -> float:
    a = torch.randn(size, size, device="cuda", dtype=DTYPE)
    b = torch.randn(size, size, device="cuda", dtype=DTYPE)
    ms = cuda_time_ms(lambda: a @ b, warmup=3, iters=10)["median_ms"]
    return 2 * size**3 / (ms * 1e-3) / 1e12


def copies_for(nbytes: int) -> int:
    """How many weight copies to cycle through so the working set is > 4x the L2."""
    l2 = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 50 << 20)
    return max(1, math.ceil(4 * l2 / nbytes))


def int4_zp_weights(k: int, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """int4 codes over the full range, packed, with random group-G scales and zeros."""
    codes = torch.randint(-8, 8, (n, k), dtype=torch.int8, device="cuda")
    scales = torch.rand(n, numerics.num_groups(k, G), device="cuda") * 0.01
    return numerics.pack_int4(codes), scales, (torch.rand_like(scales) - 0.5) * 0.01


def make_weights(k: int, n: int) -> dict[str, Any]:
    """One random weight in every format (codes over the full range, random scales / zeros)."""
    w = torch.randn(n, k, device="cuda", dtype=DTYPE) * 0.02
    q4, s4, z4 = int4_zp_weights(k, n)
    return {
        "bf16": (w,),
        "int4": (q4, s4),
        "int4_zp": (q4, s4, z4),
        "int8": (torch.randint(-127, 128, (n, k), dtype=torch.int8, device="cuda"),
                 torch.rand(n, numerics.num_groups(k, G), device="cuda") * 0.01),
        "fp8": (w.float().mul(1000).clamp(-448, 448).to(torch.float8_e4m3fn), torch.rand(n, device="cuda") * 1e-3),
        "sq": torch.rand(n, device="cuda") * 1e-3,
    }


def nbytes(*ts: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in ts)


def cases(k: int, n: int, m: int, W: dict[str, Any], x: torch.Tensor, full: bool
          ) -> dict[str, tuple[Callable, str]]:
    """name -> (fn(*weights), key of W): each fn takes one weight copy."""
    xs = torch.tensor([0.02], device="cuda")
    gw = numerics.num_groups(k, G)
    out: dict[str, tuple[Callable, str]] = {
        "bf16_linear": (lambda w: F.linear(x, w), "bf16"),
        "w4a16_zp_g128": (lambda q, s, z: Q.weight_only_gemm(x, q, s, 4, G, k, z), "int4_zp"),
        "w4a16_zp_dequant_cublas": (lambda q, s, z: F.linear(x, Q.dequantize_weight(q, s, 4, G, k, DTYPE, z)),
                                    "int4_zp"),
        "fp8_w8a8": (lambda w, s: Q.fp8_gemm(x, w, s, xs), "fp8"),
        "fp8_w8a8_scaled_mm": (lambda w, s: Q.fp8_gemm(x, w, s, xs, gemv_max_m=0), "fp8"),
        "fp8_dynamic": (lambda w, s: Q.fp8_gemm(x, w, s), "fp8"),
    }
    if m <= Q.GEMV_KERNEL_MAX_M:
        cuda_core = list(range(1, Q.NUM_GEMV_CONFIGS + 1))
        for c in [None] + cuda_core + list(Q.WO_TC_CONFIGS) + list(Q.WO_TC1_CONFIGS):  # 8..: tensor cores
            tag = "table" if c is None else f"cfg{c}"
            out[f"w4a16_zp_gemv_{tag}"] = (
                lambda q, s, z, c=c: Q.weight_only_gemv(x, q, s, 4, G, gw, z, c), "int4_zp")
        xq = Q.quantize_fp8(x, xs)  # the decode graph's form: the norm / SwiGLU / attention wrote the codes
        for c in [None] + cuda_core + list(Q.FP8_TC_CONFIGS):  # 20..: tensor cores
            tag = "table" if c is None else f"cfg{c}"
            out[f"fp8_gemv_{tag}"] = (lambda w, s, c=c: Q.fp8_gemv(xq, w, xs, s, DTYPE, c), "fp8")
        # static activation scale quantized inside the GEMV (one launch, CUDA cores)
        out["fp8_gemv_static_table"] = (lambda w, s: Q.fp8_gemv_static(x, w, xs, s), "fp8")
    out["int8_w8a8_smoothquant"] = (lambda w, s: Q.int8_gemm(x, w, s), "int8_sq")
    out["int8_w8a8_int_mm"] = (lambda w, s: Q.int8_gemm(x, w, s, gemv_max_m=0), "int8_sq")
    if m <= Q.INT8_GEMV_MAX_M:  # the SmoothQuant GEMV on codes quantized beforehand, every launch shape
        x8, x8_scales = Q.quantize_per_token_int8(x)
        for c in [None] + list(range(1, Q.NUM_GEMV_CONFIGS + 1)):
            tag = "table" if c is None else f"cfg{c}"
            out[f"int8_sq_gemv_{tag}"] = (lambda w, s, c=c: Q.int8_gemv(x8, w, x8_scales, s, DTYPE, c), "int8_sq")
    if full:
        out["w4a16_g128"] = (lambda q, s: Q.weight_only_gemm(x, q, s, 4, G, k), "int4")
        out["w8a16_g128"] = (lambda q, s: Q.weight_only_gemm(x, q, s, 8, G, k), "int8")
        if m <= Q.GEMV_KERNEL_MAX_M:
            out["w8a16_g128_gemv"] = (lambda q, s: Q.weight_only_gemv(x, q, s, 8, G, gw), "int8")
    return out


def weights_for(W: dict[str, Any], key: str) -> tuple:
    return (W["int8"][0], W["sq"]) if key == "int8_sq" else W[key]


def bench_shape(k: int, n: int, rows: list[int], copy_gbps: float, gemm_tflops: float, full: bool) -> list[dict]:
    W = make_weights(k, n)
    results = []
    copies_cache: dict[str, list[tuple]] = {}
    for m in rows:
        x = torch.randn(m, k, device="cuda", dtype=DTYPE)
        for name, (fn, key) in cases(k, n, m, W, x, full).items():
            weights = weights_for(W, key)
            wbytes = nbytes(*weights)
            if key not in copies_cache:  # a weight copy per call keeps the L2 from serving repeats
                copies_cache[key] = [weights] + [tuple(t.clone() for t in weights)
                                                 for _ in range(copies_for(wbytes) - 1)]
            reps = copies_cache[key] * max(1, 8 // len(copies_cache[key]))
            ms = graph_time_ms([lambda ws=ws: fn(*ws) for ws in reps])
            read = wbytes + nbytes(x)
            gbps = read / (ms * 1e-3) / 1e9
            tflops = 2 * m * n * k / (ms * 1e-3) / 1e12
            results.append({"k": k, "n": n, "m": m, "kernel": name, "ms": round(ms, 5),
                            "bytes_read": read, "gbps": round(gbps, 1),
                            "frac_of_copy": round(gbps / copy_gbps, 3), "tflops": round(tflops, 2),
                            "frac_of_bf16_gemm": round(tflops / gemm_tflops, 3)})
            print(f"k={k:6d} n={n:6d} m={m:5d} {name:28s} {ms * 1e3:9.1f} us {gbps:7.0f} GB/s "
                  f"{tflops:7.1f} TFLOP/s", flush=True)
        del x
    del W, copies_cache
    torch.cuda.empty_cache()
    for r in results:  # speedup over bf16 F.linear at the same (shape, m)
        base = next(b for b in results if b["m"] == r["m"] and b["kernel"] == "bf16_linear")
        r["speedup_vs_bf16"] = round(base["ms"] / r["ms"], 3)
    return results


def summarize(results: list[dict]) -> dict[str, Any]:
    """Per shape and m: best forced GEMV config per kind, and whether the best GEMV beat the large-M
    path (dequantize + cuBLAS for int4, _scaled_mm for fp8)."""
    out: dict[str, Any] = {}
    for k, n, m in sorted({(r["k"], r["n"], r["m"]) for r in results}):
        rs = {r["kernel"]: r for r in results if (r["k"], r["n"], r["m"]) == (k, n, m)}
        entry: dict[str, Any] = {}
        for kind, large in (("w4a16_zp_gemv", "w4a16_zp_dequant_cublas"), ("fp8_gemv", "fp8_w8a8_scaled_mm"),
                            ("int8_sq_gemv", "int8_w8a8_int_mm")):
            cfgs = {name: r for name, r in rs.items() if name.startswith(kind + "_cfg")}
            if not cfgs:
                continue
            best = min(cfgs, key=lambda name: cfgs[name]["ms"])
            entry[kind] = {"best_config": int(best.rsplit("cfg", 1)[1]), "best_us": round(cfgs[best]["ms"] * 1e3, 2),
                           "table_us": round(rs[f"{kind}_table"]["ms"] * 1e3, 2),
                           "large_m_path_us": round(rs[large]["ms"] * 1e3, 2),
                           "gemv_wins": cfgs[best]["ms"] < rs[large]["ms"],
                           "best_speedup_vs_bf16": cfgs[best]["speedup_vs_bf16"]}
        out[f"{k}x{n}/m{m}"] = entry
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="first shape only, M = 1 and 16")
    ap.add_argument("--full", action="store_true", help="more M values and formats (several minutes)")
    ap.add_argument("--rows", type=int, nargs="*", help="override the M values")
    ap.add_argument("--shapes", default="", help="override the (k, n) shapes, e.g. 4096x6144,14336x4096 "
                    "(the 8B's fused qkv is 4096x6144, its fused gate_up 4096x28672)")
    args = ap.parse_args()
    torch.manual_seed(0)
    t0 = time.perf_counter()
    copy_gbps = copy_bandwidth_gbps()
    gemm_tflops = gemm_ceiling_tflops()
    print(f"ceilings: copy {copy_gbps:.0f} GB/s (read + write), bf16 cuBLAS GEMM {gemm_tflops:.0f} TFLOP/s")
    shapes, rows = (SHAPES[:1], [1, 16]) if args.quick else (SHAPES, FULL_ROWS if args.full else ROWS)
    rows = args.rows or rows
    if args.shapes:
        shapes = [(int(k), int(n)) for k, n in (item.split("x") for item in args.shapes.split(","))]
    results = []
    for k, n in shapes:
        results += bench_shape(k, n, rows, copy_gbps, gemm_tflops, args.full)
    summary = summarize(results)
    for key, entry in summary.items():
        print(key, entry)
    print(f"done in {time.perf_counter() - t0:.0f} s")
    write_result(f"quant_gemm_{device_slug()}", {
        "dtype": "bfloat16", "timing": "CUDA graph of back-to-back calls over > 4x L2 of weight copies",
        "bytes_read": "weights + scales + activations", "copy_gbps": round(copy_gbps, 1),
        "bf16_gemm_tflops": round(gemm_tflops, 1), "gemv_max_m": Q.GEMV_MAX_M, "fp8_gemv_max_m": Q.FP8_GEMV_MAX_M,
        "int8_gemv_max_m": Q.INT8_GEMV_MAX_M,
        "wo_gemv_config": {str(k): v for k, v in Q.WO_GEMV_CONFIG.items()},
        "tc1_config": {str(k): v for k, v in Q.TC1_CONFIG.items()},
        "fp8_gemv_config": {str(k): v for k, v in Q.FP8_GEMV_CONFIG.items()},
        "summary": summary, "results": results})


if __name__ == "__main__":
    main()
