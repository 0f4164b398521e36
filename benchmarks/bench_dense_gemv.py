"""Benchmark the dense decode GEMV (``trtdsl.plugins.cuda.dense_ops.dense_gemv``) against cuBLAS
(``F.linear``, bf16) on Llama-3-8B's decode GEMM shapes at M = 1..8 rows.

Each case is a CUDA graph of >= 16 back-to-back calls replayed 20 times (median of CUDA-event times,
divided by the calls), so Python and launch gaps are excluded; the calls cycle through enough weight
copies (> 4x the 50 MB L2) that weights come from HBM as in a model. Bandwidth counts the bytes that
must move (weights + x read, y written) against the device-to-device copy bandwidth measured in the
same run (``benchmarks/common.py``). Also sweeps the forced launch shapes (configs 1..5) at M = 1, 2,
4, 8 to place the automatic choice, and fp16 at M = 1. Writes
``benchmarks/results/dense_gemv_<device>.json`` (and ``$OUT``); the crossover per shape is what
``gemv_preferred`` encodes. Usage: ``python benchmarks/bench_dense_gemv.py [--quick]`` on a CUDA machine."""

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
from common import copy_bandwidth_gbps, device_slug, graph_time_ms, write_result  # noqa: E402
from trtdsl.plugins.cuda.dense_ops import NUM_CONFIGS, dense_gemv  # noqa: E402

# (k, n): o_proj, qkv (GQA 32/8), gate_up fused, down, lm_head of an 8B Llama.
SHAPES = [(4096, 4096), (4096, 6144), (4096, 28672), (14336, 4096), (4096, 128256)]
ROWS = list(range(1, 9))
SWEEP_ROWS = (1, 2, 4, 8)
MIN_CALLS = 16


def graph_time_us(calls: list[Callable[[], Any]]) -> float:
    """Median microseconds per call of ``calls`` replayed back to back in one CUDA graph."""
    return graph_time_ms(calls) * 1e3


def weight_copies(k: int, n: int, dtype: torch.dtype) -> list[torch.Tensor]:
    """Enough distinct random weights that their total is > 4x the L2 (each call misses the cache)."""
    l2 = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 50 << 20)
    count = max(1, math.ceil(4 * l2 / (n * k * 2)))
    return [torch.randn(n, k, device="cuda", dtype=dtype) * k**-0.5 for _ in range(count)]


def measure(k: int, n: int, m: int, ws: list[torch.Tensor], kernel: str, copy_gbps: float) -> dict:
    x = torch.randn(m, k, device="cuda", dtype=ws[0].dtype)
    out = torch.empty(m, n, device="cuda", dtype=ws[0].dtype)
    if kernel == "cublas":
        fns = [lambda w=w: F.linear(x, w) for w in ws]  # what a model layer calls
    else:
        cfg = 0 if kernel == "dense_gemv" else int(kernel.rsplit("cfg", 1)[1])
        fns = [lambda w=w: dense_gemv(x, w, out=out, config=cfg) for w in ws]
    calls = fns * math.ceil(MIN_CALLS / len(fns))
    us = graph_time_us(calls)
    moved = (n * k + m * k + m * n) * ws[0].element_size()
    gbps = moved / (us * 1e-6) / 1e9
    return {"k": k, "n": n, "m": m, "dtype": str(ws[0].dtype).replace("torch.", ""), "kernel": kernel,
            "us": round(us, 2), "bytes": moved, "gbps": round(gbps, 1), "frac_of_copy": round(gbps / copy_gbps, 3)}


def check_once(k: int, n: int, w: torch.Tensor) -> float:
    """Relative error of one call against fp32 F.linear (the benchmark must time a correct kernel)."""
    x = torch.randn(4, k, device="cuda", dtype=w.dtype)
    ref = F.linear(x.float(), w.float())
    return ((dense_gemv(x, w).double() - ref.double()).norm() / ref.double().norm()).item()


def bench_shape(k: int, n: int, rows: list[int], copy_gbps: float, sweep: bool) -> list[dict]:
    ws = weight_copies(k, n, torch.bfloat16)
    err = check_once(k, n, ws[0])
    assert err < 1e-2, f"dense_gemv wrong on ({k}, {n}): rel err {err}"
    results = []
    for m in rows:
        kernels = ["cublas", "dense_gemv"]
        if sweep and m in SWEEP_ROWS:
            kernels += [f"dense_gemv_cfg{c}" for c in range(1, NUM_CONFIGS + 1)]
        for kernel in kernels:
            r = measure(k, n, m, ws, kernel, copy_gbps)
            results.append(r)
            print(f"k={k:6d} n={n:6d} m={m} {kernel:17s} {r['us']:9.2f} us {r['gbps']:7.0f} GB/s "
                  f"{100 * r['frac_of_copy']:5.1f}% of copy", flush=True)
    del ws
    ws16 = weight_copies(k, n, torch.float16)
    for kernel in ("cublas", "dense_gemv"):
        results.append(measure(k, n, 1, ws16, kernel, copy_gbps))
    del ws16
    torch.cuda.empty_cache()
    for r in results:
        base = next(b for b in results if (b["m"], b["dtype"], b["kernel"]) == (r["m"], r["dtype"], "cublas"))
        r["speedup_vs_cublas"] = round(base["us"] / r["us"], 3)
    return results


def summarize(results: list[dict]) -> dict[str, Any]:
    """Per shape: rows where the automatic GEMV beat cuBLAS, and the best forced config per swept m."""
    out: dict[str, Any] = {}
    for k, n in sorted({(r["k"], r["n"]) for r in results}):
        rs = [r for r in results if (r["k"], r["n"], r["dtype"]) == (k, n, "bfloat16")]
        wins = [r["m"] for r in rs if r["kernel"] == "dense_gemv" and r["speedup_vs_cublas"] > 1.0]
        best = {}
        for m in SWEEP_ROWS:
            cfgs = [r for r in rs if r["m"] == m and "cfg" in r["kernel"]]
            if cfgs:
                b = min(cfgs, key=lambda r: r["us"])
                best[str(m)] = {"kernel": b["kernel"], "us": b["us"]}
        out[f"{k}x{n}"] = {"gemv_faster_at_m": wins, "best_config": best}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="first shape only, M = 1 and 8, no sweep")
    args = ap.parse_args()
    torch.manual_seed(0)
    copy_gbps = copy_bandwidth_gbps()
    print(f"copy bandwidth {copy_gbps:.0f} GB/s (read + write)")
    shapes, rows = (SHAPES[:1], [1, 8]) if args.quick else (SHAPES, ROWS)
    results: list[dict] = []
    for k, n in shapes:
        results += bench_shape(k, n, rows, copy_gbps, sweep=not args.quick)
    summary = summarize(results)
    print("\nshape (k x n)    m  cublas us  gemv us  gemv %copy  speedup")
    for r in results:
        if r["kernel"] == "dense_gemv" and r["dtype"] == "bfloat16":
            c = next(b for b in results if (b["k"], b["n"], b["m"], b["dtype"], b["kernel"])
                     == (r["k"], r["n"], r["m"], r["dtype"], "cublas"))
            print(f"{r['k']:6d}x{r['n']:<7d} {r['m']}  {c['us']:9.2f} {r['us']:8.2f}  {100 * r['frac_of_copy']:9.1f}"
                  f"  {r['speedup_vs_cublas']:6.3f}")
    for shape, s in summary.items():
        print(shape, s)
    write_result(f"dense_gemv_{device_slug()}", {
        "timing": f"CUDA graph of >= {MIN_CALLS} back-to-back calls over > 4x L2 of weight copies, median of "
                  "20 replays (CUDA events) / calls",
        "bytes": "weight + x read, y written", "cublas": "F.linear(x, w) (no bias)",
        "copy_gbps": round(copy_gbps, 1), "summary": summary, "results": results})


if __name__ == "__main__":
    main()
