"""Shared benchmark plumbing: device facts, the measured copy-bandwidth ceiling, CUDA-event timing
with medians, and JSON results that name the device and versions.

Every benchmark runs ours and the reference in the same process on the same GPU and writes one JSON
file under ``benchmarks/results/`` (and ``$OUT`` when set, so device runs bring it back)."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def device_facts() -> dict[str, Any]:
    facts: dict[str, Any] = {
        "python": platform.python_version(), "torch": torch.__version__,
        "cuda": torch.version.cuda, "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    try:
        import transformers
        facts["transformers"] = transformers.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        facts.update(device=props.name, sm_count=props.multi_processor_count,
                     memory_gib=round(props.total_memory / 2**30, 1),
                     capability=f"{props.major}.{props.minor}")
    else:
        facts["device"] = "cpu"
    return facts


def cuda_time_ms(fn: Callable[[], Any], warmup: int = 3, iters: int = 20) -> dict[str, float]:
    """Median / min / max milliseconds of ``fn`` timed with CUDA events, one event pair per call."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times),
            "iters": iters}


def graph_time_ms(calls: list[Callable[[], Any]], warmup: int = 3, iters: int = 20) -> float:
    """Median milliseconds per call of ``calls`` replayed back to back in one CUDA graph (launch
    gaps out of the measurement; pass enough distinct buffers that L2 does not serve them)."""
    for c in calls[:2]:  # warm up: library load, cuBLAS heuristics, allocator
        c()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for c in calls:
            c()
    t = cuda_time_ms(graph.replay, warmup=warmup, iters=iters)["median_ms"] / len(calls)
    del graph
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    return t


def copy_bandwidth_gbps(nbytes: int = 2 << 30) -> float:
    """Device-to-device copy bandwidth in GB/s, counting bytes read plus bytes written."""
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda").random_(0, 255)
    dst = torch.empty_like(src)
    t = cuda_time_ms(lambda: dst.copy_(src), warmup=3, iters=20)["median_ms"]
    del src, dst
    torch.cuda.empty_cache()
    return 2 * nbytes / (t * 1e-3) / 1e9


def gemm_ceiling_tflops(size: int = 8192, dtype: torch.dtype = torch.bfloat16) -> float:
    """TFLOP/s of one large square cuBLAS GEMM: the dense-compute ceiling measured in this run."""
    a = torch.randn(size, size, device="cuda", dtype=dtype)
    b = torch.randn(size, size, device="cuda", dtype=dtype)
    ms = cuda_time_ms(lambda: a @ b, warmup=3, iters=10)["median_ms"]
    return 2 * size**3 / (ms * 1e-3) / 1e12


def write_result(name: str, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (with device facts) to results/<name>.json and to $OUT if set."""
    payload = {"benchmark": name, **device_facts(), **payload}
    text = json.dumps(payload, indent=2, sort_keys=False)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(text)
    out = os.environ.get("OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / f"{name}.json").write_text(text)
    return path


def device_slug() -> str:
    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    for key in ("H200", "H100", "A100", "L40S"):
        if key in name:
            return key.lower()
    return name.lower().replace(" ", "_")[:24]
