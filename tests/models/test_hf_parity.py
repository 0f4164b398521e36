"""Logits and greedy generations of tiny random checkpoints match Hugging Face transformers.

Each case saves a tiny random HF model with ``save_pretrained`` and loads it with
``trtdsl.models.from_hugging_face``; the reference is the HF model itself (float32)."""

from __future__ import annotations

from typing import Any, Callable

import pytest
import torch
import transformers as tf

from trtdsl.backends.torch_executor import TorchExecutor
from trtdsl.models import from_hugging_face

from _model_helpers import (TOKENS_PER_BLOCK, TinyPagedRunner, assert_logits_close, greedy_paged,
                            hf_greedy, hf_last_logits)

VOCAB = 256
TINY = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=128)
PROMPTS = [[1, 5, 9, 200, 3, 4, 7], [8, 9], [100 + i for i in range(13)]]
GEN_STEPS = 32
MAX_SEQ = 64


def _llama3_gqa() -> Any:
    return tf.LlamaForCausalLM(tf.LlamaConfig(
        **TINY, num_key_value_heads=2, rope_parameters={
            "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 16}))


def _llama_tied_linear_mqa() -> Any:  # TinyLlama/SmolLM2-like: tied head; linear RoPE scaling; MQA
    return tf.LlamaForCausalLM(tf.LlamaConfig(
        **TINY, num_key_value_heads=1, tie_word_embeddings=True,
        rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}))


def _llama_dynamic_ntk() -> Any:  # generation runs past the 16 "original" positions
    return tf.LlamaForCausalLM(tf.LlamaConfig(
        **{**TINY, "max_position_embeddings": 16}, num_key_value_heads=4,
        rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}))


def _qwen2() -> Any:
    return tf.Qwen2ForCausalLM(tf.Qwen2Config(**TINY, num_key_value_heads=2, rope_theta=1000000.0,
                                              tie_word_embeddings=False))


def _mistral() -> Any:
    return tf.MistralForCausalLM(tf.MistralConfig(**TINY, num_key_value_heads=2, sliding_window=128))


def _gpt2() -> Any:
    return tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4,
                                            n_positions=128))


CASES: dict[str, Callable[[], Any]] = {
    "llama3_gqa": _llama3_gqa, "llama_tied_linear_mqa": _llama_tied_linear_mqa,
    "llama_dynamic_ntk": _llama_dynamic_ntk, "qwen2": _qwen2, "mistral": _mistral, "gpt2": _gpt2,
}
# Variants whose only difference from a generation-tested case is configuration the logits tests
# already cover (keeps the CPU suite fast).
NO_GENERATION_TEST = {"llama_tied_linear_mqa"}


@pytest.fixture(scope="module", params=sorted(CASES))
def pair(request: Any, tmp_path_factory: Any) -> tuple[Any, Any]:
    torch.manual_seed(1234)
    hf = CASES[request.param]().eval()
    path = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(path)
    return hf, from_hugging_face(path)


def _network(model: Any, **kw: Any) -> Any:
    args = dict(max_batch_size=4, max_num_tokens=64, max_seq_len=MAX_SEQ, tokens_per_block=TOKENS_PER_BLOCK)
    return model.build_network(**{**args, **kw})


def test_packed_step_logits_match_hf(pair: tuple[Any, Any]) -> None:
    hf, model = pair
    runner = TinyPagedRunner(model, _network(model))
    logits = runner.step(dict(enumerate(PROMPTS)))
    got = torch.stack([logits[i] for i in range(len(PROMPTS))])
    assert got.dtype == torch.float32 and got.shape == (3, VOCAB)
    assert_logits_close(got, hf_last_logits(hf, PROMPTS))


@pytest.mark.parametrize("pair", sorted(set(CASES) - NO_GENERATION_TEST), indirect=True)
def test_greedy_generation_matches_hf(pair: tuple[Any, Any]) -> None:
    """32 greedy tokens per prompt: a context step, then 1-token steps; the third prompt's context
    joins one step late, so that step mixes generation tokens with a context chunk."""
    hf, model = pair
    got = greedy_paged(model, _network(model), PROMPTS, GEN_STEPS)
    want = [hf_greedy(hf, p, GEN_STEPS) for p in PROMPTS]
    assert got == want


def test_context_logits_and_composite_backend_match_hf(pair: tuple[Any, Any]) -> None:
    """Every token's logits, from the paged network and from the plugin-free composite one."""
    hf, model = pair
    with torch.no_grad():
        want = torch.cat([hf(torch.tensor([p])).logits[0].float() for p in PROMPTS])
    paged = TinyPagedRunner(model, _network(model, context_logits=True)).run(dict(enumerate(PROMPTS)))
    assert_logits_close(paged, want)

    ids = [t for p in PROMPTS for t in p]
    seq_ids = [i for i, p in enumerate(PROMPTS) for _ in p]
    positions = [j for p in PROMPTS for j in range(len(p))]
    composite = _network(model, context_logits=True, attention_backend="composite")
    assert "kv_cache" not in composite.inputs
    assert not any(layer.kind.value == "plugin" for layer in composite.layers)
    i32 = torch.int32
    out = TorchExecutor(composite).run({"input_ids": torch.tensor(ids, dtype=i32),
                                        "position_ids": torch.tensor(positions, dtype=i32),
                                        "seq_ids": torch.tensor(seq_ids, dtype=i32)})["logits"]
    assert_logits_close(out, want)
    last = _network(model, attention_backend="composite")
    cu = torch.tensor([len(p) for p in PROMPTS]).cumsum(0) - 1
    out_last = TorchExecutor(last).run({"input_ids": torch.tensor(ids, dtype=i32),
                                        "position_ids": torch.tensor(positions, dtype=i32),
                                        "seq_ids": torch.tensor(seq_ids, dtype=i32),
                                        "last_token_ids": cu.to(i32)})["logits"]
    assert_logits_close(out_last, want[cu])

