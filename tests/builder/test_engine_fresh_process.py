"""An engine file runs in a process that has imported nothing but the runtime: the plugins its build's
passes made (int4 tile GEMMs, fp8 quantizing norms / SwiGLU / attention) are known to the plugin
registry there, not only in the process that built it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from trtdsl.builder import BuildConfig, Builder, load_model

ROOT = Path(__file__).resolve().parents[2]
PROMPT = [1, 7, 42, 3]


def _fresh(code: str) -> str:
    """stdout of ``code`` run by a new interpreter (the repository on its path); fails with its stderr."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_a_fresh_registry_knows_the_plugins_passes_make():
    from trtdsl.passes import deferred_norm, fp8_act_fuse, fused_plugins, int4_tile_gemm
    made = {int4_tile_gemm.INT4_TILE_GEMM, deferred_norm.ADD_NORM, deferred_norm.NORMED,
            fp8_act_fuse.RMS_NORM_FP8, fp8_act_fuse.ADD_RMS_NORM_FP8, fp8_act_fuse.SWIGLU_FP8,
            fp8_act_fuse.ATTENTION_FP8, fp8_act_fuse.ATTENTION_QUANT_KV_FP8,
            fused_plugins.ADD_RMS_NORM, fused_plugins.SWIGLU, fused_plugins.POINTWISE}
    known = json.loads(_fresh("import json; from trtdsl.plugins.registry import registered_plugins; "
                              "print(json.dumps(sorted(registered_plugins())))"))
    assert made <= set(known), sorted(made - set(known))


@pytest.mark.parametrize("mode", ["int4_awq", "fp8"])
def test_quantized_engine_generates_in_a_fresh_process(mode, int4_llama_dir, tmp_path):
    from trtdsl.runtime.model_runner import ModelRunner
    engine = Builder(BuildConfig(max_batch_size=1, max_seq_len=64, quantization=mode, quant_group_size=64,
                                 calibration_tokens=128)).build(load_model(int4_llama_dir, "float32"))
    names = {la.attrs.get("name") for la in engine.network.layers}
    assert ("trtdsl.int4_tile_gemm_add_norm" if mode == "int4_awq" else "trtdsl.swiglu_fp8") in names
    engine.save(tmp_path / "e")
    runner = ModelRunner.from_dir(tmp_path / "e")
    want = runner.generate([PROMPT], max_new_tokens=4, end_id=-1, top_k=1)["output_ids"].tolist()
    runner.close()
    got = _fresh(f"from trtdsl.runtime.model_runner import ModelRunner\n"
                 f"r = ModelRunner.from_dir({str(tmp_path / 'e')!r})\n"
                 f"print(r.generate([{PROMPT}], max_new_tokens=4, end_id=-1, top_k=1)['output_ids'].tolist())")
    assert got.strip().splitlines()[-1] == str(want)
