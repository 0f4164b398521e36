"""``benchmarks/bench_serving.py --tiny`` runs on the CPU and reports sane numbers (the GPU run with
the transformers reference is the lead's; the reference is skipped here because transformers'
continuous batching takes ~30 s to start and stop on a CPU)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_serving_tiny_smoke(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_serving", ROOT / "benchmarks" / "bench_serving.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench"
    payload = bench.main(["--tiny", "--requests", "4", "--skip-hf", "--name", str(out)])
    written = json.loads(out.with_suffix(".json").read_text())
    assert written["trtdsl"] == payload["trtdsl"]
    for (inp, outp), row in zip(bench.TINY_SHAPES, payload["trtdsl"].values()):
        assert row["output_tokens"] == 4 * outp  # no EOS: every request runs to its length
        assert row["output_tokens_per_s"] > 0 and row["ttft_p50_ms"] > 0
        assert row["max_concurrent_sequences"] == row["kv_blocks"] // -(-(inp + outp) // 8) >= 1
