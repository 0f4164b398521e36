"""``benchmarks/bench_serving.py`` on the CPU: our side and transformers' continuous batching both run
end to end with ``--tiny``, one side/shape per call merges into one JSON, transformers stops at its
time limit with a result marked partial, and ``make_table`` renders what the JSON holds."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench() -> Any:
    return _load("bench_serving")


def test_bench_serving_tiny_smoke(bench, tmp_path):
    out = tmp_path / "bench"
    payload = bench.main(["--tiny", "--requests", "4", "--side", "ours", "--name", str(out)])
    written = json.loads(out.with_suffix(".json").read_text())
    assert written["trtdsl"] == payload["trtdsl"]
    for (inp, outp), row in zip(bench.TINY_SHAPES, payload["trtdsl"].values()):
        assert row["output_tokens"] == 4 * outp  # no EOS: every request runs to its length
        assert row["output_tokens_per_s"] > 0 and row["ttft_p50_ms"] > 0
        assert row["max_concurrent_sequences"] == row["kv_blocks"] // math.ceil((inp + outp) / 8) >= 1


def test_one_shape_per_call_merges_and_mismatch_starts_afresh(bench, tmp_path, capsys):
    out = str(tmp_path / "merged")
    bench.main(["--tiny", "--requests", "3", "--side", "ours", "--shapes", "16/8", "--name", out])
    bench.main(["--tiny", "--requests", "3", "--side", "ours", "--shapes", "48/4", "--name", out])
    merged = json.loads(Path(out + ".json").read_text())
    assert sorted(merged["trtdsl"]) == ["16/8", "48/4"]
    assert merged["trtdsl"]["48/4"]["output_tokens"] == 3 * 4
    assert merged["max_concurrent_sequences"]["16/8"]["trtdsl"] == merged["trtdsl"]["16/8"]["max_concurrent_sequences"]
    bench.main(["--tiny", "--requests", "2", "--side", "ours", "--shapes", "16/8", "--name", out])
    assert "requests_per_shape differ" in capsys.readouterr().out
    assert sorted(json.loads(Path(out + ".json").read_text())["trtdsl"]) == ["16/8"]


def _tiny_hf(bench: Any) -> Any:
    return bench.make_hf_model(bench.TINY, torch.float32, "cpu")


def test_hf_side_generates_what_transformers_generate_does(bench):
    """Our wrapper around transformers' manager answers every request, with the tokens its plain
    greedy ``generate`` gives, and reports its cache sizing."""
    model = _tiny_hf(bench)
    prompts = bench._prompts(3, 12, bench.TINY["vocab_size"], seed=5)
    settings = {"num_blocks": 4, "max_batch_tokens": 64, "max_memory_percent": 0.9, "max_requests_per_batch": 2}
    res = bench.run_hf_shape(model, prompts, 5, settings, time_limit=120, bytes_per_token=1, keep_tokens=True)
    assert res["completed_requests"] == 3 and "partial" not in res and res["output_tokens"] == 15
    assert res["config"]["num_blocks"] == 4 and res["config"]["max_requests_per_batch"] == 2
    block = res["config"]["block_size"]
    assert res["max_concurrent_sequences"] == 4 // math.ceil((12 + 5) / block)
    model.set_attn_implementation("sdpa")
    with torch.no_grad():
        ref = model.generate(torch.tensor(prompts), max_new_tokens=5, do_sample=False, eos_token_id=None,
                             pad_token_id=0, attention_mask=torch.ones(3, 12, dtype=torch.long))
    assert sorted(res["tokens"]) == sorted(ref[:, 12:].tolist())


def test_hf_time_limit_reports_partial(bench):
    model = _tiny_hf(bench)
    prompts = bench._prompts(4, 8, bench.TINY["vocab_size"], seed=1)
    settings = {"num_blocks": 4, "max_batch_tokens": 64}
    res = bench.run_hf_shape(model, prompts, 50, settings, time_limit=0.0, bytes_per_token=1)
    assert res["partial"] is True and res["completed_requests"] < 4 and res["requests"] == 4
    assert res["output_tokens"] == 50 * res["completed_requests"]
    assert "stopped after" in res["partial_note"]


def test_hf_config_is_portable_and_rejects_unknown_options(bench):
    from transformers.generation.configuration_utils import ContinuousBatchingConfig
    names = {f.name for f in dataclasses.fields(ContinuousBatchingConfig)}
    cfg = bench.hf_cb_config({"block_size": 64, "num_blocks": 7, "max_batch_tokens": None})
    assert getattr(cfg, "page_size" if "page_size" in names else "block_size") == 64
    assert cfg.num_blocks == 7 and cfg.max_batch_tokens is None
    with pytest.raises(SystemExit, match="no_such_knob"):
        bench.hf_cb_config({"no_such_knob": 1})


def test_sdpa_batch_shrinks_with_context_and_parse_shapes(bench):
    sizes = [bench.sdpa_max_requests(i, o, 256) for i, o in bench.SHAPES]
    assert sizes == sorted(sizes, reverse=True) and all(16 <= s <= 256 and s % 16 == 0 for s in sizes)
    assert bench.sdpa_max_requests(16, 8, 6) == 6
    assert bench.parse_shapes("128/128, 2048/128") == [(128, 128), (2048, 128)]
    for bad in ("128", "a/b", "0/4", ""):
        with pytest.raises(Exception, match="--shapes"):
            bench.parse_shapes(bad)


def test_ratio_notes_and_table_for_partial_reference(bench):
    row = {"output_tokens_per_s": 1000.0, "ttft_p50_ms": 10.0, "ttft_p99_ms": 20.0, "itl_p50_ms": 1.0,
           "itl_p99_ms": 2.0, "max_concurrent_sequences": 50, "kv_block_tokens": 32, "kv_gib": 40.0}
    hf = {"output_tokens_per_s": 250.0, "partial": True, "completed_requests": 10, "requests": 256,
          "time_limit_s": 420.0, "max_concurrent_sequences": 20, "kv_block_tokens": 256, "kv_gib": 30.0}
    payload = {"device": "NVIDIA H100 80GB HBM3", "model": "m", "requests_per_shape": 256,
               "trtdsl": {"2048/128": row, "128/128": row}, bench.HF_KEY: {"2048/128": hf}}
    bench._derived(payload)
    assert payload["throughput_ratio"] == {"2048/128": 4.0}
    assert "overstates" in payload["throughput_ratio_notes"]["2048/128"]
    assert payload["max_concurrent_sequences"]["2048/128"] == {"trtdsl": 50, "transformers": 20}
    table = _load("make_table")
    table._load = lambda pattern: [("bench_serving_h100.json", payload)] if "serving" in pattern else []
    text = "\n".join(table.serving_tables())
    assert "250 (partial: 10/256 answered in 420 s)" in text and "4.0x (HF partial)" in text
    assert "| 2048/128 | 50 (32, 40.0) | 20 (256, 30.0) |" in text
    assert "| 128/128 | 50 (32, 40.0) | – |" in text
