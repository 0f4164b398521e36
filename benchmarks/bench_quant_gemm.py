"""Benchmark the quantized GEMMs (weight-only int4/int8, FP8, SmoothQuant int8) against bf16
``F.linear`` on Llama-3-8B's GEMM shapes at M = 1, 16, 128, 2048 rows.

Each case is timed as a CUDA graph of back-to-back calls (median of CUDA-event times / calls), so
Python and launch gaps are excluded, and the calls cycle through enough weight copies (> 4x the L2)
that weights come from HBM as they would in a model. Reported per case: time, achieved bandwidth
(bytes of weights + scales + activations read, over the time), TFLOP/s, and both against the
ceilings measured in the same run: device-to-device copy bandwidth and a bf16 cuBLAS GEMM.
Writes ``benchmarks/results/quant_gemm_<device>.json`` (and ``$OUT``).
Usage: ``python benchmarks/bench_quant_gemm.py [--quick]`` on a CUDA machine."""

from __future__ import annotations

import argparse
import math
import sys
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
ROWS = [1, 2, 4, 8, 16, 128, 2048]  # 2..8 locate the GEMV / dequantize crossover
DTYPE = torch.bfloat16


def gemm_ceiling_tflops(size: int = 8192) -> float:
    a = torch.randn(size, size, device="cuda", dtype=DTYPE)
    b = torch.randn(size, size, device="cuda", dtype=DTYPE)
    ms = cuda_time_ms(lambda: a @ b, warmup=3, iters=10)["median_ms"]
    return 2 * size**3 / (ms * 1e-3) / 1e12


def copies_for(nbytes: int) -> int:
    """How many weight copies to cycle through so the working set is > 4x the L2."""
    l2 = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 50 << 20)
    return max(1, math.ceil(4 * l2 / nbytes))


def make_weights(k: int, n: int) -> dict[str, Any]:
    """One random weight in every format (codes over the full range, random scales)."""
    w = torch.randn(n, k, device="cuda", dtype=DTYPE) * 0.02
    c4 = torch.randint(-7, 8, (n, k), dtype=torch.int8, device="cuda")
    return {
        "bf16": w,
        "int4": (numerics.pack_int4(c4), torch.rand(n, numerics.num_groups(k, 128), device="cuda") * 0.01),
        "int8": (torch.randint(-127, 128, (n, k), dtype=torch.int8, device="cuda"),
                 torch.rand(n, numerics.num_groups(k, 128), device="cuda") * 0.01),
        "fp8": (w.float().mul(1000).clamp(-448, 448).to(torch.float8_e4m3fn), torch.rand(n, device="cuda") * 1e-3),
        "sq": torch.rand(n, device="cuda") * 1e-3,
    }


def nbytes(*ts: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in ts)


def cases(k: int, n: int, m: int, W: dict[str, Any], x: torch.Tensor) -> dict[str, tuple[Callable, tuple]]:
    """name -> (fn(weights), weights): each fn takes one weight copy."""
    x_scale = torch.tensor([0.02], device="cuda")
    out: dict[str, tuple[Callable, tuple]] = {
        "bf16_linear": (lambda w: F.linear(x, w), (W["bf16"],)),
        "w4a16_g128": (lambda q, s: Q.weight_only_gemm(x, q, s, 4, 128, k), W["int4"]),
        "w8a16_g128": (lambda q, s: Q.weight_only_gemm(x, q, s, 8, 128, k), W["int8"]),
        "fp8_w8a8": (lambda w, s: Q.fp8_gemm(x, w, s, x_scale), W["fp8"]),
        "int8_w8a8_smoothquant": (lambda w, s: Q.int8_gemm(x, w, s), (W["int8"][0], W["sq"])),
    }
    if m <= Q.GEMV_KERNEL_MAX_M:  # both weight-only paths forced, to place the GEMV_MAX_M threshold
        out["w4a16_g128_gemv"] = (lambda q, s: Q.weight_only_gemv(x, q, s, 4, 128, k // 128), W["int4"])
        out["w8a16_g128_gemv"] = (lambda q, s: Q.weight_only_gemv(x, q, s, 8, 128, k // 128), W["int8"])
        out["w4a16_g128_dequant_cublas"] = (
            lambda q, s: F.linear(x, Q.dequantize_weight(q, s, 4, 128, k, DTYPE)), W["int4"])
    if m == 1:
        out["fp8_w8a8_pad16"] = (lambda w, s: Q.fp8_gemm(x, w, s, x_scale, pad_rows_to=16), W["fp8"])
    return out


def bench_shape(k: int, n: int, rows: list[int], copy_gbps: float, gemm_tflops: float) -> list[dict]:
    W = make_weights(k, n)
    results = []
    copies_cache: dict[str, list[tuple]] = {}
    for m in rows:
        x = torch.randn(m, k, device="cuda", dtype=DTYPE)
        for name, (fn, weights) in cases(k, n, m, W, x).items():
            key = name.replace("_dequant_cublas", "").replace("_pad16", "").replace("_gemv", "")
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="first shape only, M = 1 and 2048")
    ap.add_argument("--rows", type=int, nargs="*", help="override the M values")
    args = ap.parse_args()
    torch.manual_seed(0)
    copy_gbps = copy_bandwidth_gbps()
    gemm_tflops = gemm_ceiling_tflops()
    print(f"ceilings: copy {copy_gbps:.0f} GB/s (read + write), bf16 cuBLAS GEMM {gemm_tflops:.0f} TFLOP/s")
    shapes, rows = (SHAPES[:1], [1, 2048]) if args.quick else (SHAPES, args.rows or ROWS)
    results = []
    for k, n in shapes:
        results += bench_shape(k, n, rows, copy_gbps, gemm_tflops)
    write_result(f"quant_gemm_{device_slug()}", {
        "dtype": "bfloat16", "timing": "CUDA graph of back-to-back calls over > 4x L2 of weight copies",
        "bytes_read": "weights + scales + activations", "copy_gbps": round(copy_gbps, 1),
        "bf16_gemm_tflops": round(gemm_tflops, 1), "results": results})


if __name__ == "__main__":
    main()
