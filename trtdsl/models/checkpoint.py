"""Reading Hugging Face checkpoints from disk: ``config.json`` and the weights, as a single or
sharded safetensors file, a single or sharded ``pytorch_model.bin`` (``torch.load(weights_only=True)``,
which cannot run code), or a GGUF file (:mod:`trtdsl.models.gguf`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, ConfigError

__all__ = ["read_hf_config", "read_hf_tensors", "is_gguf"]

_SINGLE = ("model.safetensors", "pytorch_model.bin")
_INDEX = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def is_gguf(path: str | Path) -> bool:
    return Path(path).suffix.lower() == ".gguf"


def read_hf_config(path: str | Path) -> dict[str, Any]:
    """The ``config.json`` dict of a checkpoint directory."""
    file = Path(path) / "config.json"
    if not file.is_file():
        raise ConfigError(f"{path}: no config.json (expected a Hugging Face checkpoint directory or a "
                          ".gguf file)")
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{file}: not valid JSON ({exc})") from None


def _load_file(file: Path) -> dict[str, torch.Tensor]:
    if not file.is_file():
        raise CheckpointError(f"checkpoint shard {file} is listed in the index but does not exist")
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(file), device="cpu")
    try:
        state = torch.load(str(file), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip errors have many types; all mean "unreadable"
        raise CheckpointError(f"{file}: cannot be read with torch.load(weights_only=True): {exc}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{file}: holds a {type(state).__name__}, not a state dict")
    return state


def read_hf_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint directory, by its Hugging Face name (safetensors preferred)."""
    root = Path(path)
    for name in _SINGLE:
        if (root / name).is_file():
            return _load_file(root / name)
    for name in _INDEX:
        index_file = root / name
        if index_file.is_file():
            weight_map = json.loads(index_file.read_text()).get("weight_map", {})
            tensors: dict[str, torch.Tensor] = {}
            for shard in sorted(set(weight_map.values())):
                tensors.update(_load_file(root / shard))
            return tensors
    found = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
    raise CheckpointError(f"{path}: no weights found; expected one of {list(_SINGLE + _INDEX)} "
                          f"(directory holds {found})")
