"""Quality checks through a built network: per-token log-probabilities and perplexity.

Works with any step network of docs/batch_interface.md built with ``context_logits=True``: a paged
(plugin) network is fed the sequence in chunks of at most its profile's ``num_tokens`` through a
private K/V cache, as a runtime would prefill it; a composite (plugin-free) network gets the
whole sequence in one step. ``run_step`` lets another backend (a TensorRT engine) run the steps;
by default the torch executor runs the network.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import torch

from ..errors import ConfigError
from ..ir.network import Network
from ..ir.symbolic import dim_equal

__all__ = ["token_logprobs", "perplexity"]

RunStep = Callable[[Mapping[str, torch.Tensor]], Mapping[str, torch.Tensor]]


def _max_dim(net: Network, dim: str) -> int:
    return min(p.ranges[dim][2] for p in net.profiles if dim in p.ranges) if net.profiles else 1 << 30


def _check_context_logits(net: Network) -> None:
    logits = net.outputs.get("logits")
    if logits is None or logits.ndim != 2 or not dim_equal(logits.shape[0], net.inputs["input_ids"].shape[0]):
        raise ConfigError(f"network {net.name!r}: perplexity needs a 'logits' output per token; build "
                          "it with context_logits=True")


def _paged_feeds(net: Network, tokens: torch.Tensor, chunk: int,
                 device: str | torch.device = "cpu") -> list[dict[str, torch.Tensor]]:
    spec = net.input_specs["kv_cache"]
    tokens_per_block = int(spec.shape[4])
    num_blocks = math.ceil(len(tokens) / tokens_per_block)
    shape = [num_blocks if isinstance(d, str) else d for d in spec.shape]
    # On the executor's device: a pool fed from elsewhere is copied in for each step, and what a
    # step writes into the copy would be gone by the next chunk.
    cache = torch.zeros(shape, dtype=spec.dtype.torch, device=device)
    i32 = torch.int32
    feeds = []
    for past in range(0, len(tokens), chunk):
        n = min(chunk, len(tokens) - past)
        feeds.append({
            "input_ids": tokens[past:past + n], "position_ids": torch.arange(past, past + n, dtype=i32),
            "seq_lens": torch.tensor([n], dtype=i32), "past_lens": torch.tensor([past], dtype=i32),
            "cu_seqlens": torch.tensor([0, n], dtype=i32),
            "block_tables": torch.arange(math.ceil((past + n) / tokens_per_block), dtype=i32)[None],
            "last_token_ids": torch.tensor([n - 1], dtype=i32), "kv_cache": cache})
    return feeds


def token_logprobs(network: Network, token_ids: Sequence[int] | torch.Tensor, *, device: str = "cpu",
                   run_step: RunStep | None = None, chunk_size: int | None = None) -> torch.Tensor:
    """float64 ``[len - 1]``: ``log p(token[i + 1] | token[:i + 1])`` under the network."""
    _check_context_logits(network)
    tokens = torch.as_tensor(token_ids, dtype=torch.int32).flatten()
    if len(tokens) < 2:
        raise ConfigError("perplexity needs at least 2 tokens")
    if run_step is None:
        from ..backends.torch_executor import TorchExecutor
        run_step = TorchExecutor(network, device).run
    chunk = min(chunk_size or len(tokens), _max_dim(network, "num_tokens"))
    if "kv_cache" in network.inputs:
        feeds = _paged_feeds(network, tokens, chunk, device)
    elif chunk < len(tokens):
        raise ConfigError(f"network {network.name!r} has no K/V cache, so the {len(tokens)} tokens must "
                          f"fit one step, but its profile allows {chunk}")
    else:
        feeds = [{"input_ids": tokens, "position_ids": torch.arange(len(tokens), dtype=torch.int32),
                  "seq_ids": torch.zeros(len(tokens), dtype=torch.int32)}]
    pieces = []
    for feed in feeds:
        pieces.append(run_step(feed)["logits"].double().log_softmax(-1).cpu())
    logprobs = torch.cat(pieces)[:-1]
    return logprobs.gather(1, tokens[1:].long()[:, None]).squeeze(1)


def perplexity(network: Network, token_ids: Sequence[int] | torch.Tensor, *, device: str = "cpu",
               run_step: RunStep | None = None, chunk_size: int | None = None) -> float:
    """``exp(mean negative log-likelihood)`` of ``token_ids`` (each token predicted from its prefix)."""
    lp = token_logprobs(network, token_ids, device=device, run_step=run_step, chunk_size=chunk_size)
    return float(torch.exp(-lp.mean()))
