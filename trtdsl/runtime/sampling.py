"""Sampling on torch tensors, vectorized over the batch: every request carries its own parameters.

Order, as in Hugging Face's ``generate``: repetition penalty (over prompt + generated tokens),
presence/frequency penalties (OpenAI-style, over generated tokens), bad words, then temperature,
top-k, top-p, and a draw from each request's own seeded ``torch.Generator`` (so a fixed seed
reproduces a request's tokens whatever else is in the batch). ``temperature == 0`` or ``top_k == 1``
is greedy (argmax, first index on ties).

>>> params = [SamplingParams(temperature=0.8, top_p=0.9, seed=1), SamplingParams()]
>>> sampler = Sampler(params, vocab_size=32000, device="cpu")
>>> tokens, logprobs = sampler.sample(logits, histories, generated)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from ..errors import ConfigError

__all__ = ["SamplingParams", "Sampler", "apply_repetition_penalty", "apply_presence_frequency_penalty",
           "apply_bad_words", "apply_temperature", "apply_top_k", "apply_top_p", "token_counts",
           "matches_stop"]

_NEG_INF = float("-inf")


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling parameters.

    Attributes:
        temperature: divides the logits; 0 means greedy.
        top_k: keep the k most likely tokens (0 = all; 1 = greedy).
        top_p: keep the smallest set of most likely tokens whose probability reaches top_p (1 = all).
        repetition_penalty: >1 discourages tokens already in the prompt or output (HF/CTRL style:
            positive logits divided, negative multiplied).
        presence_penalty: subtracted once from the logit of every token already generated.
        frequency_penalty: subtracted per occurrence of a token in the generated text.
        bad_words: token sequences that must never be completed (their last token is banned when
            the output ends with the rest of the sequence).
        seed: seed of this request's generator (None: a seed drawn from torch's default generator).
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    bad_words: tuple[tuple[int, ...], ...] = field(default=())
    seed: int | None = None

    def __post_init__(self) -> None:
        problems = []
        if not self.temperature >= 0:
            problems.append(f"temperature must be >= 0, got {self.temperature}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            problems.append(f"top_k must be an int >= 0, got {self.top_k!r}")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1], got {self.top_p}")
        if not self.repetition_penalty > 0:
            problems.append(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if problems:
            raise ConfigError("sampling: " + "; ".join(problems))
        object.__setattr__(self, "bad_words", tuple(tuple(int(t) for t in w) for w in self.bad_words if len(w)))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1


# -- logits processors (each works on a [batch, vocab] float tensor, one parameter per row) --------
def token_counts(sequences: Sequence[Sequence[int]], vocab_size: int, device: torch.device | str) -> torch.Tensor:
    """``[batch, vocab]`` int32 occurrence counts of each token in each sequence."""
    counts = torch.zeros(len(sequences), vocab_size, dtype=torch.int32, device=device)
    for row, seq in enumerate(sequences):
        if len(seq):
            ids = torch.as_tensor(list(seq), dtype=torch.int64, device=device)
            counts[row].index_add_(0, ids, torch.ones_like(ids, dtype=torch.int32))
    return counts


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    """``seen [batch, vocab]`` bool/ints (token occurred); ``penalty [batch]``."""
    p = penalty.to(logits.dtype)[:, None]
    penalized = torch.where(logits < 0, logits * p, logits / p)
    return torch.where(seen > 0, penalized, logits)


def apply_presence_frequency_penalty(logits: torch.Tensor, counts: torch.Tensor, presence: torch.Tensor,
                                     frequency: torch.Tensor) -> torch.Tensor:
    """OpenAI's penalties over generated-token ``counts [batch, vocab]``."""
    c = counts.to(logits.dtype)
    return logits - presence.to(logits.dtype)[:, None] * (c > 0).to(logits.dtype) - \
        frequency.to(logits.dtype)[:, None] * c


def apply_bad_words(logits: torch.Tensor, sequences: Sequence[Sequence[int]],
                    bad_words: Sequence[Sequence[Sequence[int]]]) -> torch.Tensor:
    """Ban the last token of every bad word whose prefix ends ``sequences[row]``."""
    rows: list[int] = []
    cols: list[int] = []
    for row, (seq, words) in enumerate(zip(sequences, bad_words)):
        for word in words:
            prefix = list(word[:-1])
            if not prefix or (len(seq) >= len(prefix) and list(seq[len(seq) - len(prefix):]) == prefix):
                rows.append(row)
                cols.append(word[-1])
    if rows:
        logits = logits.clone()
        logits[torch.tensor(rows), torch.tensor(cols)] = _NEG_INF
    return logits


def apply_temperature(logits: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """Divide each row by its temperature (rows with temperature 0 are left for argmax)."""
    t = torch.where(temperature > 0, temperature, torch.ones_like(temperature)).to(logits.dtype)
    return logits / t[:, None]


def apply_top_k(logits: torch.Tensor, top_k: torch.Tensor) -> torch.Tensor:
    """Keep, per row, every logit >= the row's k-th largest (``k == 0``: keep all)."""
    vocab = logits.shape[-1]
    k = torch.where(top_k > 0, top_k.clamp(max=vocab), torch.full_like(top_k, vocab)).long()
    if bool((k >= vocab).all()):
        return logits
    sorted_desc = logits.sort(dim=-1, descending=True).values
    kth = sorted_desc.gather(-1, (k - 1)[:, None])
    return logits.masked_fill(logits < kth, _NEG_INF)


def apply_top_p(logits: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Nucleus filtering: drop the least likely tokens whose cumulative probability stays within
    ``1 - top_p``; the most likely token is always kept."""
    if bool((top_p >= 1).all()):
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=False)
    cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove = cum <= (1 - top_p.to(cum.dtype))[:, None]
    remove[:, -1] = False
    mask = remove.scatter(-1, order, remove)
    return logits.masked_fill(mask, _NEG_INF)


def matches_stop(tokens: Sequence[int], stop_words: Sequence[Sequence[int]]) -> bool:
    """Whether ``tokens`` ends with one of the stop sequences."""
    for word in stop_words:
        n = len(word)
        if n and len(tokens) >= n and list(tokens[-n:]) == list(word):
            return True
    return False


class Sampler:
    """Samples the next token of every row of a ``[batch, vocab]`` logits tensor.

    Built once per batch of requests (the parameters become tensors once); :meth:`sample` is called
    every step with the rows of the requests still running (``rows`` picks them)."""

    def __init__(self, params: Sequence[SamplingParams], vocab_size: int, device: torch.device | str = "cpu"):
        self.params = list(params)
        self.vocab_size = vocab_size
        self.device = torch.device(device)

        def vec(name: str, dtype: torch.dtype) -> torch.Tensor:
            return torch.tensor([getattr(p, name) for p in self.params], dtype=dtype, device=self.device)

        self.temperature = vec("temperature", torch.float32)
        self.top_k = vec("top_k", torch.int64)
        self.top_p = vec("top_p", torch.float32)
        self.repetition = vec("repetition_penalty", torch.float32)
        self.presence = vec("presence_penalty", torch.float32)
        self.frequency = vec("frequency_penalty", torch.float32)
        self.greedy = torch.tensor([p.greedy for p in self.params], device=self.device)
        self.generators = []
        for p in self.params:
            seed = p.seed if p.seed is not None else int(torch.randint(0, 2**62, (1,)).item())
            self.generators.append(torch.Generator(device=self.device).manual_seed(seed))
        self._any_penalty = any(p.repetition_penalty != 1 or p.presence_penalty or p.frequency_penalty
                                for p in self.params)

    def process(self, logits: torch.Tensor, rows: Sequence[int], histories: Sequence[Sequence[int]],
                generated: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Processed logits of requests ``rows``: ``(scaled, filtered)`` where ``scaled`` has the
        penalties, bad words and temperature applied and ``filtered`` also top-k and top-p.
        ``histories`` are prompt + generated tokens, per row."""
        idx = torch.as_tensor(list(rows), dtype=torch.long, device=self.device)
        logits = logits.float()
        if self._any_penalty:
            logits = apply_repetition_penalty(logits, token_counts(histories, logits.shape[-1], self.device),
                                              self.repetition[idx])
            logits = apply_presence_frequency_penalty(
                logits, token_counts(generated, logits.shape[-1], self.device), self.presence[idx],
                self.frequency[idx])
        bad = [self.params[r].bad_words for r in rows]
        if any(bad):
            logits = apply_bad_words(logits, histories, bad)
        scaled = apply_temperature(logits, self.temperature[idx])
        return scaled, apply_top_p(apply_top_k(scaled, self.top_k[idx]), self.top_p[idx])

    def sample(self, logits: torch.Tensor, rows: Sequence[int], histories: Sequence[Sequence[int]],
               generated: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Next token ``[n]`` (int64) and its log-probability ``[n]`` for requests ``rows`` whose
        logits are ``logits [n, vocab]``. The log-probability is taken before top-k/top-p truncation
        (after penalties and temperature), so greedy decoding reports the model's own probability."""
        idx = torch.as_tensor(list(rows), dtype=torch.long, device=self.device)
        if bool(self.greedy[idx].all()) and not self._any_penalty and not any(self.params[r].bad_words for r in rows):
            # Greedy fast path: no filtering is needed to take an argmax (saves a vocab-wide sort).
            tokens = logits.float().argmax(dim=-1)
            return tokens, logits.float().log_softmax(dim=-1).gather(-1, tokens[:, None])[:, 0]
        scaled, filtered = self.process(logits, rows, histories, generated)
        tokens = filtered.argmax(dim=-1)
        probs = filtered.softmax(dim=-1)
        for i, r in enumerate(rows):
            if not bool(self.greedy[r]):
                tokens[i] = torch.multinomial(probs[i], 1, generator=self.generators[r])[0]
        return tokens, scaled.log_softmax(dim=-1).gather(-1, tokens[:, None])[:, 0]
