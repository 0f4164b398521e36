"""GGUF (llama.cpp) checkpoints: metadata -> a Hugging Face style config dict, tensors -> float
tensors under Hugging Face names, so GGUF files go through the same conversion as HF checkpoints.

Quantized tensors (Q4_1, Q8_0, ...) are dequantized to float32 with the ``gguf`` package.
llama.cpp's converter permutes the rows of Llama's q and k projections (from rotate-half to
interleaved RoPE order); :func:`_unpermute` restores Hugging Face's order (the inverse of that
permutation, the same one transformers applies when it loads a GGUF file).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError, ConfigError

__all__ = ["read_gguf"]

# GGUF tensor name (after "blk.{i}.") -> Hugging Face name (after "model.layers.{i}.")
_LAYER_NAMES = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_SUPPORTED = ("llama", "qwen2")
_PERMUTED = ("llama",)  # archs whose q/k rows llama.cpp permutes


def _field(reader: Any, key: str, default: Any = None) -> Any:
    field = reader.fields.get(key)
    if field is None:
        return default
    value = field.contents()
    return value


def _hf_name(gguf_name: str) -> str | None:
    stem, _, kind = gguf_name.rpartition(".")
    if stem.startswith("blk."):
        _, idx, part = stem.split(".", 2)
        hf = _LAYER_NAMES.get(part)
        return None if hf is None else f"model.layers.{idx}.{hf}.{kind}"
    hf = _GLOBAL_NAMES.get(stem)
    return None if hf is None else f"{hf}.{kind}"


def _unpermute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo llama.cpp's row order within each head: rows were ``(half, pair)`` -> ``(pair, half)``."""
    half = w.shape[0] // n_heads // 2
    return w.reshape(n_heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _config(reader: Any, arch: str, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    def get(key: str, default: Any = None) -> Any:
        return _field(reader, f"{arch}.{key}", default)

    heads = int(get("attention.head_count"))
    hidden = int(get("embedding_length"))
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    vocab = get("vocab_size") or (len(tokens.data) if tokens is not None else
                                  tensors["model.embed_tokens.weight"].shape[0])
    cfg: dict[str, Any] = {
        "model_type": arch, "architectures": ["GGUF"], "hidden_size": hidden,
        "intermediate_size": int(get("feed_forward_length")), "num_hidden_layers": int(get("block_count")),
        "num_attention_heads": heads, "num_key_value_heads": int(get("attention.head_count_kv", heads)),
        "head_dim": int(get("attention.key_length", hidden // heads)),
        "max_position_embeddings": int(get("context_length", 2048)),
        "rms_norm_eps": float(get("attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": float(get("rope.freq_base", 10000.0)), "vocab_size": int(vocab),
        "tie_word_embeddings": "lm_head.weight" not in tensors, "hidden_act": "silu",
        "attention_bias": "model.layers.0.self_attn.q_proj.bias" in tensors,
        "bos_token_id": _field(reader, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": _field(reader, "tokenizer.ggml.eos_token_id"),
    }
    scaling = get("rope.scaling.type")
    if scaling not in (None, "none"):
        cfg["rope_scaling"] = {"rope_type": scaling, "factor": float(get("rope.scaling.factor", 1.0)),
                               "original_max_position_embeddings":
                                   int(get("rope.scaling.original_context_length", 0) or 0)}
    return cfg


def read_gguf(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(hf_config_dict, {hf_name: float32 tensor})`` of a GGUF file."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    try:
        reader = GGUFReader(str(path))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable GGUF file ({exc})") from None
    arch = _field(reader, "general.architecture")
    if arch not in _SUPPORTED:
        raise ConfigError(f"{path}: GGUF architecture {arch!r} is not supported; supported: "
                          f"{list(_SUPPORTED)}")
    tensors: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for t in reader.tensors:
        name = _hf_name(t.name)
        if name is None:
            unknown.append(t.name)
            continue
        array = np.array(dequantize(t.data, t.tensor_type), dtype=np.float32)  # copy: the file is mmapped
        tensors[name] = torch.from_numpy(array.reshape(tuple(int(d) for d in reversed(t.shape))))
    if unknown:
        raise CheckpointError(f"{path}: GGUF tensors with no Hugging Face counterpart: {unknown}")
    cfg = _config(reader, arch, tensors)
    if arch in _PERMUTED:
        for name in list(tensors):
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                heads = cfg["num_attention_heads"] if "q_proj" in name else cfg["num_key_value_heads"]
                tensors[name] = _unpermute(tensors[name], heads)
    return cfg, tensors
