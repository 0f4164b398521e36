"""``ExecutorSession``: the :class:`~trtdsl.runtime.session.GenerationSession` interface on top of
the in-flight :class:`~trtdsl.runtime.executor.Executor`, so ``ModelRunner.generate`` and the
server share one generation code path (scheduler, K/V manager, sampling).

To switch ``ModelRunner`` over, its ``__init__`` builds ``ExecutorSession(engine, device,
enable_prefix_reuse=...)`` instead of ``GenerationSession(...)``; ``generate`` is unchanged, except
that context/generation logits still need ``GenerationSession`` (the executor returns tokens and
logprobs, not logits), which this class delegates to when they are asked for.

Semantics kept from ``GenerationSession``: an end id ends generation and is *not* part of the output;
a stop word is; ``max_new_tokens`` is clipped to the engine's ``max_seq_len``. One difference: the
logprobs are those of the model's distribution (log-softmax of the raw logits), as the server
reports them, not of the distribution after temperature/top-k/top-p.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import torch

from ..errors import ConfigError
from .executor import Executor, GenerationOutput, GenerationRequest
from .session import GenerationSession, RequestState, SessionRequest

__all__ = ["ExecutorSession"]

_POLL_S = 0.005


class ExecutorSession:
    """Runs ``SessionRequest`` batches through an :class:`Executor` (created once, kept warm)."""

    def __init__(self, engine: Any, device: str | torch.device = "cpu", *, enable_prefix_reuse: bool = True,
                 **executor_kwargs: Any):
        self.engine = engine
        self.device = torch.device(device)
        self.executor = Executor(engine, device=self.device, enable_prefix_reuse=enable_prefix_reuse,
                                 **executor_kwargs)
        lim = self.executor.limits
        self.max_batch_size, self.max_num_tokens = lim.max_batch_size, lim.max_num_tokens
        self.max_seq_len, self.max_input_len = lim.max_seq_len, lim.max_input_len
        self.tokens_per_block, self.vocab_size = lim.tokens_per_block, lim.vocab_size
        self.context_logits = bool(engine.build_config.get("context_logits"))
        self.enable_prefix_reuse = enable_prefix_reuse
        self._logits_session: GenerationSession | None = None

    @property
    def stats(self) -> dict[str, int]:
        s = self.executor.stats()
        return {"steps": s.steps, "context_tokens": s.computed_tokens - s.generated_tokens,
                "generated_tokens": s.generated_tokens, "reused_tokens": s.kv.reused_tokens}

    def check(self, requests: Sequence[SessionRequest]) -> None:
        # Same checks, same limits (it reads max_input_len and vocab_size only).
        GenerationSession.check(self, requests)  # type: ignore[arg-type]

    def generate(self, requests: Sequence[SessionRequest], *, want_context_logits: bool = False,
                 want_generation_logits: bool = False) -> Iterator[list[RequestState]]:
        """Run ``requests`` to completion, yielding the states whenever new tokens arrived."""
        if want_context_logits or want_generation_logits:
            if self._logits_session is None:
                self._logits_session = GenerationSession(self.engine, self.device,
                                                         enable_prefix_reuse=self.enable_prefix_reuse)
            yield from self._logits_session.generate(requests, want_context_logits=want_context_logits,
                                                     want_generation_logits=want_generation_logits)
            return
        self.check(requests)
        states = [RequestState(r) for r in requests]
        ids = [self.executor.submit(self._request(r)) for r in requests]
        handles = [self.executor._handle(i) for i in ids]
        seen = [0] * len(ids)
        try:
            while any(not s.finished for s in states):
                changed = False
                for k, (st, h) in enumerate(zip(states, handles)):
                    with h.cond:
                        new, error = h.outputs[seen[k]:], h.error
                    seen[k] += len(new)
                    if error is not None:
                        raise ConfigError(f"generate: request {k} failed: {error}") from error
                    for out in new:
                        _apply(st, out)
                    changed |= bool(new)
                if changed:
                    yield states
                else:
                    first = next(h for h, s in zip(handles, states) if not s.finished)
                    with first.cond:
                        first.cond.wait(_POLL_S)
        finally:
            for i, st in zip(ids, states):
                if not st.finished:
                    self.executor.cancel(i)

    def _request(self, r: SessionRequest) -> GenerationRequest:
        if len(r.prompt) >= self.max_seq_len:
            raise ConfigError(f"generate: a prompt of {len(r.prompt)} tokens leaves no room in "
                              f"max_seq_len {self.max_seq_len}")
        max_new = min(r.max_new_tokens, self.max_seq_len - len(r.prompt))
        end = r.end_ids[0] if r.end_ids else None
        stops = tuple((e,) for e in r.end_ids[1:]) + tuple(r.stop_words)
        return GenerationRequest(r.prompt, max_new, end, stops, r.sampling, logprobs=0)

    def info(self) -> dict[str, Any]:
        return {"max_batch_size": self.max_batch_size, "max_num_tokens": self.max_num_tokens,
                "max_seq_len": self.max_seq_len, "max_input_len": self.max_input_len,
                "tokens_per_block": self.tokens_per_block, "max_blocks": self.executor.limits.max_num_blocks,
                "pool_blocks": self.executor.kv_cache.num_blocks}

    def shutdown(self) -> None:
        self.executor.shutdown()


def _apply(st: RequestState, out: GenerationOutput) -> None:
    """Fold one executor update into a session state (end ids are not part of the output)."""
    end_ids = st.request.end_ids
    for j, token in enumerate(out.token_ids):
        is_last = j == len(out.token_ids) - 1
        if out.finished and is_last and out.finish_reason == "stop" and token in end_ids:
            break
        st.output.append(token)
        st.logprobs.append(float(out.logprobs[j]) if out.logprobs else 0.0)
    if out.finished:
        st.finish_reason = out.finish_reason
