"""The runtime: generation over engines (``ModelRunner``), the K/V block manager, step packing,
sampling and (where present) the in-flight batching executor.

Names are imported lazily so ``import trtdsl.runtime.kv_cache`` stays light."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["ModelRunner", "GenerationSession", "SessionRequest", "SamplingParams", "Sampler", "Executor"]

_LAZY = {
    "ModelRunner": ".model_runner",
    "GenerationSession": ".session",
    "SessionRequest": ".session",
    "SamplingParams": ".sampling",
    "Sampler": ".sampling",
    "Executor": ".executor",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name], __name__)
        return getattr(module, name)
    raise AttributeError(f"module 'trtdsl.runtime' has no attribute {name!r}")
