"""Model families as trtdsl Modules, loadable from Hugging Face checkpoints and GGUF files.

>>> from trtdsl.models import from_hugging_face
>>> model = from_hugging_face("path/to/checkpoint", dtype="float16")      # doctest: +SKIP
>>> net = model.build_network(max_batch_size=8, max_num_tokens=256, max_seq_len=1024)  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .base import BUILD_INPUTS, COMPOSITE_INPUTS, CausalLM
from .checkpoint import is_gguf, read_hf_config
from .config import ModelConfig
from .gpt2 import GPT2LMHeadModel
from .llama import LlamaForCausalLM

__all__ = ["MODEL_REGISTRY", "from_hugging_face", "model_class_for", "CausalLM", "ModelConfig",
           "LlamaForCausalLM", "GPT2LMHeadModel", "BUILD_INPUTS", "COMPOSITE_INPUTS"]

# Keys are Hugging Face model_types (and trtdsl architecture names); aliases share a class.
MODEL_REGISTRY: dict[str, type[CausalLM]] = {
    "llama": LlamaForCausalLM,
    "mistral": LlamaForCausalLM,
    "qwen2": LlamaForCausalLM,
    "gpt2": GPT2LMHeadModel,
}


def model_class_for(hf_config: dict[str, Any]) -> type[CausalLM]:
    """The class for a ``config.json`` dict (by ``model_type``, else ``architectures``)."""
    model_type = hf_config.get("model_type")
    if model_type in MODEL_REGISTRY:
        return MODEL_REGISTRY[model_type]
    by_arch = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral",
               "Qwen2ForCausalLM": "qwen2", "GPT2LMHeadModel": "gpt2"}
    for arch in hf_config.get("architectures") or ():
        if arch in by_arch:
            return MODEL_REGISTRY[by_arch[arch]]
    raise ConfigError(f"unsupported architecture: model_type={model_type!r}, architectures="
                      f"{hf_config.get('architectures')}; supported model types: {sorted(MODEL_REGISTRY)}")


def from_hugging_face(path: str | Path, dtype: Any = "float32") -> CausalLM:
    """Load a Hugging Face checkpoint directory or a ``.gguf`` file as the matching trtdsl model,
    with weights converted to ``dtype``."""
    if is_gguf(path):
        from .gguf import read_gguf
        hf_config, tensors = read_gguf(path)
        cls = model_class_for(hf_config)
        model = cls.from_config(cls.config_from_hf(hf_config, dtype))
        model.load_hf_tensors(tensors, source=str(path))
        return model
    return model_class_for(read_hf_config(path)).from_hugging_face(path, dtype)
