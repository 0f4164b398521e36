"""The int4 decode GEMV over the pre-shuffled tile-16 layout (``wo_gemv_packed.cuh``) against the kernels
that read the canonical layout, in the same run: m = 1 (and 4), the 8B's GEMM shapes and LM head, groups
128 and 64 with zeros (int4_awq's format), plus gate_up with SwiGLU fused into the packed GEMV against
the GEMV followed by the SwiGLU kernel; and the tile-16 GEMV with float16 scales and zeros (``half_*``: the
same values, ``QuantConfig.half_scales``, so every variant computes the same outputs).

Weights are cold (copies rotating past the 50 MB L2), each variant a CUDA graph of 48 calls, the median of
7 replays (``common.graph_time_ms``), two rounds (the faster kept). Outputs are checked against the
canonical kernel's (same codes, another fp32 summation order) before timing.

    python benchmarks/bench_int4_packed.py      # -> benchmarks/results/int4_packed_<device>.json
    python benchmarks/bench_int4_packed.py --quick   # m = 1, the tables' configs: int4_packed_quick_<device>.json
    python benchmarks/bench_int4_packed.py --half   # m = 1, g64, float16 tables, all configs: int4_packed_half_*.json
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import copy_bandwidth_gbps, device_slug, graph_time_ms, write_result  # noqa: E402
from trtdsl.plugins.cuda import ops  # noqa: E402
from trtdsl.plugins.cuda.quant_ops import (WO_PACKED_CONFIGS, WO_TC1_CONFIGS, gemv_config,  # noqa: E402
                                           packed_config, weight_only_gemv, weight_only_gemv_packed)
from trtdsl.quantization.int4_tiles import pack_int4_tiles  # noqa: E402
from trtdsl.quantization.numerics import half_grid  # noqa: E402

SHAPES = [("qkv", 4096, 6144), ("o", 4096, 4096), ("gate_up", 4096, 28672), ("down", 14336, 4096),
          ("lm_head", 4096, 128256)]


def _weights(n: int, k: int, group: int, swiglu: bool) -> dict:
    groups = k // group
    q = torch.randint(-128, 128, (n, k // 2), dtype=torch.int8, device="cuda")
    s, z = half_grid(torch.rand(n, groups, device="cuda") * 0.01 + 0.005, torch.randn(n, groups, device="cuda") * 0.05)
    qp, sz = pack_int4_tiles(q, s, z, group, swiglu=swiglu)
    return {"q": q, "s": s, "z": z, "qp": qp, "sz": sz, "sz16": sz.to(torch.float16)}


def _time(calls: list) -> float:
    return min(round(graph_time_ms(calls, iters=7) * 1000, 2) for _ in range(2))


def bench_shape(name: str, k: int, n: int, group: int, m: int, swiglu: bool, quick: bool = False,
                half: bool = False) -> dict:
    t0 = time.perf_counter()
    nbytes = n * k // 2 + 2 * n * (k // group) * 4
    copies = max(2, int(200e6 // nbytes) + 1)
    ws = [_weights(n, k, group, swiglu) for _ in range(copies)]
    torch.cuda.synchronize()
    print(f"{name}: {copies} weight copies in {time.perf_counter() - t0:.1f} s", flush=True)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    groups = k // group
    table = gemv_config("wo", m, n, 4, k, group)
    inter = n // 2

    def canonical(w: dict, config: int) -> torch.Tensor:
        y = weight_only_gemv(x, w["q"], w["s"], 4, group, groups, w["z"], config=config)
        return ops.swiglu(y) if swiglu else y

    def packed(w: dict, config: int) -> torch.Tensor:
        return weight_only_gemv_packed(x, w["qp"], w["sz"], inter if swiglu else n, group, swiglu, config)

    def packed_half(w: dict, config: int) -> torch.Tensor:
        return weight_only_gemv_packed(x, w["qp"], w["sz16"], inter if swiglu else n, group, swiglu, config)

    ref = canonical(ws[0], table).float()
    res: dict = {"k": k, "n": n, "group": group, "m": m, "swiglu": swiglu, "table_config": table,
                 "bytes": nbytes, "us": {}, "max_rel_err": {}}
    variants = {f"canonical_{table}": (canonical, table)}
    if quick or half:  # the table's config with both scale tables (and every config with float16 tables)
        mine = packed_config(m, n, k, group)
        variants.update({f"packed_{mine}": (packed, mine), f"half_{mine}": (packed_half, mine)})
        if half:
            variants.update({f"half_{c}": (packed_half, c) for c in WO_PACKED_CONFIGS})
    else:
        if group == 128 and m <= 8:
            variants.update({f"canonical_{c}": (canonical, c) for c in WO_TC1_CONFIGS})
        variants.update({f"packed_{c}": (packed, c) for c in WO_PACKED_CONFIGS})
        variants.update({f"half_{c}": (packed_half, c) for c in WO_PACKED_CONFIGS})
    for label, (fn, config) in variants.items():
        try:
            y = fn(ws[0], config).float()
        except Exception as exc:  # a shape a config does not take
            res["us"][label] = str(exc).splitlines()[0][:120]
            continue
        res["max_rel_err"][label] = float((y - ref).abs().max() / ref.abs().max().clamp_min(1e-6))
        res["us"][label] = _time([lambda w=ws[i % copies], fn=fn, c=config: fn(w, c) for i in range(48)])
    timed = {v: t for v, t in res["us"].items() if isinstance(t, float)}
    best_c = min((t for v, t in timed.items() if v.startswith("canonical")), default=None)
    best_p = min((t for v, t in timed.items() if v.startswith("packed")), default=None)
    best_h = min((t for v, t in timed.items() if v.startswith("half")), default=None)
    res["best_canonical_us"], res["best_packed_us"], res["best_half_us"] = best_c, best_p, best_h
    if best_c and best_p:
        res["packed_speedup"] = round(best_c / best_p, 3)
        res["packed_gb_per_s"] = round(nbytes / best_p / 1e3, 1)
    print(name, group, m, "swiglu" if swiglu else "", res["us"], res["max_rel_err"],
          f"({time.perf_counter() - t0:.1f} s)", flush=True)
    del ws
    torch.cuda.empty_cache()
    return res


def main() -> None:
    torch.manual_seed(0)
    quick = "--quick" in sys.argv  # the tables' configs only, m = 1
    half = "--half" in sys.argv  # m = 1, group 64 (int4_awq's), every config with float16 tables
    results = []
    for group in (64,) if half else (128, 64):
        for name, k, n in SHAPES:
            results.append({"shape": name, **bench_shape(name, k, n, group, 1, False, quick, half)})
        results.append({"shape": "gate_up+swiglu", **bench_shape("gate_up+swiglu", 4096, 28672, group, 1, True,
                                                                  quick, half)})
    for name, k, n in [] if quick or half else SHAPES[:4]:
        results.append({"shape": name, **bench_shape(name, k, n, 128, 4, False)})
    protocol = "cold weights, CUDA graph of 48 calls, median of 7 replays, best of 2 rounds; bf16 activations"
    suffix = "_quick" if quick else "_half" if half else ""
    extra = {"packed_configs": half_spec(results)} if half else {}
    write_result(f"int4_packed{suffix}_{device_slug()}", {"copy_bandwidth_gbps": copy_bandwidth_gbps(),
                                                          "protocol": protocol, "results": results, **extra})


def half_spec(results: list[dict]) -> str:
    """The fastest float16-table config of o, qkv, gate_up + SwiGLU and down at m = 1, group 64, as
    profile_decode's ``--packed-configs`` O/Q/W/L (PACKED_CONFIG's keys of those shapes)."""
    by_shape = {r["shape"]: r for r in results if r["m"] == 1 and r["group"] == 64}
    picks = []
    for shape in ("o", "qkv", "gate_up+swiglu", "down"):
        timed = [(t, int(v.split("_")[1])) for v, t in by_shape[shape]["us"].items()
                 if v.startswith("half_") and isinstance(t, float)]
        picks.append(str(min(timed)[1]))
    spec = "/".join(picks)
    print("--packed-configs", spec, flush=True)
    return spec


if __name__ == "__main__":
    main()
