"""Quantized builds through the builder API and the CLI on a tiny random Llama: every mode (and
quantized K/V caches) builds, calibrates, saves, loads and generates; ``trtdsl check ENGINE_DIR``
reports the engine's perplexity against transformers."""

from __future__ import annotations

import json

import pytest
import torch
from pydoc_data.topics import topics
from transformers import AutoModelForCausalLM

from trtdsl.builder import BuildConfig, Builder, load_model
from trtdsl.cli import PPL_TEXT_KEY, engine_accuracy_report, main
from trtdsl.errors import ConfigError
from trtdsl.ir.network import LayerKind
from trtdsl.runtime.model_runner import ModelRunner

PLUGIN = {"int8_wo": "trtdsl.weight_only_gemm", "int4_wo": "trtdsl.weight_only_gemm",
          "int4_awq": "trtdsl.weight_only_gemm", "fp8": "trtdsl.fp8_gemm", "int8_sq": "trtdsl.int8_gemm"}


def _plugins(net) -> set[str]:
    return {layer.attrs["name"] for layer in net.layers if layer.kind is LayerKind.PLUGIN}


@pytest.fixture(scope="module")
def hf_greedy(tiny_llama_dir):
    hf = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    prompt = [1, 17, 42, 99, 5]
    with torch.no_grad():
        ref = hf.generate(torch.tensor([prompt]), max_new_tokens=6, min_new_tokens=6, do_sample=False,
                          pad_token_id=0)[0, len(prompt):].tolist()
    return prompt, ref


@pytest.mark.parametrize("mode,kv", [("fp8", None), ("int8_wo", None), ("int4_wo", None),
                                     ("int4_awq", "int8"), ("int8_sq", "fp8")])
def test_builder_api_quantized_engine_generates(tiny_llama_dir, hf_greedy, tmp_path, mode, kv):
    config = BuildConfig(max_batch_size=2, max_seq_len=64, quantization=mode, kv_cache_dtype=kv,
                         quant_group_size=32, calibration_tokens=256)
    engine = Builder(config).build(load_model(tiny_llama_dir, "float32"))
    net = engine.network
    assert PLUGIN[mode] in _plugins(net) and net.metadata["quantization"]["mode"] == mode
    assert net.layer_counts().get("matrix_multiply", 0) == 1  # only the excluded LM head stays float
    # the runtime allocates the pool with the network's K/V dtype, not the model's
    assert net.input_specs["kv_cache"].dtype.value == (kv or "float32")
    engine.save(tmp_path / "engine")
    runner = ModelRunner.from_dir(tmp_path / "engine")
    prompt, ref = hf_greedy
    out = runner.generate([prompt], max_new_tokens=6, end_id=-1, top_k=1)
    tokens = out["output_ids"][0, 0, len(prompt):len(prompt) + 6].tolist()
    runner.close()
    assert len(tokens) == 6 and all(0 <= t < 256 for t in tokens)
    # weight-only int8 is accurate enough on this model to keep greedy decoding identical
    if mode == "int8_wo":
        assert tokens == ref


def test_quantized_kv_cache_pool_dtype_in_the_executor(tiny_llama_dir):
    from trtdsl.runtime.executor import Executor
    engine = Builder(BuildConfig(max_batch_size=2, max_seq_len=64, kv_cache_dtype="fp8",
                                 calibration_tokens=256)).build(load_model(tiny_llama_dir, "float32"))
    assert "trtdsl.attention_quant_kv" in _plugins(engine.network)
    ex = Executor(engine, kv_cache_max_tokens=128)
    try:
        assert ex.kv_pool.dtype == torch.float8_e4m3fn
    finally:
        ex.shutdown()


def test_quant_config_errors_at_configuration_time(tmp_path):
    with pytest.raises(ConfigError, match="group_size 48 is unsupported"):
        BuildConfig(quantization="int4_wo", quant_group_size=48)
    with pytest.raises(ConfigError, match="quant_options.*fp8_dynamc"):
        BuildConfig(quantization="fp8", quant_options={"fp8_dynamc": True})
    with pytest.raises(ConfigError, match="calibration_file .* is not a file"):
        BuildConfig(quantization="fp8", calibration_file=str(tmp_path / "missing.txt"))


def test_cli_build_int4_awq_run_and_check(tiny_llama_dir, tmp_path, capsys):
    out = tmp_path / "awq"
    text = tmp_path / "calib.txt"
    text.write_text(topics["class"])  # --calibration_file instead of the built-in text
    assert main(["build", "--checkpoint", str(tiny_llama_dir), "--model", "llama", "--dtype", "int4_awq",
                 "--kv_cache_dtype", "int8", "--group_size", "32", "--calibration_file", str(text),
                 "--calibration_tokens", "256", "--max_seq_len", "64", "--max_batch_size", "2",
                 "--quant_options", '{"gptq": true, "grid_refit": 1}', "--output", str(out)]) == 0
    cfg = json.loads((out / "config.json").read_text())["build_config"]
    assert (cfg["dtype"], cfg["quantization"], cfg["quant_group_size"]) == ("float32", "int4_awq", 32)
    assert cfg["quant_options"] == {"gptq": True, "grid_refit": 1}
    capsys.readouterr()
    assert main(["run", str(out), "--input_ids", "1,17,42", "-n", "5", "-q"]) == 0
    assert len(capsys.readouterr().out.split()) == 5  # five generated token ids
    rc = main(["check", str(out), "--json", "--ppl_tokens", "48"])
    report = json.loads(capsys.readouterr().out)
    assert rc == (0 if report["ok"] else 1)
    assert report["quantization"]["mode"] == "int4_awq" and report["quantization"]["kv_cache_dtype"] == "int8"
    # the transformers side is recomputed here, independently of the report
    hf = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    ids = [b % 256 for b in topics[PPL_TEXT_KEY].encode()][:48]
    with torch.no_grad():
        lp = hf(torch.tensor([ids])).logits[0, :-1].double().log_softmax(-1)
    ppl = float(torch.exp(-lp.gather(1, torch.tensor(ids[1:])[:, None]).mean()))
    assert report["ppl_transformers"] == pytest.approx(ppl, rel=1e-6)
    assert report["ppl_delta_pct"] == pytest.approx(100 * (report["ppl_trtdsl"] / ppl - 1))
    assert 0 < abs(report["ppl_delta_pct"]) < 10  # quantized: not exact, but close


def test_check_float_engine_matches_transformers(tiny_llama_dir, tmp_path):
    out = tmp_path / "float"
    assert main(["build", "--checkpoint", str(tiny_llama_dir), "--max_seq_len", "64", "--max_batch_size", "2",
                 "--output", str(out)]) == 0
    report = engine_accuracy_report(out, ppl_tokens=40)
    assert report["quantization"] is None and abs(report["ppl_delta_pct"]) < 0.01 and report["ok"]


def test_cli_dtype_quantization_conflicts(tiny_llama_dir, tmp_path, capsys):
    args = ["build", "--checkpoint", str(tiny_llama_dir), "--output", str(tmp_path / "x")]
    assert main([*args, "--dtype", "fp8", "--quantization", "int8_sq"]) == 2
    assert "disagree" in capsys.readouterr().err
    assert main([*args, "--dtype", "float16", "--act_dtype", "float32"]) == 2
    assert "--act_dtype" in capsys.readouterr().err
    assert main([*args, "--dtype", "int4_awq", "--quant_options", "{gptq: true}"]) == 2
    assert "--quant_options is not valid JSON" in capsys.readouterr().err
    assert main([*args, "--dtype", "int4_awq", "--quant_options", "[1]"]) == 2
    assert "must be a JSON object" in capsys.readouterr().err
    assert main([*args, "--dtype", "int4_awq", "--quant_options", '{"gptqq": true}']) == 2
    assert "gptqq" in capsys.readouterr().err


def test_cli_build_fp8_with_block_diagonal_swiglu_branch(tiny_llama_dir, tmp_path, capsys):
    """The accurate fp8 recipe from the command line: the engine's SwiGLUs carry the compact block-diagonal
    basis (4 blocks of rank 2 over 128 channels) and the engine generates."""
    from trtdsl.engine import Engine
    from trtdsl.passes.fp8_act_fuse import SWIGLU_FP8
    out = tmp_path / "fp8"
    options = {"gptq": True, "fp8_center_inputs": "norm+swiglu", "fp8_lowrank": 4, "fp8_lowrank_blocks": 4,
               "fp8_lowrank_block_rank": 2}
    assert main(["build", "--checkpoint", str(tiny_llama_dir), "--model", "llama", "--dtype", "fp8",
                 "--calibration_tokens", "256", "--max_seq_len", "64", "--max_batch_size", "2",
                 "--quant_options", json.dumps(options), "--output", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["build_config"]["quant_options"] == options
    swiglus = [la for la in Engine.load(out).network.layers
               if la.kind is LayerKind.PLUGIN and la.attrs["name"] == SWIGLU_FP8]
    assert len(swiglus) == 3 and all(la.attrs["fields"] == {"lowrank_blocks": 4} and
                                     tuple(la.inputs[-1].shape) == (128, 2) for la in swiglus)
    capsys.readouterr()
    assert main(["run", str(out), "--input_ids", "1,17,42", "-n", "5", "-q"]) == 0
    assert len(capsys.readouterr().out.split()) == 5
