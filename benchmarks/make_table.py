"""Regenerate the README's performance section from the committed JSON in ``benchmarks/results/``.

``python benchmarks/make_table.py`` rewrites what lies between ``<!-- perf:start -->`` and
``<!-- perf:end -->`` in README.md; ``--check`` exits 1 if the README is out of date (a test runs it).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
START, END = "<!-- perf:start -->", "<!-- perf:end -->"


def _load(pattern: str) -> list[tuple[str, dict[str, Any]]]:
    return [(p.name, json.loads(p.read_text())) for p in sorted(RESULTS.glob(pattern))]


def _fmt(x: Any, digits: int = 1, unit: str = "") -> str:
    return "–" if x is None else f"{x:.{digits}f}{unit}"


def decode_tables() -> list[str]:
    lines: list[str] = []
    for fname, res in _load("decode_*.json"):
        if "models" not in res or fname.startswith("decode_quant"):
            continue  # decode_attention_* (kernel results) and quantized runs have their own tables
        lines += [f"**Decode and time to first token** — {res.get('device')}, torch {res.get('torch')}, "
                  f"transformers {res.get('transformers', '?')}; device-to-device copy bandwidth measured in "
                  f"each run ({res['copy_bandwidth_gbps']:.0f} GB/s in the last); prompt {res['prompt_len']} tokens "
                  f"(`benchmarks/results/{fname}`)", "",
                  "| model | batch | trtdsl tok/s | % of copy bw | HF eager tok/s | HF static+compile tok/s "
                  "| vs eager | vs compile |", "|---|---|---|---|---|---|---|---|"]
        notes = [f"{m}: {e['note']}" for m, e in res["models"].items() if e.get("note")]
        for model, entry in res["models"].items():
            ours, hf = entry["ours"], entry.get("hf", {})
            for b, r in ours["decode"].items():
                he = hf.get("eager", {}).get("decode", {}).get(b, {})
                hc = hf.get("compile", {}).get("decode", {}).get(b, {})
                ratio = entry.get("ratios", {})
                lines.append(f"| {model} | {b} | {r['tokens_per_s']:.0f} | {r['pct_of_copy_bw']:.0f}% | "
                             f"{_fmt(he.get('tokens_per_s'), 0)} | {_fmt(hc.get('tokens_per_s'), 0)} | "
                             f"{_fmt(ratio.get(f'decode_b{b}_vs_hf_eager'), 2, 'x')} | "
                             f"{_fmt(ratio.get(f'decode_b{b}_vs_hf_compile'), 2, 'x')} |")
        lines += [""] + [f"- {n}" for n in notes]
        ceiling = res.get("gemm_ceiling_tflops")
        lines += ["", "| model | prompt | trtdsl TTFT ms (graph) | trtdsl eager ms | HF eager ms | "
                  "trtdsl TFLOP/s | floor ms at GEMM ceiling |", "|---|---|---|---|---|---|---|"]
        for model, entry in res["models"].items():
            for n, r in entry["ours"]["ttft"].items():
                h = entry.get("hf", {}).get("eager", {}).get("ttft", {}).get(n, {})
                lines.append(f"| {model} | {n} | {r['graph_ms']:.1f} | {r['eager_ms']:.1f} | "
                             f"{_fmt(h.get('ms'))} | {_fmt(r.get('tflops'), 0)} | "
                             f"{_fmt(r.get('floor_ms_at_gemm_ceiling'))} |")
        if ceiling:
            lines += ["", f"- the floor is the prefill's FLOPs at the bf16 cuBLAS GEMM rate measured in the "
                      f"same run ({ceiling:.0f} TFLOP/s on 8192^3)"]
        lines += [""]
    for fname, res in _load("decode_*.json"):
        if "models" in res:
            lines += executor_table(res, fname)
    return lines


def executor_table(res: dict[str, Any], fname: str) -> list[str]:
    """The in-flight Executor's time between streamed tokens (bench_decode --executor)."""
    rows = []
    for model, entry in res["models"].items():
        ex = entry.get("executor")
        if not ex:
            continue
        for b, g in ex.get("cuda_graphs", {}).items():
            e = ex.get("eager", {}).get(b, {})
            harness = entry["ours"]["decode"].get(b, {}).get("step_ms")
            rows.append(f"| {model} | {b} | {g['itl_ms']:.2f} | {_fmt(e.get('itl_ms'), 2)} | {_fmt(harness, 2)} |")
    if not rows:
        return []
    return [f"**In-flight Executor** (what `ModelRunner`/`trtdsl serve` run: scheduler, sampling and one host "
            f"round trip per step; median time between streamed tokens, prompt 128; `benchmarks/results/{fname}`):", "",
            "| model | batch | CUDA graphs ms | eager ms | graph-replayed step alone ms |",
            "|---|---|---|---|---|", *rows, ""]


def kernel_tables() -> list[str]:
    lines: list[str] = []
    for fname, res in _load("kernels_*.json"):
        lines += [f"**Kernels** — {res.get('device')} (`benchmarks/results/{fname}`; details in "
                  "docs/kernels.md)", ""]
        for key, label in (("context_attention_mha", "MHA 32/32"), ("context_attention_gqa", "GQA 32/8")):
            rows = res.get(key) or []
            if not rows:
                continue
            lines += [f"| context attention ({label}, d=128) tokens | trtdsl ms | SDPA flash ms | ratio |",
                      "|---|---|---|---|"]
            lines += [f"| {r['tokens']} | {r['ms']:.3f} | {r['sdpa_flash_ms']:.3f} | {r['speedup_vs_sdpa']:.2f}x |"
                      for r in rows]
            lines.append("")
    return lines


def _hf_cell(h: dict[str, Any]) -> str:
    """transformers' tokens/s, saying when it stopped at its time limit or failed."""
    if not h:
        return "not finished in the run time limit"
    if "error" in h:
        return "failed (see JSON)"
    cell = _fmt(h.get("output_tokens_per_s"), 0)
    if h.get("partial"):
        cell += f" (partial: {h.get('completed_requests')}/{h.get('requests')} answered in {h.get('time_limit_s'):g} s)"
    return cell


def _concurrency_table(res: dict[str, Any]) -> list[str]:
    """Max concurrent sequences of each shape at the same memory fraction (newer result files only)."""
    conc = res.get("max_concurrent_sequences")
    if not conc:
        return []
    hf = res.get("transformers_continuous_batching", {})
    lines = ["Max concurrent sequences at the same K/V memory fraction (how each is computed: "
             "`max_concurrent_how` in the JSON)", "",
             "| in/out | trtdsl (block tokens, K/V GiB) | transformers (block tokens, K/V GiB) |", "|---|---|---|"]
    for shape, c in conc.items():
        ours, h = res["trtdsl"].get(shape, {}), hf.get(shape, {}) if isinstance(hf, dict) else {}
        theirs = (f"{c.get('transformers')} ({h.get('kv_block_tokens')}, {_fmt(h.get('kv_gib'), 1)})"
                  if c.get("transformers") is not None else "–")
        lines.append(f"| {shape} | {c.get('trtdsl')} ({ours.get('kv_block_tokens')}, {_fmt(ours.get('kv_gib'), 1)}) | "
                     f"{theirs} |")
    return lines + [""]


def serving_tables() -> list[str]:
    lines: list[str] = []
    for fname, res in _load("bench_serving*.json"):
        if res.get("device", "cpu") == "cpu":
            continue
        hf = res.get("transformers_continuous_batching", {})
        lines += [f"**Serving** ({res['requests_per_shape']} requests per shape, all submitted at once, "
                  f"{res['model']}) — {res.get('device')} (`benchmarks/results/{fname}`)", "",
                  "| in/out | trtdsl tok/s | TTFT p50/p99 ms | ITL p50/p99 ms | HF generate_batch tok/s | ratio |",
                  "|---|---|---|---|---|---|"]
        for shape, r in res["trtdsl"].items():
            h = hf.get(shape, {}) if isinstance(hf, dict) else {}
            ratio = res.get("throughput_ratio", {}).get(shape)
            lines.append(f"| {shape} | {r['output_tokens_per_s']:.0f} | {r['ttft_p50_ms']:.0f} / {r['ttft_p99_ms']:.0f} | "
                         f"{r['itl_p50_ms']:.1f} / {r['itl_p99_ms']:.1f} | {_hf_cell(h)} | "
                         f"{_fmt(ratio, 1, 'x')}{' (HF partial)' if h.get('partial') and ratio else ''} |")
        lines.append("")
        lines += _concurrency_table(res)
    for fname, res in _load("decode_quant_*.json"):
        lines += [f"**Quantized decode** (8B shape, batch 1/8) — {res.get('device')} (`benchmarks/results/{fname}`)", "",
                  "| engine | batch | step ms | tok/s | vs bf16 |", "|---|---|---|---|---|"]
        for model, entry in res["models"].items():
            for key in [k for k in entry if k.startswith("ours")]:
                mode = key.removeprefix("ours_") if key != "ours" else "bf16"
                for b, r in entry[key]["decode"].items():
                    ratio = entry.get("ratios", {}).get(f"{mode}_decode_b{b}_vs_bf16", 1.0 if mode == "bf16" else None)
                    lines.append(f"| {model} {mode} | {b} | {r['step_ms']:.2f} | {r['tokens_per_s']:.0f} | {_fmt(ratio, 2)}x |")
        lines += ["", "| engine | prompt | TTFT ms (graph) | TFLOP/s | floor ms at GEMM ceiling |", "|---|---|---|---|---|"]
        for model, entry in res["models"].items():
            for key in [k for k in entry if k.startswith("ours")]:
                mode = key.removeprefix("ours_") if key != "ours" else "bf16"
                for n, r in entry[key]["ttft"].items():
                    lines.append(f"| {model} {mode} | {n} | {r['graph_ms']:.1f} | {_fmt(r.get('tflops'), 0)} | "
                                 f"{_fmt(r.get('floor_ms_at_gemm_ceiling'))} |")
        if res.get("gemm_ceiling_tflops"):
            lines.append(f"\n- bf16 GEMM ceiling measured in this run: {res['gemm_ceiling_tflops']:.0f} TFLOP/s")
        lines.append("")
    return lines


def render() -> str:
    body = decode_tables() + serving_tables() + kernel_tables()
    if not body:
        body = ["No GPU results committed yet."]
    return "\n".join([START, "", *body, END])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    readme = ROOT / "README.md"
    text = readme.read_text()
    if START not in text or END not in text:
        print("README.md has no perf markers", file=sys.stderr)
        return 2
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    new = head + render() + tail
    if args.check:
        return 0 if new == text else 1
    readme.write_text(new)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
