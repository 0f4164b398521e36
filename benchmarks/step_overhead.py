"""Where a batch-1 decode step's time goes between the host and the GPU, per engine mode, PDL off / on.

For each mode it builds bench_decode's 8B-shaped engine and its captured b = 1 decode step, then times:
* ``sync_step_ms``: bench_decode's decode step (metadata fills, input copies, graph replay, GPU argmax),
  synchronized after every step: the number the decode benchmarks and profiles report;
* ``sync_run_ms`` / ``sync_replay_only_ms``: input copies + replay, and the replay alone, each synchronized;
* ``pipelined_run_ms`` / ``pipelined_replay_ms``: 32 of them back to back without a host wait, i.e. the
  GPU time per step a runtime that queues the next step before the last one finishes would see;
* ``host_run_call_ms`` / ``host_replay_call_ms``: the host's time inside one call (GPU idle before it).
Writes benchmarks/results/step_overhead_<device>.json (and $OUT). From the repository root:
``PYTHONPATH=. python benchmarks/step_overhead.py --modes bf16,int4_awq:head,fp8``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.bench_decode import OurEngine, our_model  # noqa: E402
from benchmarks.common import cuda_time_ms, device_slug, write_result  # noqa: E402

PROMPT, STEPS = 128, 32


def host_ms(fn: Callable[[], Any], iters: int = 20) -> float:
    """Median host milliseconds inside ``fn``, starting each call with the GPU idle."""
    times = []
    for _ in range(iters):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    torch.cuda.synchronize()
    return statistics.median(times)


def pipelined_ms(fn: Callable[[], Any], n: int = STEPS) -> float:
    """GPU milliseconds per call of ``n`` calls queued back to back."""
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(n):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / n


def measure(engine: OurEngine) -> dict[str, float]:
    feed = engine.feed([1], [PROMPT])
    hints = {"max_q_len": 1, "max_kv_len": PROMPT + STEPS + 8}
    run = lambda: engine.graphs.run(("decode", 1), feed, hints)  # noqa: E731
    run()
    torch.cuda.synchronize()
    graph = engine.graphs.steps[("decode", 1)].graph
    return {"sync_step_ms": engine.decode_step_time(1, PROMPT, STEPS)["median_ms"],
            "sync_run_ms": cuda_time_ms(run, warmup=3, iters=STEPS)["median_ms"],
            "sync_replay_only_ms": cuda_time_ms(graph.replay, warmup=3, iters=STEPS)["median_ms"],
            "host_replay_call_ms": host_ms(graph.replay), "host_run_call_ms": host_ms(run),
            "pipelined_replay_ms": pipelined_ms(graph.replay), "pipelined_run_ms": pipelined_ms(run)}


def main() -> None:
    from trtdsl.plugins.cuda.quant_ops import set_programmatic_launch
    from trtdsl.runtime.cuda_graphs import CudaGraphCache
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="8b")
    ap.add_argument("--modes", default="bf16,int4_awq:head,fp8")
    args = ap.parse_args()
    model = our_model(args.model)
    results: dict[str, Any] = {}
    for mode in args.modes.split(","):
        engine = OurEngine(model, 1, PROMPT + 2 * STEPS + 64, max_tokens=PROMPT,
                           quant=None if mode == "bf16" else mode)
        engine.prefill(1, PROMPT)
        for pdl in (False, True):
            set_programmatic_launch(pdl)
            engine.graphs = CudaGraphCache(engine.executor)  # recapture: launches record the attribute
            key = f"{mode}/pdl_{'on' if pdl else 'off'}"
            results[key] = measure(engine)
            print(key, {k: round(v, 3) for k, v in results[key].items()}, flush=True)
        del engine
        torch.cuda.empty_cache()
    set_programmatic_launch(True)
    path = write_result(f"step_overhead_{device_slug()}", {"model": args.model, "prompt_len": PROMPT,
                                                            "results": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
