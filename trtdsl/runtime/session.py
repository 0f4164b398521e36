"""One generation session: steps a batch of requests through an engine's packed/paged network.

Every step packs, for each running request, either the next chunk of its prompt (context phase,
chunked to ``max_num_tokens``) or its last sampled token (generation phase) into the step inputs of
docs/batch_interface.md; nothing is padded and finished requests simply leave the batch. Block
tables come from :class:`~trtdsl.runtime.kv_cache.KVCacheManager` (with prefix reuse across calls),
the tensors from :func:`~trtdsl.runtime.step_inputs.build_step_inputs`. The K/V pool is allocated
on first use, as large as the requests need (never beyond the engine's ``num_blocks`` range), and
kept for later calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch

from ..backends.torch_executor import TorchExecutor
from ..engine import Engine
from ..errors import ConfigError, EngineError
from .kv_cache import KVCacheManager, blocks_for_tokens
from .sampling import Sampler, SamplingParams, matches_stop
from .step_inputs import SequenceStep, build_step_inputs

__all__ = ["GenerationSession", "SessionRequest", "RequestState"]


@dataclass(frozen=True)
class SessionRequest:
    """One prompt and how to continue it."""

    prompt: tuple[int, ...]
    max_new_tokens: int
    sampling: SamplingParams = field(default_factory=SamplingParams)
    end_ids: tuple[int, ...] = ()
    stop_words: tuple[tuple[int, ...], ...] = ()


@dataclass
class RequestState:
    """A request while it runs: generated tokens, per-token log-probs/logits, finish reason."""

    request: SessionRequest
    output: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    generation_logits: list[torch.Tensor] = field(default_factory=list)
    context_logits: list[torch.Tensor] = field(default_factory=list)
    computed: int = 0  # prompt tokens whose K/V is in the cache
    finish_reason: str | None = None
    seq_id: int = -1

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def history(self) -> list[int]:
        return list(self.request.prompt) + self.output


class GenerationSession:
    """Runs generation for an engine on ``device`` (build-time facts are read once, here)."""

    def __init__(self, engine: Engine, device: str | torch.device = "cpu", *, enable_prefix_reuse: bool = True):
        net = engine.network
        if "kv_cache" not in net.input_specs:
            raise EngineError(f"engine network {net.name!r} has no kv_cache input (built with "
                              "attention_backend='composite'?); generation needs the paged plugin network")
        self.engine = engine
        self.device = torch.device(device)
        self.executor = TorchExecutor(net, self.device)
        bc = engine.build_config
        spec = net.input_specs["kv_cache"]
        self.kv_dtype = spec.dtype.torch
        self.kv_shape = tuple(spec.shape)  # (layers, "num_blocks", 2, kv_heads, tokens_per_block, head_dim)
        self.tokens_per_block = int(self.kv_shape[4])
        ranges = net.profiles[0].ranges if net.profiles else {}
        self.max_blocks = int(ranges.get("num_blocks", (0, 0, 1 << 30))[2])
        self.max_batch_size = int(bc.get("max_batch_size") or ranges.get("batch", (0, 0, 1))[2])
        self.max_num_tokens = int(bc.get("max_num_tokens") or ranges.get("num_tokens", (0, 0, 1))[2])
        self.max_seq_len = int(bc.get("max_seq_len") or self.max_blocks * self.tokens_per_block)
        self.max_input_len = int(bc.get("max_input_len") or self.max_seq_len)
        self.context_logits = bool(bc.get("context_logits"))
        self.vocab_size = int(net.outputs["logits"].shape[-1])
        self.enable_prefix_reuse = enable_prefix_reuse
        self.pool: torch.Tensor | None = None
        self.manager: KVCacheManager | None = None
        self._next_seq = 0
        self.stats = {"steps": 0, "context_tokens": 0, "generated_tokens": 0, "reused_tokens": 0}

    # -- validation and the pool -------------------------------------------------------------------
    def check(self, requests: Sequence[SessionRequest]) -> None:
        problems = []
        for i, r in enumerate(requests):
            n = len(r.prompt)
            if n == 0:
                problems.append(f"request {i}: empty prompt")
            elif n > self.max_input_len:
                problems.append(f"request {i}: prompt of {n} tokens > the engine's max_input_len "
                                f"{self.max_input_len}")
            if r.max_new_tokens < 1:
                problems.append(f"request {i}: max_new_tokens must be >= 1, got {r.max_new_tokens}")
            bad = [t for t in r.prompt if not 0 <= int(t) < self.vocab_size]
            if bad:
                problems.append(f"request {i}: token ids {bad[:5]} outside the vocabulary [0, {self.vocab_size})")
        if problems:
            raise ConfigError("generate: " + "; ".join(problems))

    def _ensure_pool(self, requests: Sequence[SessionRequest], reuse: bool) -> None:
        """A pool big enough for the largest ``max_batch_size`` requests at their final length."""
        need = sorted((blocks_for_tokens(min(len(r.prompt) + r.max_new_tokens, self.max_seq_len),
                                         self.tokens_per_block) for r in requests), reverse=True)
        blocks = min(self.max_blocks, max(1, sum(need[:self.max_batch_size])))
        if self.pool is None or self.pool.shape[1] < blocks:
            shape = (self.kv_shape[0], blocks) + tuple(int(d) for d in self.kv_shape[2:])
            self.pool = torch.zeros(shape, dtype=self.kv_dtype, device=self.device)
            self.manager = None
        if self.manager is None or self.manager.enable_prefix_reuse != reuse:
            self.manager = KVCacheManager(int(self.pool.shape[1]), self.tokens_per_block, enable_prefix_reuse=reuse)

    # -- the loop ----------------------------------------------------------------------------------
    def generate(self, requests: Sequence[SessionRequest], *, want_context_logits: bool = False,
                 want_generation_logits: bool = False) -> Iterator[list[RequestState]]:
        """Run ``requests`` to completion, yielding the request states after every step."""
        self.check(requests)
        if want_context_logits and not self.context_logits:
            raise ConfigError("output_context_logits needs an engine built with context_logits=True "
                              "(trtdsl build --context_logits)")
        # Cached prefixes have no logits to report, so prefix reuse is off when they are wanted.
        self._ensure_pool(requests, self.enable_prefix_reuse and not want_context_logits)
        assert self.manager is not None
        states = [RequestState(r) for r in requests]
        sampler = Sampler([r.sampling for r in requests], self.vocab_size, self.device)
        waiting = list(range(len(states)))
        running: list[int] = []
        try:
            while waiting or running:
                self._admit(states, waiting, running)
                if not running:
                    raise ConfigError("generate: a request does not fit in the K/V pool even alone")
                self._step(states, running, sampler, want_context_logits, want_generation_logits)
                for i in [i for i in running if states[i].finished]:
                    running.remove(i)
                    self.manager.free(states[i].seq_id)
                yield states
        finally:
            for i in running:
                if states[i].seq_id in self.manager:
                    self.manager.free(states[i].seq_id)

    def _admit(self, states: list[RequestState], waiting: list[int], running: list[int]) -> None:
        assert self.manager is not None
        while waiting and len(running) < self.max_batch_size:
            st = states[waiting[0]]
            prompt = list(st.request.prompt)
            if self.manager.num_blocks_needed(prompt) > self.manager.num_free_blocks:
                return
            st.seq_id = self._next_seq
            self._next_seq += 1
            st.computed = self.manager.allocate(st.seq_id, prompt)
            self.stats["reused_tokens"] += st.computed
            running.append(waiting.pop(0))

    def _step(self, states: list[RequestState], running: list[int], sampler: Sampler,
              want_ctx: bool, want_gen: bool) -> None:
        assert self.manager is not None and self.pool is not None
        budget = self.max_num_tokens
        batch: list[tuple[int, list[int]]] = []
        for i in running:
            st = states[i]
            prompt = st.request.prompt
            if st.computed < len(prompt):
                tokens = list(prompt[st.computed:st.computed + budget])
            else:
                tokens = [st.output[-1]]
            if not tokens:
                continue
            past = self.manager.num_computed_tokens(st.seq_id)
            self.manager.ensure_capacity(st.seq_id, past + len(tokens))
            batch.append((i, tokens))
            budget -= len(tokens)
            if budget <= 0:
                break
        steps = [SequenceStep(tokens, self.manager.num_computed_tokens(states[i].seq_id),
                              self.manager.block_table(states[i].seq_id)) for i, tokens in batch]
        inputs = build_step_inputs(steps, self.device, tokens_per_block=self.tokens_per_block)
        feed = inputs.as_dict()
        feed["kv_cache"] = self.pool
        hints = {"max_q_len": max(len(t) for _, t in batch),
                 "max_kv_len": max(s.past_len + len(s.token_ids) for s in steps)}
        logits = self.executor.run(feed, hints)["logits"]
        self.stats["steps"] += 1
        last_rows = inputs.last_token_ids.long() if self.context_logits else None
        sample_rows, sample_logits = [], []
        for b, (i, tokens) in enumerate(batch):
            st = states[i]
            self.manager.commit_tokens(st.seq_id, tokens)
            in_context = st.computed < len(st.request.prompt)
            if in_context:
                if want_ctx:
                    start = int(inputs.cu_seqlens[b])
                    st.context_logits.append(logits[start:start + len(tokens)].float().cpu())
                st.computed += len(tokens)
                self.stats["context_tokens"] += len(tokens)
                if st.computed < len(st.request.prompt):
                    continue  # more prompt chunks to go: no token to sample yet
            row = logits[last_rows[b]] if last_rows is not None else logits[b]
            sample_rows.append(i)
            sample_logits.append(row)
        if sample_rows:
            self._sample(states, sample_rows, torch.stack(sample_logits), sampler, want_gen)

    def _sample(self, states: list[RequestState], rows: list[int], logits: torch.Tensor, sampler: Sampler,
                want_gen: bool) -> None:
        tokens, logprobs = sampler.sample(logits, rows, [states[i].history for i in rows],
                                          [states[i].output for i in rows])
        for k, i in enumerate(rows):
            st, token = states[i], int(tokens[k])
            req = st.request
            if want_gen:
                st.generation_logits.append(logits[k].float().cpu())
            if token in req.end_ids:
                st.finish_reason = "stop"
                continue
            st.output.append(token)
            st.logprobs.append(float(logprobs[k]))
            self.stats["generated_tokens"] += 1
            if req.stop_words and matches_stop(st.output, req.stop_words):
                st.finish_reason = "stop"
            elif len(st.output) >= req.max_new_tokens or len(req.prompt) + len(st.output) >= self.max_seq_len:
                st.finish_reason = "length"

    def run_context(self, prompt: Sequence[int]) -> dict[str, torch.Tensor]:
        """Run ``prompt`` as one context step on a private K/V pool; returns every network output
        (logits and debug outputs) — for tensor dumps and parity checks."""
        n = len(prompt)
        if not 0 < n <= min(self.max_num_tokens, self.max_seq_len):
            raise ConfigError(f"run_context: the prompt has {n} tokens; one step takes 1 to "
                              f"{min(self.max_num_tokens, self.max_seq_len)}")
        blocks = blocks_for_tokens(n, self.tokens_per_block)
        shape = (self.kv_shape[0], blocks) + tuple(int(d) for d in self.kv_shape[2:])
        pool = torch.zeros(shape, dtype=self.kv_dtype, device=self.device)
        inputs = build_step_inputs([SequenceStep(list(prompt), 0, list(range(blocks)))], self.device,
                                   tokens_per_block=self.tokens_per_block)
        feed = inputs.as_dict()
        feed["kv_cache"] = pool
        return self.executor.run(feed, {"max_q_len": n, "max_kv_len": n})

    def info(self) -> dict[str, Any]:
        return {"max_batch_size": self.max_batch_size, "max_num_tokens": self.max_num_tokens,
                "max_seq_len": self.max_seq_len, "max_input_len": self.max_input_len,
                "tokens_per_block": self.tokens_per_block, "max_blocks": self.max_blocks,
                "pool_blocks": None if self.pool is None else int(self.pool.shape[1])}
