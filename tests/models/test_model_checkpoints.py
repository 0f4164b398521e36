"""Checkpoint formats, dtype conversion, config conversion and the errors of bad checkpoints/configs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers as tf
from safetensors.torch import load_file, save_file

from trtdsl.errors import CheckpointError, ConfigError
from trtdsl.models import MODEL_REGISTRY, GPT2LMHeadModel, LlamaForCausalLM, from_hugging_face

from _model_helpers import TOKENS_PER_BLOCK, TinyPagedRunner, assert_logits_close, hf_last_logits

TINY = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
PROMPTS = [[3, 1, 4, 1, 5, 9, 2, 6], [5, 3, 5]]


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: Any) -> tuple[Any, Path]:
    torch.manual_seed(7)
    hf = tf.LlamaForCausalLM(tf.LlamaConfig(**TINY)).eval()
    path = tmp_path_factory.mktemp("llama")
    hf.save_pretrained(path)
    return hf, path


def _logits(model: Any) -> torch.Tensor:
    net = model.build_network(max_batch_size=2, max_num_tokens=32, max_seq_len=32,
                              tokens_per_block=TOKENS_PER_BLOCK)
    rows = TinyPagedRunner(model, net).step(dict(enumerate(PROMPTS)))
    return torch.stack([rows[i] for i in range(len(PROMPTS))])


def _copy_config(src: Path, dst: Path, **changes: Any) -> dict:
    dst.mkdir(parents=True, exist_ok=True)
    cfg = {**json.loads((src / "config.json").read_text()), **changes}
    (dst / "config.json").write_text(json.dumps(cfg))
    return cfg


def test_missing_extra_and_misshaped_tensors_fail_with_one_error(llama_dir: Any, tmp_path: Path) -> None:
    _, src = llama_dir
    tensors = load_file(str(src / "model.safetensors"))
    del tensors["model.layers.1.self_attn.k_proj.weight"]
    tensors["model.layers.0.mlp.extra_proj.weight"] = torch.zeros(4, 4)
    tensors["model.layers.0.mlp.down_proj.weight"] = torch.zeros(64, 100)
    _copy_config(src, tmp_path)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError) as err:
        from_hugging_face(tmp_path)
    msg = str(err.value)
    assert "3 problems" in msg
    assert "missing: model.layers.1.self_attn.k_proj.weight" in msg
    assert "unexpected: model.layers.0.mlp.extra_proj.weight" in msg
    assert "shape mismatch: model.layers.0.mlp.down_proj.weight (64, 100)" in msg


def test_sharded_safetensors_and_bin_load_the_same_weights(llama_dir: Any, tmp_path: Path) -> None:
    hf, src = llama_dir
    want = hf_last_logits(hf, PROMPTS)
    sharded = tmp_path / "sharded"
    hf.save_pretrained(sharded, max_shard_size="100KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    assert_logits_close(_logits(from_hugging_face(sharded)), want)

    binary = tmp_path / "bin"
    _copy_config(src, binary)
    torch.save(hf.state_dict(), binary / "pytorch_model.bin")
    assert_logits_close(_logits(from_hugging_face(binary)), want)


def test_weights_are_converted_to_the_build_dtype(llama_dir: Any) -> None:
    hf, src = llama_dir
    model = from_hugging_face(src, dtype="bfloat16")
    assert model.config.dtype == "bfloat16"
    assert {v.dtype for v in model.state_dict().values()} == {torch.bfloat16}
    net = model.build_network(max_batch_size=2, max_num_tokens=32, max_seq_len=32,
                              tokens_per_block=TOKENS_PER_BLOCK)
    assert net.input_specs["kv_cache"].dtype.value == "bfloat16"
    got = torch.stack(list(TinyPagedRunner(model, net).step(dict(enumerate(PROMPTS))).values()))
    assert got.dtype == torch.float32  # logits are float32 whatever the build dtype
    want = hf_last_logits(hf, PROMPTS)
    assert float((got - want).abs().max()) < 0.05 * max(1.0, float(want.abs().max()))


def test_config_round_trip_and_from_config(llama_dir: Any) -> None:
    hf, src = llama_dir
    model = from_hugging_face(src)
    cls = type(model)
    config = cls.config_from_dict(json.loads(json.dumps(model.config.to_dict())))
    assert config == model.config
    rebuilt = cls.from_config(config)
    rebuilt.load_state_dict(model.state_dict())
    assert_logits_close(_logits(rebuilt), hf_last_logits(hf, PROMPTS))
    assert MODEL_REGISTRY["llama"] is MODEL_REGISTRY["mistral"] is MODEL_REGISTRY["qwen2"] is cls
    assert MODEL_REGISTRY["gpt2"] is GPT2LMHeadModel


def test_network_inputs_follow_the_batch_interface(llama_dir: Any) -> None:
    model = from_hugging_face(llama_dir[1])
    net = model.build_network(max_batch_size=8, max_num_tokens=256, max_seq_len=100, tokens_per_block=16)
    specs = {n: (s.dtype.value, s.shape) for n, s in net.input_specs.items()}
    assert list(specs) == ["input_ids", "position_ids", "seq_lens", "past_lens", "cu_seqlens",
                           "block_tables", "last_token_ids", "kv_cache"]
    assert specs["input_ids"] == ("int32", ("num_tokens",))
    assert specs["block_tables"] == ("int32", ("batch", "max_blocks_per_seq"))
    assert specs["kv_cache"] == ("float32", (2, "num_blocks", 2, 2, 16, 16))
    assert model.kv_cache_shape(10, 16) == (2, 10, 2, 2, 16, 16)
    assert len(net.profiles) == 1
    ranges = net.profiles[0].ranges
    assert ranges["num_tokens"][2] == 256 and ranges["batch"][2] == 8
    assert ranges["max_blocks_per_seq"][2] == 7  # ceil(100 / 16)
    out = net.outputs["logits"]
    assert out.dtype.value == "float32" and str(out.shape[0]) == "batch" and out.shape[1] == 256


def test_unsupported_configs_raise_config_error(llama_dir: Any, tmp_path: Path) -> None:
    _, src = llama_dir
    cases = {
        "yarn": dict(rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}),
        "bert": dict(model_type="bert", architectures=["BertModel"]),
        "act": dict(hidden_act="gelu"),
    }
    expected = {"yarn": "unsupported RoPE scaling type 'yarn'", "bert": "unsupported architecture",
                "act": "hidden_act='gelu'"}
    for name, changes in cases.items():
        path = tmp_path / name
        _copy_config(src, path, **changes)
        (path / "model.safetensors").symlink_to(src / "model.safetensors")
        with pytest.raises(ConfigError, match=expected[name]):
            from_hugging_face(path)


def test_sliding_window_shorter_than_max_seq_len_is_refused(tmp_path: Path) -> None:
    hf = tf.MistralForCausalLM(tf.MistralConfig(**TINY, sliding_window=16))
    hf.save_pretrained(tmp_path)
    model = from_hugging_face(tmp_path)
    model.build_network(max_batch_size=1, max_num_tokens=16, max_seq_len=16)
    with pytest.raises(ConfigError, match="sliding_window=16 is shorter than max_seq_len=64"):
        model.build_network(max_batch_size=1, max_num_tokens=16, max_seq_len=64)


def test_gpt2_positions_limit_and_original_checkpoint_names(tmp_path: Path) -> None:
    hf = tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=128, n_embd=32, n_layer=1, n_head=2, n_positions=32))
    hf.eval()
    # OpenAI's checkpoints: no "transformer." prefix, causal-mask buffers saved as weights.
    state = {k.removeprefix("transformer."): v for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    state["h.0.attn.bias"] = torch.ones(1, 1, 32, 32)
    (tmp_path / "config.json").write_text(hf.config.to_json_string())
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "model.safetensors"))
    model = from_hugging_face(tmp_path)
    assert isinstance(model, GPT2LMHeadModel)
    assert model.lm_head.weight is model.embed.weight
    with pytest.raises(ConfigError, match="exceeds the 32 learned positions"):
        model.build_network(max_batch_size=1, max_num_tokens=8, max_seq_len=64)
    net = model.build_network(max_batch_size=2, max_num_tokens=32, max_seq_len=32,
                              tokens_per_block=TOKENS_PER_BLOCK)
    rows = TinyPagedRunner(model, net).step(dict(enumerate(PROMPTS)))
    assert_logits_close(torch.stack([rows[0], rows[1]]), hf_last_logits(hf, PROMPTS))


def test_llama_class_rejects_gpt2_config() -> None:
    with pytest.raises(ConfigError, match="model_type 'gpt2'"):
        LlamaForCausalLM.config_from_hf({"model_type": "gpt2"})


def test_half_precision_kv_cache(llama_dir: Any) -> None:
    hf, src = llama_dir
    model = from_hugging_face(src)
    net = model.build_network(max_batch_size=2, max_num_tokens=32, max_seq_len=32,
                              tokens_per_block=TOKENS_PER_BLOCK, kv_cache_dtype="float16")
    runner = TinyPagedRunner(model, net)
    assert runner.kv_cache.dtype == torch.float16
    got = torch.stack(list(runner.step(dict(enumerate(PROMPTS))).values()))
    want = hf_last_logits(hf, PROMPTS)
    assert float((got - want).abs().max()) < 1e-2 * max(1.0, float(want.abs().max()))
    assert runner.kv_cache.abs().sum() > 0  # the step wrote its K/V into the pool
