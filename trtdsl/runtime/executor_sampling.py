"""Sampling for the in-flight executor: the rows of one step belong to different requests, each
with its own :class:`~trtdsl.runtime.sampling.SamplingParams` and its own seeded generator that
lives as long as the request (so a seed reproduces a request's tokens whatever else shares its
steps, and across preemptions: the generator advances once per sampled token, never on recompute).

The logits processors are the vectorized ones of :mod:`trtdsl.runtime.sampling`; only the per-step
gathering of parameters differs from its :class:`~trtdsl.runtime.sampling.Sampler`, which is built
for a fixed batch. The draw is done the same way (``multinomial`` over ``exp(log_softmax)`` of the
processed logits) so both give the same tokens for the same seed and logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .sampling import (SamplingParams, apply_bad_words, apply_presence_frequency_penalty,
                       apply_repetition_penalty, apply_temperature, apply_top_k, apply_top_p,
                       token_counts)

__all__ = ["RowSampling", "SampledRows", "sample_rows"]


@dataclass
class RowSampling:
    """One request's sampling state: parameters, generator, and how many top logprobs it wants
    (``None``: no logprobs; ``0``: only the sampled token's)."""

    params: SamplingParams
    generator: torch.Generator
    logprobs: int | None = None

    @property
    def needs_processing(self) -> bool:
        p = self.params
        return (not p.greedy or p.repetition_penalty != 1 or bool(p.presence_penalty)
                or bool(p.frequency_penalty) or bool(p.bad_words))


@dataclass(frozen=True)
class SampledRows:
    """The sampled token of each row, and (for rows that asked) logprobs of the *model's*
    distribution (log-softmax of the raw logits, before penalties/temperature/top-k/top-p, as
    OpenAI-compatible servers report them)."""

    tokens: list[int]
    logprobs: list[float | None]
    top_logprobs: list[dict[int, float] | None]


def _vec(rows: Sequence[RowSampling], name: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.tensor([getattr(r.params, name) for r in rows], dtype=dtype, device=device)


def _process(logits: torch.Tensor, rows: Sequence[RowSampling], histories: Sequence[Sequence[int]],
             generated: Sequence[Sequence[int]]) -> torch.Tensor:
    device = logits.device
    if any(r.params.repetition_penalty != 1 or r.params.presence_penalty or r.params.frequency_penalty
           for r in rows):
        vocab = logits.shape[-1]
        logits = apply_repetition_penalty(logits, token_counts(histories, vocab, device),
                                          _vec(rows, "repetition_penalty", torch.float32, device))
        logits = apply_presence_frequency_penalty(
            logits, token_counts(generated, vocab, device),
            _vec(rows, "presence_penalty", torch.float32, device),
            _vec(rows, "frequency_penalty", torch.float32, device))
    bad = [r.params.bad_words for r in rows]
    if any(bad):
        logits = apply_bad_words(logits, histories, bad)
    logits = apply_temperature(logits, _vec(rows, "temperature", torch.float32, device))
    logits = apply_top_k(logits, _vec(rows, "top_k", torch.int64, device))
    return apply_top_p(logits, _vec(rows, "top_p", torch.float32, device))


def sample_rows(logits: torch.Tensor, rows: Sequence[RowSampling], histories: Sequence[Sequence[int]],
                generated: Sequence[Sequence[int]]) -> SampledRows:
    """Sample one token per row of ``logits [n, vocab]``; ``histories`` (prompt + output) and
    ``generated`` (output) feed the penalties and bad words."""
    logits = logits.float()
    if any(r.needs_processing for r in rows):
        processed = _process(logits, rows, histories, generated)
        probs = processed.log_softmax(dim=-1).exp()
        tokens = processed.argmax(dim=-1)
        for i, r in enumerate(rows):
            if not r.params.greedy:
                tokens[i] = torch.multinomial(probs[i], 1, generator=r.generator)[0]
    else:  # every row greedy without penalties: one argmax, no copies
        tokens = logits.argmax(dim=-1)
    token_list = [int(t) for t in tokens.tolist()]
    wanted = [i for i, r in enumerate(rows) if r.logprobs is not None]
    chosen: list[float | None] = [None] * len(rows)
    tops: list[dict[int, float] | None] = [None] * len(rows)
    if wanted:
        idx = torch.tensor(wanted, dtype=torch.long, device=logits.device)
        raw = logits.index_select(0, idx).log_softmax(dim=-1)
        picked = raw.gather(-1, tokens.index_select(0, idx)[:, None].long())[:, 0].tolist()
        for j, i in enumerate(wanted):
            chosen[i] = float(picked[j])
            k = int(rows[i].logprobs or 0)
            if k > 0:
                values, ids = raw[j].topk(min(k, raw.shape[-1]))
                tops[i] = {int(t): float(v) for t, v in zip(ids.tolist(), values.tolist())}
    return SampledRows(token_list, chosen, tops)
