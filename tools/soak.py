"""Bounded loopback soak of ``trtdsl serve``: starts a server on 127.0.0.1 (a subprocess, like a real
deployment), sends a paced mix of requests for ``--duration`` seconds, and reports whether

* no response was a 5xx,
* every accepted request was answered completely (JSON with a finish_reason, or an SSE stream
  ending in ``[DONE]``), malformed ones got a 400 naming a field,
* the K/V pool is back to empty at the end (``trtdsl_kv_cache_used_blocks 0`` in /metrics),
  after ~10% of the requests were cancelled by disconnecting mid-stream.

Traffic goes ONLY to 127.0.0.1.

    python tools/soak.py                         # tiny random model, 10 minutes, 1000 requests
    python tools/soak.py --engine-dir engines/smollm2 --duration 120 --requests 200
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
SYSTEM_PROMPTS = ["You are a terse assistant that answers in one line.",
                  "You are a helpful assistant. Always be polite and precise in every answer."]
WORDS = "the quick brown fox jumps over a lazy dog while seven wizards quietly box jam".split()


def _text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _plan(rng: random.Random, i: int) -> tuple[str, str, dict[str, Any]]:
    """(kind, path, body) of request ``i``: kind is ok | stream | cancel | malformed."""
    roll = rng.random()
    chat = rng.random() < 0.5
    path = "/v1/chat/completions" if chat else "/v1/completions"
    body: dict[str, Any] = {"max_tokens": rng.randint(1, 24), "temperature": rng.choice([0.0, 0.7, 1.0])}
    if chat:
        body["messages"] = [{"role": "system", "content": rng.choice(SYSTEM_PROMPTS)},
                            {"role": "user", "content": _text(rng, rng.randint(1, 12))}]
    else:
        body["prompt"] = rng.choice(SYSTEM_PROMPTS) + " " + _text(rng, rng.randint(1, 16))
    if rng.random() < 0.2:
        body["n"] = 2
    if rng.random() < 0.2:
        body["seed"] = i
    if rng.random() < 0.1:
        body["stop"] = ["e"]
    if rng.random() < 0.1:
        if chat:
            body.update(logprobs=True, top_logprobs=2)
        else:
            body["logprobs"] = 2
    if roll < 0.05:
        bad = rng.choice([("temperature", -1), ("max_tokens", 0), ("n", "two"), ("top_p", 3),
                          ("stop", [1, 2]), ("messages" if chat else "prompt", None)])
        body[bad[0]] = bad[1]
        return "malformed", path, body
    if roll < 0.15:
        body.update(stream=True, max_tokens=rng.randint(8, 48))
        return "cancel", path, body
    if roll < 0.55:
        body.update(stream=True, stream_options={"include_usage": rng.random() < 0.5})
        return "stream", path, body
    return "ok", path, body


async def _one(client: httpx.AsyncClient, kind: str, path: str, body: dict[str, Any],
               rng: random.Random) -> dict[str, Any]:
    t0 = time.perf_counter()
    rec: dict[str, Any] = {"kind": kind, "status": None, "complete": False}
    try:
        if kind in ("stream", "cancel"):
            async with client.stream("POST", path, json=body) as r:
                rec["status"] = r.status_code
                if r.status_code != 200:
                    await r.aread()
                    return rec
                chunks, stop_after = 0, rng.randint(1, 3)
                async for line in r.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    chunks += 1
                    if line == "data: [DONE]":
                        rec["complete"] = True
                    if kind == "cancel" and chunks >= stop_after:
                        rec["disconnected_early"] = not rec["complete"]
                        break  # leaving the block closes the connection: a disconnect
                if kind == "cancel":
                    rec["complete"] = True
        else:
            r = await client.post(path, json=body)
            rec["status"] = r.status_code
            data = r.json()
            if kind == "malformed":
                rec["complete"] = r.status_code == 400 and bool(data.get("error", {}).get("param"))
            elif r.status_code == 200:
                rec["complete"] = all(c.get("finish_reason") in ("stop", "length") for c in data["choices"])
    except (httpx.HTTPError, ValueError) as exc:
        rec["error"] = f"{type(exc).__name__}: {exc}"
    rec["latency_s"] = time.perf_counter() - t0
    return rec


def _metric(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


async def _sample_pool(client: httpx.AsyncClient, peak: dict[str, float], stop: asyncio.Event) -> None:
    """Track the largest K/V pool use /metrics shows, sampled every 0.1 s (a lower bound: short
    requests come and go between samples)."""
    while not stop.is_set():
        try:
            used = _metric((await client.get("/metrics")).text, "trtdsl_kv_cache_used_blocks")
            peak["kv_used_blocks_peak"] = max(peak.get("kv_used_blocks_peak", 0.0), used or 0.0)
        except httpx.HTTPError:
            pass
        try:
            await asyncio.wait_for(stop.wait(), timeout=0.1)
        except asyncio.TimeoutError:
            pass


async def _drive(url: str, n: int, duration: float, concurrency: int, seed: int,
                 peak: dict[str, float]) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    plans = [_plan(rng, i) for i in range(n)]
    sem = asyncio.Semaphore(concurrency)
    start = time.perf_counter()
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        async def run(i: int) -> dict[str, Any]:
            # Paced: request i starts no earlier than i * duration / n seconds after the start.
            delay = start + i * duration / n - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            async with sem:
                return await _one(client, *plans[i], random.Random(seed * 100003 + i))
        stop = asyncio.Event()
        sampler = asyncio.create_task(_sample_pool(client, peak, stop))
        try:
            return list(await asyncio.gather(*(run(i) for i in range(n))))
        finally:
            stop.set()
            await sampler


def _wait_ready(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the server did not become healthy")


def _report(records: list[dict[str, Any]], metrics_text: str, elapsed: float) -> dict[str, Any]:
    statuses: dict[str, int] = {}
    for r in records:
        statuses[str(r["status"])] = statuses.get(str(r["status"]), 0) + 1
    accepted = [r for r in records if r["kind"] != "malformed" and r["status"] != 429]
    unanswered = [r for r in accepted if not r["complete"]]
    lat = sorted(r["latency_s"] for r in records if r["kind"] in ("ok", "stream") and r["complete"])
    used = _metric(metrics_text, "trtdsl_kv_cache_used_blocks")
    report: dict[str, Any] = {
        "requests": len(records), "elapsed_s": round(elapsed, 1), "status_counts": statuses,
        "by_kind": {k: sum(1 for r in records if r["kind"] == k) for k in ("ok", "stream", "cancel", "malformed")},
        "accepted": len(accepted), "unanswered": len(unanswered),
        "cancel_disconnected_before_done": sum(1 for r in records if r.get("disconnected_early")),
        "malformed_rejected_400": sum(1 for r in records if r["kind"] == "malformed" and r["complete"]),
        "rate_limited_429": statuses.get("429", 0),
        "server_errors_5xx": sum(v for k, v in statuses.items() if k.startswith("5")),
        "client_errors": [r.get("error") for r in records if r.get("error")][:10],
        "latency_p50_s": round(statistics.median(lat), 4) if lat else None,
        "latency_p99_s": round(lat[int(0.99 * (len(lat) - 1))], 4) if lat else None,
        "kv_used_blocks_end": used, "kv_blocks": _metric(metrics_text, "trtdsl_kv_cache_blocks"),
        "running_end": _metric(metrics_text, "trtdsl_requests_running"),
        "waiting_end": _metric(metrics_text, "trtdsl_requests_waiting"),
        "generated_tokens": _metric(metrics_text, "trtdsl_generation_tokens_total"),
        "prefix_reused_tokens": _metric(metrics_text, "trtdsl_prefix_cache_reused_tokens"),
    }
    report["passed"] = (report["server_errors_5xx"] == 0 and not unanswered and used == 0
                        and report["malformed_rejected_400"] == report["by_kind"]["malformed"])
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engine-dir", default=None, help="engine to serve (default: build a tiny random one)")
    p.add_argument("--duration", type=float, default=600.0, help="seconds over which requests are paced")
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "soak_cpu.json"))
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory() as tmp:
        engine_dir = args.engine_dir
        if engine_dir is None:
            from trtdsl.server.testing import build_tiny_engine
            # Byte-level tokens: a few sentences are a few hundred tokens.
            engine_dir = str(build_tiny_engine(Path(tmp) / "tiny_engine", max_input_len=384,
                                               max_seq_len=512, max_num_tokens=512))
        port = _free_port()
        url = f"http://{HOST}:{port}"
        env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        proc = subprocess.Popen([sys.executable, "-m", "trtdsl.server.cli", engine_dir, "--host", HOST,
                                 "--port", str(port), "--device", "cpu", "--threads", "1",
                                 "--log-level", "warning", "--max-queue-size", "64"], env=env)
        try:
            _wait_ready(url, proc)
            t0 = time.perf_counter()
            peak: dict[str, float] = {}
            records = asyncio.run(_drive(url, args.requests, args.duration, args.concurrency, args.seed, peak))
            elapsed = time.perf_counter() - t0
            metrics_text = ""
            for _ in range(100):  # cancellations are applied at the executor's next iteration
                metrics_text = httpx.get(url + "/metrics", timeout=10).text
                if _metric(metrics_text, "trtdsl_kv_cache_used_blocks") == 0:
                    break
                time.sleep(0.1)
        finally:
            proc.terminate()
            proc.wait(30)
    report = {"engine": args.engine_dir or "tiny random llama (trtdsl.server.testing)",
              **_provenance(), "duration_target_s": args.duration, "concurrency": args.concurrency,
              **_report(records, metrics_text, elapsed), **peak}
    # A server that generated nothing would make "back to empty" vacuous.
    report["passed"] = report["passed"] and (report["generated_tokens"] or 0) > 0
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0 if report["passed"] else 1


def _provenance() -> dict[str, Any]:
    """When, on what and from which commit the soak ran (the report is committed)."""
    import platform
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "git_commit": commit,
            "python": platform.python_version(), "cpu_count": os.cpu_count()}


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


if __name__ == "__main__":
    raise SystemExit(main())
