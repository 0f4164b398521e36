"""Where one decode step's GPU time goes, kernel by kernel, for bf16 and quantized engines, with
programmatic dependent launch (plugins_cuda/include/trtdsl/pdl.cuh) on and off in the same process.

For each mode it builds bench_decode's engine (Llama-3-8B shape, random weights, the same passes and
quantization), and for PDL off, then on (graphs recaptured after each switch):
* the decode step time (CUDA-graph replay + GPU argmax) at each batch, as bench_decode measures it;
* at batch 1, the kernels of a few graph replays under the torch profiler: per kernel name (count per
  step, us per step) and per position of the repeating per-layer kernel sequence (median us over the
  layers, the idle gap before it, and for the GEMVs the weight bytes of that layer's GEMM -> GB/s).
Writes benchmarks/results/decode_profile_<device>.json (and $OUT). From the repository root:
``PYTHONPATH=. python benchmarks/profile_decode.py --model 8b --modes bf16,int4_wo,fp8``.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.bench_decode import OurEngine, our_model  # noqa: E402
from benchmarks.common import copy_bandwidth_gbps, cuda_time_ms, device_slug, write_result  # noqa: E402

# Per-layer GEMMs in execution order, by the module names their constants carry.
GEMMS = ("attention.qkv", "attention.dense", "feed_forward.gate_up", "feed_forward.down")


def short(name: str) -> str:
    """Kernel name without the return type and namespaces, template arguments kept (they are the
    config), cut to 100 characters."""
    name = name.replace("void ", "", 1).replace("trtdsl::", "").replace("(anonymous namespace)::", "")
    return name[:100]


def gemm_bytes(engine: OurEngine, layer: int = 0) -> dict[str, int]:
    """Bytes of each GEMM's constants (codes, scales, zeros) in one layer: what its GEMV streams."""
    out = {g: 0 for g in GEMMS}
    for name, value in engine.executor.constants.items():
        if not name.startswith(f"layers.{layer}."):
            continue
        for g in GEMMS:
            if name.startswith(f"layers.{layer}.{g}."):
                out[g] += value.numel() * value.element_size()
    return out


def step_kernels(engine: OurEngine, prompt: int, steps: int = 5,
                 batch: int = 1) -> list[list[tuple[str, float, float]]]:
    """(name, start us, end us) of each kernel of `steps` graph-replayed decode steps of `batch` sequences."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    feed = engine.feed([1] * batch, [prompt] * batch)
    hints = {"max_q_len": 1, "max_kv_len": prompt + 40}
    run = lambda: engine.graphs.run(("decode", batch), feed, hints)  # noqa: E731
    run()
    torch.cuda.synchronize()
    per_step: list[list[tuple[str, float, float]]] = []
    for _ in range(steps):  # one profile per step: the kernels of a step are exactly one replay's
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            run()
            torch.cuda.synchronize()
        evs = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
        if not evs:  # a profiler that does not see graph kernels: the eager step runs the same ones
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                engine.executor.run(feed, hints=hints)
                torch.cuda.synchronize()
            evs = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
            print("profiler saw no graph kernels: eager step profiled", flush=True)
        evs.sort(key=lambda e: e.time_range.start)
        per_step.append([(e.name, e.time_range.start, e.time_range.end) for e in evs
                         if "memcpy" not in e.name.lower() and "memset" not in e.name.lower()])
    return per_step


def find_period(names: list[str], reps: int) -> tuple[int, int]:
    """(offset, period) of the first kernel sequence repeated `reps` times."""
    for period in range(2, len(names) // reps + 1):
        for off in range(0, len(names) - reps * period + 1):
            if all(names[off + i] == names[off + i + period] for i in range((reps - 1) * period)):
                return off, period
    raise RuntimeError("no repeating per-layer kernel sequence found")


def layer_table(kernels: list[tuple[str, float, float]], layers: int, bytes_of: dict[str, int]) -> dict[str, Any]:
    """The repeating sequence: layer 0's norm is not the fused residual one, so it starts at layer 0's
    qkv GEMM (its quantizer for fp8) and ends with the next layer's residual-add RMSNorm (the last
    layer's is the final norm: layers - 1 full repeats); its GEMVs are the layer's GEMMS in order."""
    names = [k[0] for k in kernels]
    layers -= 1
    off, period = find_period(names, layers)
    gemv = [p for p in range(period) if "gemv" in names[off + p].lower()]
    rows = []
    for p in range(period):
        durs = [kernels[off + layer * period + p][2] - kernels[off + layer * period + p][1] for layer in range(layers)]
        gaps = [kernels[off + layer * period + p][1] - kernels[off + layer * period + p - 1][2]
                for layer in range(layers) if off + layer * period + p > 0]
        row: dict[str, Any] = {"kernel": short(names[off + p]), "us": statistics.median(durs),
                               "gap_before_us": statistics.median(gaps) if gaps else None}
        if p in gemv and len(gemv) == len(GEMMS):
            gemm = GEMMS[gemv.index(p)]
            row["gemm"], row["bytes"] = gemm, bytes_of[gemm]
            row["gb_per_s"] = bytes_of[gemm] / (row["us"] * 1e-6) / 1e9
        rows.append(row)
    mid = off + layers // 2 * period
    return {"kernels_per_layer": period,
            "layer_us_median_span": kernels[mid + period][1] - kernels[mid][1],  # start to next start
            "sequence": rows}


def by_name(steps: list[list[tuple[str, float, float]]]) -> list[dict[str, Any]]:
    agg: dict[str, list[float]] = {}
    for kernels in steps:
        for name, t0, t1 in kernels:
            agg.setdefault(short(name), []).append(t1 - t0)
    rows = [{"kernel": k, "count_per_step": len(v) / len(steps), "us_per_step": sum(v) / len(steps)}
            for k, v in agg.items()]
    return sorted(rows, key=lambda r: -r["us_per_step"])


WoConfigs = tuple[int | None, int | None, int | None]  # m = 1 int4 configs: narrow n, wide n, long k
Fp8Configs = tuple[int | None, int | None]  # m = 1 fp8 configs: narrow n, wide n
PackedConfigs = tuple[int | None, int | None, int | None, int | None]  # m = 1 tile-16 g64: o, qkv, wide n, long k
# (quant_ops table, key, config; None = the table's own) or (quant_ops, attribute name, value)
Setting = tuple[Any, Any, int | None]


# mode prefix -> the quant_ops limit up to which that mode's GEMMs run a GEMV (else cuBLASLt)
GEMV_MAX_M_ATTRS = {"fp8": "FP8_GEMV_MAX_M", "int8_sq": "INT8_GEMV_MAX_M"}


def config_variants(mode: str, wo_configs: list[WoConfigs], fp8_configs: list[Fp8Configs],
                    gemv_max_m: dict[str, int] | None = None, fused_splits: list[int] | None = None,
                    packed_configs: list[PackedConfigs] | None = None,
                    packed_rows: str = "one") -> list[tuple[str, bool, list[Setting]]]:
    """(name, PDL on, settings) per timed variant: PDL off / on with the tables as they are, then (PDL on)
    each requested m = 1 config set of the mode's GEMV kind (int4 g64: of the tile-16 GEMV,
    ``packed_configs``), the mode with another GEMV row limit (``gemv_max_m``: mode prefix -> rows, see
    GEMV_MAX_M_ATTRS), and the fused decode attention with a fixed cluster size (``fused_splits``;
    ops.FUSED_DECODE_SPLITS)."""
    from trtdsl.plugins.cuda import ops, quant_ops
    variants: list[tuple[str, bool, list[Setting]]] = [("pdl_off", False, []), ("pdl_on", True, [])]

    def tag(cfgs: tuple) -> str:
        return "_".join("-" if c is None else str(c) for c in cfgs)

    if mode.startswith("int4"):  # the 8B's int4 g128 GEMVs: TC1_CONFIG's m = 1 keys
        # narrow n (o, qkv), wide n (gate_up, LM head), long k (down)
        groups = (((1, 0, False), (1, 1, False)), ((1, 2, False),), ((1, 0, True), (1, 1, True)))
        variants += [("pdl_on_cfg" + tag(cfgs), True, [(quant_ops.TC1_CONFIG, key, cfg)
                                                       for group, cfg in zip(groups, cfgs) for key in group])
                     for cfgs in wo_configs]
    if mode.startswith("fp8"):  # FP8_GEMV_CONFIG's m = 1 keys: narrow n (qkv, o, down), wide n (gate_up)
        variants += [("pdl_on_fp8cfg" + tag(cfgs), True, [(quant_ops.FP8_GEMV_CONFIG, (1, wide), cfg)
                                                          for wide, cfg in zip((False, True), cfgs)])
                     for cfgs in fp8_configs]
    if mode.startswith("int4") and ":g64" in mode:  # the group-64 keys of quant_ops.packed_config's table
        one_row = {"one": (True,), "many": (False,), "both": (True, False)}[packed_rows]  # m == 1 and / or m > 1
        shapes = ((0, False), (1, False), (2, False), (0, True))  # o, qkv, wide n, long k: (n class, k >= LONG_K)
        variants += [("pdl_on_packed" + tag(cfgs), True, [(quant_ops.PACKED_CONFIG, (one, cls, long_k, True), cfg)
                                                          for (cls, long_k), cfg in zip(shapes, cfgs)
                                                          for one in one_row])
                     for cfgs in packed_configs or []]
    for prefix, rows in (gemv_max_m or {}).items():
        if mode.startswith(prefix):
            variants.append((f"pdl_on_{prefix}_gemv_max_m{rows}", True, [(quant_ops, GEMV_MAX_M_ATTRS[prefix], rows)]))
    variants += [(f"pdl_on_fused_splits{n}", True, [(ops, "FUSED_DECODE_SPLITS", n)]) for n in fused_splits or []]
    return variants


def profile_mode(model: Any, mode: str, batches: list[int], prompt: int, steps: int,
                 wo_configs: list[WoConfigs], fp8_configs: list[Fp8Configs],
                 gemv_max_m: dict[str, int] | None = None, fused_splits: list[int] | None = None,
                 packed_configs: list[PackedConfigs] | None = None, packed_rows: str = "one",
                 profile_batch: int = 1) -> dict[str, Any]:
    from trtdsl.plugins.cuda.quant_ops import set_programmatic_launch
    from trtdsl.runtime.cuda_graphs import CudaGraphCache
    t0 = time.perf_counter()
    engine = OurEngine(model, max(batches), prompt + steps + 64, max_tokens=max(batches) * prompt,
                       quant=None if mode == "bf16" else mode)
    print(f"[{mode}] engine built in {time.perf_counter() - t0:.0f} s", flush=True)
    layers = model.config.num_layers
    bytes_of = gemm_bytes(engine)
    res: dict[str, Any] = {"weight_bytes": engine.weight_bytes, "layer_gemm_bytes": bytes_of}
    for b in batches:
        engine.prefill(b, prompt)
    variants = config_variants(mode, wo_configs, fp8_configs, gemv_max_m, fused_splits, packed_configs, packed_rows)
    defaults = {(id(table), key): _get_entry(table, key) for _, _, settings in variants for table, key, _ in settings}
    for key, pdl, settings in variants:
        set_programmatic_launch(pdl)
        for table, tkey, cfg in settings:
            _set_entry(table, tkey, cfg if cfg is not None else defaults[(id(table), tkey)])
        engine.graphs = CudaGraphCache(engine.executor)  # recapture: launches record the attribute
        entry: dict[str, Any] = {"decode_ms": {}, "graph_replay_ms": {}}
        for b in batches:
            entry["decode_ms"][str(b)] = engine.decode_step_time(b, prompt, steps)["median_ms"]
            feed = engine.feed([1] * b, [prompt] * b)
            hints = {"max_q_len": 1, "max_kv_len": prompt + steps + 8}
            entry["graph_replay_ms"][str(b)] = cuda_time_ms(
                lambda: engine.graphs.run(("decode", b), feed, hints), warmup=3, iters=steps)["median_ms"]
        kernels = step_kernels(engine, prompt, batch=profile_batch)
        pb = f"b{profile_batch}_"  # the profiled batch's keys: b1_... by default
        busy = [sum(k[2] - k[1] for k in ks) for ks in kernels]
        entry[pb + "kernels_per_step"] = len(kernels[0])
        entry[pb + "kernel_busy_us"] = statistics.median(busy)
        entry[pb + "first_to_last_us"] = statistics.median(ks[-1][2] - ks[0][1] for ks in kernels)
        entry["by_name"] = by_name(kernels)[:30]
        try:
            entry["layer"] = layer_table(kernels[-1], layers, bytes_of)
        except (RuntimeError, ValueError, IndexError) as exc:  # report, keep the rest
            entry["layer"] = {"error": str(exc)}
        res[key] = entry
        lay = entry["layer"]
        print(f"[{mode}] {key}: decode " + ", ".join(f"b={b} {t:.3f} ms (graph {entry['graph_replay_ms'][b]:.3f})"
                                                     for b, t in entry["decode_ms"].items())
              + f"; b={profile_batch} {entry[pb + 'kernels_per_step']} kernels, busy "
              f"{entry[pb + 'kernel_busy_us']:.0f} us of {entry[pb + 'first_to_last_us']:.0f} us; layer "
              f"{lay.get('layer_us_median_span', 0):.1f} us in {lay.get('kernels_per_layer')} kernels", flush=True)
        for row in lay.get("sequence", []):
            extra = f" {row['gemm']} {row['gb_per_s']:.0f} GB/s" if "gemm" in row else ""
            gap = row["gap_before_us"]
            print(f"    {row['us']:7.2f} us (gap {gap if gap is None else round(gap, 2)}) {row['kernel'][:70]}{extra}",
                  flush=True)
        for table, tkey, _ in settings:
            _set_entry(table, tkey, defaults[(id(table), tkey)])
    set_programmatic_launch(True)
    del engine
    gc.collect()
    torch.cuda.empty_cache()
    return res


def _get_entry(table: Any, key: Any) -> int | None:
    return table.get(key) if isinstance(table, dict) else getattr(table, key)


def _set_entry(table: Any, key: Any, config: int | None) -> None:
    if not isinstance(table, dict):  # a module attribute
        setattr(table, key, config)
    elif config is None:
        table.pop(key, None)
    else:
        table[key] = config


def parse_configs(spec: str, parts_max: int, flag: str) -> list[tuple]:
    """'1,12/13,16/19/18' -> [(1, None, None), (12, 13, None), (16, 19, 18)] (parts_max 3): m = 1 configs
    for narrow n, then optionally wide n and (int4) long k (k >= quant_ops.LONG_K); left out = the table's."""
    out: list[tuple] = []
    for item in filter(None, spec.split(",")):
        parts = [int(p) if p else None for p in item.split("/")]
        if not 1 <= len(parts) <= parts_max:
            raise SystemExit(f"{flag}: expected at most {parts_max} configs joined by '/', got {item!r}")
        out.append(tuple(parts + [None] * (parts_max - len(parts))))
    return out


def parse_gemv_max_m(spec: str) -> dict[str, int]:
    """'fp8=4,int8_sq=0' -> {'fp8': 4, 'int8_sq': 0}."""
    out: dict[str, int] = {}
    for item in filter(None, spec.split(",")):
        mode, _, rows = item.partition("=")
        if mode not in GEMV_MAX_M_ATTRS or not rows.isdigit():
            raise SystemExit(f"--gemv-max-m: expected MODE=ROWS with MODE in {sorted(GEMV_MAX_M_ATTRS)}, got {item!r}")
        out[mode] = int(rows)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="8b")
    ap.add_argument("--modes", default="bf16,int4_wo,fp8")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--wo-configs", default="",
                    help="int4 g128: also time these m = 1 GEMV configs (PDL on; quant_ops.TC1_CONFIG): N "
                         "sets narrow n (qkv, o), N/W also wide n (gate_up, LM head), N/W/L also k >= LONG_K "
                         "(down); empty parts keep the table's, e.g. 1/10/1,16//18")
    ap.add_argument("--fp8-configs", default="",
                    help="fp8: also time these m = 1 GEMV configs (PDL on; quant_ops.FP8_GEMV_CONFIG): N sets "
                         "narrow n (qkv, o, down), N/W also wide n (gate_up, LM head), e.g. 1/1,20/21")
    ap.add_argument("--gemv-max-m", default="",
                    help="also time modes with another GEMV row limit (PDL on): MODE=ROWS,... for MODE fp8 "
                         "(FP8_GEMV_MAX_M) or int8_sq (INT8_GEMV_MAX_M), e.g. fp8=4,int8_sq=0 (0: cuBLASLt always)")
    ap.add_argument("--fused-splits", default="",
                    help="also time the fused decode attention with these fixed cluster sizes (PDL on; "
                         "ops.FUSED_DECODE_SPLITS), e.g. 1,4 (1 = one block per sequence and kv head)")
    ap.add_argument("--packed-configs", default="",
                    help="int4 g64: also time these m = 1 tile-16 GEMV configs (PDL on; quant_ops.PACKED_CONFIG): "
                         "O/Q/W/L for o (n <= 4096), qkv, wide n (gate_up, LM head), long k (down); empty parts "
                         "keep the table's, e.g. 6/0/4/6")
    ap.add_argument("--packed-rows", choices=("one", "many", "both"), default="one",
                    help="the --packed-configs sets apply to PACKED_CONFIG's one-row keys (m = 1), its 2..8-row "
                         "keys, or both")
    ap.add_argument("--profile-batch", type=int, default=1,
                    help="batch whose graph replays the kernel timelines and GPU-time ratios come from (keys b<B>_...)")
    ap.add_argument("--name", default=None, help="results file name (default decode_profile_<device>)")
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    copy = copy_bandwidth_gbps()
    t0 = time.perf_counter()
    model = our_model(args.model)
    print(f"copy {copy:.0f} GB/s; model {args.model} on the GPU in {time.perf_counter() - t0:.0f} s", flush=True)
    results: dict[str, Any] = {"model": args.model, "copy_bandwidth_gbps": copy, "prompt_len": args.prompt,
                               "modes": {}}
    name = args.name or f"decode_profile_{device_slug()}"
    for mode in args.modes.split(","):
        results["modes"][mode] = profile_mode(model, mode, batches, args.prompt, args.steps,
                                               parse_configs(args.wo_configs, 3, "--wo-configs"),
                                               parse_configs(args.fp8_configs, 2, "--fp8-configs"),
                                               parse_gemv_max_m(args.gemv_max_m),
                                               [int(n) for n in args.fused_splits.split(",") if n],
                                               parse_configs(args.packed_configs, 4, "--packed-configs"),
                                               args.packed_rows, args.profile_batch)
        write_result(name, results)  # after each mode, so a timeout keeps what finished
    ratios, gpu_ratios = {}, {}
    bf = results["modes"].get("bf16")
    for mode, r in results["modes"].items():
        if bf and mode != "bf16":
            for key in [k for k in r if k.startswith("pdl_")]:
                ref = "pdl_on" if key.startswith("pdl_on") else "pdl_off"
                for b, t in r[key]["decode_ms"].items():
                    ratios[f"{mode}_{key}_b{b}_vs_bf16_{ref}"] = bf[ref]["decode_ms"][b] / t
                    if ref == "pdl_on":
                        ratios[f"{mode}_{key}_b{b}_vs_bf16_pdl_off"] = bf["pdl_off"]["decode_ms"][b] / t
                # GPU time per step of the profiled batch (first kernel start to last kernel end), same PDL setting
                span = f"b{args.profile_batch}_first_to_last_us"
                gpu_ratios[f"{mode}_{key}_b{args.profile_batch}_vs_bf16_{ref}"] = bf[ref][span] / r[key][span]
    results["ratios"], results["gpu_time_ratios"] = ratios, gpu_ratios
    print("step-time ratios: " + ", ".join(f"{k}={v:.2f}" for k, v in ratios.items()), flush=True)
    print("GPU-time ratios: " + ", ".join(f"{k}={v:.3f}" for k, v in gpu_ratios.items()), flush=True)
    write_result(name, results)


if __name__ == "__main__":
    main()
