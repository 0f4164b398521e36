"""A tiny random Llama checkpoint (transformers, no hub), shared by the builder/CLI tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(99)
    path = tmp_path_factory.mktemp("tiny_llama_builder")
    LlamaForCausalLM(cfg).eval().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def int4_llama_dir(tmp_path_factory) -> Path:
    """Hidden size 128: the smallest whose GEMMs the int4 tile-16 layout takes (k % 128 == 0)."""
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=False)
    torch.manual_seed(5)
    path = tmp_path_factory.mktemp("int4_llama")
    LlamaForCausalLM(cfg).eval().save_pretrained(path)
    return path


@pytest.fixture
def generate_from_saved(tmp_path):
    """``generate_from_saved(engine, name, prompts, max_new_tokens, **kw)``: save the engine under
    tmp_path/name, load it back as a ModelRunner (the path users take) and return greedy
    ``generate`` output with generation logits."""
    from trtdsl.runtime.model_runner import ModelRunner

    def generate(engine, name: str, prompts: list[list[int]], max_new_tokens: int, **kwargs) -> dict:
        engine.save(tmp_path / name)
        runner = ModelRunner.from_dir(tmp_path / name, **kwargs)
        try:
            return runner.generate(prompts, max_new_tokens=max_new_tokens, end_id=-1, top_k=1,
                                   output_generation_logits=True)
        finally:
            runner.close()
    return generate
