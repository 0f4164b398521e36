"""Accuracy of a built (quantized) engine against transformers: what ``trtdsl check ENGINE_DIR``
reports.

The engine's perplexity on fixed English text is compared with the source checkpoint's perplexity in
transformers (float32). A quantized engine passes when the increase stays within the target of its
quantization (:data:`PPL_TARGETS_PCT`, the targets docs/quantization.md measures on SmolLM2); a float
engine when it agrees within float tolerance.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from ..backends.torch_executor import TorchExecutor
from ..ir.network import Network
from ..models.eval import _paged_feeds, token_logprobs

__all__ = ["PPL_TARGETS_PCT", "KV_PPL_TARGETS_PCT", "ppl_target_pct", "engine_logprobs"]

#: Allowed perplexity increase (%) per GEMM quantization mode (None: no target, e.g. int4 RTN).
PPL_TARGETS_PCT: dict[str, float | None] = {"fp8": 1.0, "int8_wo": 0.5, "int4_wo": None,
                                             "int4_awq": 5.0, "int8_sq": 3.0}
#: Allowed perplexity increase (%) of a quantized K/V cache.
KV_PPL_TARGETS_PCT: dict[str, float] = {"fp8": 0.5, "int8": 0.5}
#: A float engine must agree this closely (float32 vs half precision activations).
FLOAT_TOLERANCE_PCT = {"float32": 0.5, "float16": 3.0, "bfloat16": 3.0}


def ppl_target_pct(quantization: Mapping[str, Any] | None, dtype: str = "float32") -> float | None:
    """The perplexity increase (%) allowed for an engine with ``network.metadata["quantization"]``:
    the float tolerance plus the targets of its GEMM mode and K/V cache; ``None`` when its mode has
    no target."""
    total = FLOAT_TOLERANCE_PCT.get(dtype, 3.0)
    if not quantization:
        return total
    mode, kv = quantization.get("mode"), quantization.get("kv_cache_dtype")
    if mode:
        target = PPL_TARGETS_PCT.get(mode)
        if target is None:
            return None
        total += target
    if kv:
        total += KV_PPL_TARGETS_PCT.get(kv, 0.5)
    return total


def engine_logprobs(network: Network, token_ids: Sequence[int], device: str = "cpu") -> torch.Tensor:
    """float64 ``[len - 1]`` log-probabilities of each next token under a step network. A network
    built with ``context_logits`` runs in prefill chunks; one with last-token logits only (what
    ``trtdsl build`` writes by default) runs one token per step, as decoding does."""
    logits = network.outputs.get("logits")
    if logits is not None and logits.ndim == 2 and logits.shape[0] == network.inputs["input_ids"].shape[0]:
        return token_logprobs(network, token_ids, device=device)
    tokens = torch.as_tensor(list(token_ids), dtype=torch.int32)
    run = TorchExecutor(network, device).run
    pieces = [run(feed)["logits"].double().log_softmax(-1).cpu() for feed in _paged_feeds(network, tokens, 1)]
    lp = torch.cat(pieces)[:-1]
    return lp.gather(1, tokens[1:].long()[:, None]).squeeze(1)
