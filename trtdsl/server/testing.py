"""A tiny engine with a real tokenizer, for serving tests, ``tools/soak.py`` and smoke benchmarks.

The model is a random-weight Llama from ``transformers`` (no hub); the tokenizer is byte-level
(every byte is a token, ids 0..255, plus ``<|im_start|>``, ``<|im_end|>`` and ``<|endoftext|>``) with
a ChatML chat template, so any text round-trips and chat requests work offline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["build_tiny_engine", "byte_tokenizer", "CHATML_TEMPLATE"]

CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def byte_tokenizer() -> Any:
    """A ``PreTrainedTokenizerFast``: byte-level BPE without merges, EOS ``<|im_end|>`` (id 258)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    byte_to_char = sorted(alphabet, key=lambda ch: _byte_of(ch))
    vocab = {ch: i for i, ch in enumerate(byte_to_char)}
    for j, special in enumerate(_SPECIALS):
        vocab[special] = 256 + j
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(_SPECIALS))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>",
                                   eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = CHATML_TEMPLATE
    return fast


def _byte_of(ch: str) -> int:
    # ByteLevel maps bytes to printable chars (GPT-2's table); invert it for a byte-ordered vocab.
    table = {}
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    for b, c in zip(bs, cs):
        table[chr(c)] = b
    return table[ch]


def build_tiny_engine(out_dir: str | Path, *, hidden_size: int = 32, num_layers: int = 2,
                      num_heads: int = 4, num_kv_heads: int = 2, intermediate_size: int = 64,
                      vocab_size: int = 272, max_batch_size: int = 8, max_input_len: int = 192,
                      max_seq_len: int = 256, max_num_tokens: int | None = 256,
                      tokens_per_block: int = 8, seed: int = 0, dtype: str = "float32") -> Path:
    """Build a random tiny Llama engine (with the byte tokenizer) into ``out_dir``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from ..builder import BuildConfig, build_from_checkpoint
    out = Path(out_dir)
    ckpt = out.parent / (out.name + "_checkpoint")
    tok = byte_tokenizer()
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
                      num_hidden_layers=num_layers, num_attention_heads=num_heads,
                      num_key_value_heads=num_kv_heads, max_position_embeddings=max_seq_len,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    gen = torch.random.fork_rng()
    with gen:
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg).eval()
        # Random init is nearly uniform over the vocabulary; sharpen it so greedy decoding has
        # clear winners and float noise between batch shapes cannot flip an argmax.
        with torch.no_grad():
            model.lm_head.weight.mul_(8.0)
    model.save_pretrained(ckpt)
    tok.save_pretrained(ckpt)
    build_from_checkpoint(ckpt, out, BuildConfig(
        max_batch_size=max_batch_size, max_input_len=max_input_len, max_seq_len=max_seq_len,
        max_num_tokens=max_num_tokens, tokens_per_block=tokens_per_block, dtype=dtype))
    return out
