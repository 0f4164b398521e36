"""A tiny random Llama built plugin-free (attention_backend="composite") exports to ONNX: the model
passes onnx.checker, onnxruntime matches the torch executor (and transformers) in float32, and
polygraphy lists its layers."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from trtdsl.backends.onnx import export_onnx
from trtdsl.backends.torch_executor import TorchExecutor
from trtdsl.builder import BuildConfig, Builder, load_model


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(vocab_size=200, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      rms_norm_eps=1e-5, tie_word_embeddings=True)
    torch.manual_seed(7)
    path = tmp_path_factory.mktemp("tiny_llama_onnx")
    model = LlamaForCausalLM(cfg).eval()
    model.save_pretrained(path)
    return path, model


@pytest.fixture(scope="module")
def exported(tiny_llama, tmp_path_factory):
    path, _ = tiny_llama
    config = BuildConfig(max_batch_size=3, max_seq_len=64, attention_backend="composite", backend="onnx")
    net = Builder(config).build(load_model(path, "float32")).network
    out = export_onnx(net, tmp_path_factory.mktemp("onnx") / "model.onnx")
    return net, out


def _feed(prompts):
    ids, pos, seq, last = [], [], [], []
    for s, p in enumerate(prompts):
        ids += p
        pos += list(range(len(p)))
        seq += [s] * len(p)
        last.append(len(ids) - 1)
    i32 = torch.int32
    return {"input_ids": torch.tensor(ids, dtype=i32), "position_ids": torch.tensor(pos, dtype=i32),
            "seq_ids": torch.tensor(seq, dtype=i32), "last_token_ids": torch.tensor(last, dtype=i32)}


def test_composite_llama_matches_torch_and_transformers(tiny_llama, exported):
    net, path = exported
    _, hf = tiny_llama
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert not [n for n in model.graph.node if n.domain not in ("", "ai.onnx")], "must be plugin-free"
    assert [i.name for i in model.graph.input] == list(net.input_specs)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "num_tokens"
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    prompts = [[3, 14, 15, 92, 65, 35], [8, 9, 7], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]]
    for batch in (prompts[:1], prompts[1:], prompts):  # different dynamic sizes, one session
        feed = {k: v for k, v in _feed(batch).items() if k in net.input_specs}
        ref = TorchExecutor(net).run(feed)["logits"].numpy()
        (got,) = sess.run(["logits"], {k: v.numpy() for k, v in feed.items()})
        np.testing.assert_allclose(got, ref, atol=1e-5, rtol=1e-5)
        with torch.no_grad():
            for b, p in enumerate(batch):
                hf_last = hf(torch.tensor([p])).logits[0, -1].numpy()
                np.testing.assert_allclose(got[b], hf_last, atol=1e-4, rtol=1e-4)


_VENV_POLYGRAPHY = Path(sys.executable).parent / "polygraphy"
POLYGRAPHY = str(_VENV_POLYGRAPHY) if _VENV_POLYGRAPHY.is_file() else shutil.which("polygraphy")


@pytest.mark.skipif(POLYGRAPHY is None, reason="polygraphy CLI not installed")
def test_polygraphy_lists_the_layers(exported):
    _, path = exported
    proc = subprocess.run([POLYGRAPHY, "inspect", "model", str(path), "--show", "layers"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = proc.stdout + proc.stderr
    assert text.count("[Op: ") == len(onnx.load(str(path)).graph.node)
    for name in ("layers.0.attention.qkv.matmul/MatMul", "Softmax", "lm_head.matmul", "logits"):
        assert name in text, name
