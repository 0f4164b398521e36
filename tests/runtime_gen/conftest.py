"""Tiny random checkpoints made with transformers (no model hub), built once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


def make_tiny_llama(path: Path, vocab: int = 256, layers: int = 2, tie: bool = False) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      rms_norm_eps=1e-5, rope_theta=5000.0, tie_word_embeddings=tie, bos_token_id=1,
                      eos_token_id=2)
    torch.manual_seed(1234)
    LlamaForCausalLM(cfg).eval().save_pretrained(path)
    return path


def make_tiny_tokenizer(path: Path, vocab: int = 256) -> None:
    """A byte-level BPE tokenizer trained on pydoc text, with a chat template."""
    from pydoc_data.topics import topics
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([topics[k] for k in sorted(topics)[:20]], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.chat_template = "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}" \
                         "{% if add_generation_prompt %}assistant:{% endif %}"
    fast.save_pretrained(path)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    path = make_tiny_llama(tmp_path_factory.mktemp("tiny_llama"), vocab=300)
    make_tiny_tokenizer(path, vocab=300)
    return path


@pytest.fixture(scope="session")
def tiny_engine(tiny_llama, tmp_path_factory) -> Path:
    from trtdsl.builder import BuildConfig, build_from_checkpoint
    out = tmp_path_factory.mktemp("tiny_engine")
    build_from_checkpoint(tiny_llama, out, BuildConfig(max_batch_size=3, max_seq_len=128, max_num_tokens=48))
    return out
