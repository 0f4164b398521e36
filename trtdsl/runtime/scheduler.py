"""In-flight batching scheduler (plain Python, deterministic).

One :meth:`Scheduler.schedule` call forms one model step: running requests that need one token
(generation) first, then the remaining context chunks of running requests, then new requests from
the waiting queue, first come first served. :meth:`Scheduler.update` feeds back the sampled tokens.

Token bookkeeping of a request: ``all_token_ids = prompt + output``; ``num_computed_tokens`` of
them have their K/V in the cache. Every step computes ``all_token_ids[computed:computed + n]``;
when that reaches the end of ``all_token_ids`` the step's logits are sampled and the new token is
appended (so a generating request always has exactly one token, the last sampled, to compute).
A preempted request drops its cache and recomputes ``prompt + output`` as one (chunked) context,
which by the same rule samples its next token at the end: no special case.
"""

from __future__ import annotations

import collections
import enum
from dataclasses import dataclass, field
from typing import Hashable, Mapping

import torch

from ..errors import ConfigError, TrtdslError
from .kv_cache import KVCacheManager, OutOfBlocksError, blocks_for_tokens
from .step_inputs import StepInputs, build_step_inputs

__all__ = ["FinishReason", "Request", "RequestState", "ScheduledBatch", "ScheduledSequence",
           "Scheduler", "SchedulerError"]

POLICIES = ("max_utilization", "guaranteed_no_evict")


class SchedulerError(TrtdslError):
    """A request or a batch was used inconsistently with the scheduler's state."""


class RequestState(enum.Enum):
    WAITING = "waiting"      # queued, never run (or run and cancelled before: see FINISHED)
    RUNNING = "running"      # holds K/V blocks, scheduled every step the budget allows
    PREEMPTED = "preempted"  # was running, blocks freed; waits at the front of the queue
    FINISHED = "finished"


class FinishReason(str, enum.Enum):
    STOP = "stop"            # end_id or a stop sequence was generated (and is in the output)
    LENGTH = "length"        # max_new_tokens reached
    CANCELLED = "cancelled"


@dataclass(eq=False)
class Request:
    """A generation request and its progress. Sampling parameters live elsewhere (the sampler);
    here are only the limits the scheduler enforces.

    ``stop_token_ids`` is a list of stop sequences (each a list of token ids), matched against the
    *output* tokens only, so a prompt that ends like a stop sequence does not stop generation. The
    matched end id / stop tokens are kept in ``output_token_ids`` (detokenizers strip them)."""

    request_id: Hashable
    prompt_token_ids: list[int]
    max_new_tokens: int
    end_id: int | None = None
    stop_token_ids: list[list[int]] = field(default_factory=list)
    state: RequestState = RequestState.WAITING
    output_token_ids: list[int] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    num_computed_tokens: int = 0
    num_cached_tokens: int = 0      # prompt tokens served from the prefix cache, over admissions
    num_preemptions: int = 0

    def __post_init__(self) -> None:
        self.prompt_token_ids = list(self.prompt_token_ids)
        if not self.prompt_token_ids:
            raise ConfigError(f"Request {self.request_id!r}: the prompt is empty")
        if self.max_new_tokens < 1:
            raise ConfigError(f"Request {self.request_id!r}: max_new_tokens must be >= 1, "
                              f"got {self.max_new_tokens}")
        self.stop_token_ids = [list(s) for s in self.stop_token_ids]
        if any(len(s) == 0 for s in self.stop_token_ids):
            raise ConfigError(f"Request {self.request_id!r}: a stop sequence is empty")

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def is_finished(self) -> bool:
        return self.state is RequestState.FINISHED

    @property
    def max_total_tokens(self) -> int:
        """Most tokens the K/V cache ever holds for it: the last sampled token is never written."""
        return len(self.prompt_token_ids) + self.max_new_tokens - 1


@dataclass(frozen=True)
class ScheduledSequence:
    """One request's share of a step: run ``token_ids`` after ``past_len`` cached tokens.
    ``samples`` is False for a context chunk that is not the last (its logits are discarded)."""

    request: Request
    token_ids: list[int]
    past_len: int
    block_table: list[int]
    samples: bool

    @property
    def request_id(self) -> Hashable:
        return self.request.request_id


@dataclass(frozen=True)
class ScheduledBatch:
    """One step: ``sequences`` in packing order; ``preempted`` lists requests evicted to form it."""

    sequences: list[ScheduledSequence]
    preempted: list[Request] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(len(s.token_ids) for s in self.sequences)

    def __len__(self) -> int:
        return len(self.sequences)

    def to_step_inputs(self, device: torch.device | str = "cpu") -> StepInputs:
        return build_step_inputs(self.sequences, device)


class Scheduler:
    """FCFS in-flight batching over a :class:`KVCacheManager`.

    Invariants (checked by :meth:`check_invariants`):

    * every unfinished request is in exactly one place: the waiting queue (state WAITING or
      PREEMPTED, no K/V blocks, ``num_computed_tokens == 0``) or the running list (RUNNING, holds a
      block table, ``num_computed_tokens < num_tokens`` and equal to the cache's count);
    * ``len(running) <= max_batch_size``; a step holds at most ``max_batch_size`` sequences and
      ``max_num_tokens`` tokens;
    * the running list is in admission order; preemption takes the most recently admitted;
    * between an ``update`` and the next ``schedule``, at most one running request is mid-context
      (more than one token left to compute), and it is the most recently admitted: a chunk
      shorter than its remaining context uses up the step's token budget, so nothing is
      admitted behind it until its context completes. Hence "generation first, then context
      chunks" never reorders requests against admission order.

    Policies. ``max_utilization``: a request is admitted when its current tokens fit; when a
    generating request needs a block and none is left, the most recently admitted running request
    is preempted (it may be the one asking), and no new request is admitted in that step (the freed
    blocks are for the survivors). ``guaranteed_no_evict``: a request is admitted only when blocks
    for ``prompt + max_new_tokens - 1`` tokens can be reserved up front; nothing is ever preempted.

    FCFS is strict: if the head of the waiting queue does not fit, nothing behind it is admitted
    (no starvation of long prompts).
    """

    def __init__(self, kv_cache: KVCacheManager, max_batch_size: int, max_num_tokens: int,
                 policy: str = "max_utilization", enable_chunked_context: bool = True):
        if policy not in POLICIES:
            raise ConfigError(f"Scheduler: unknown policy {policy!r}; expected one of {POLICIES}")
        if max_batch_size < 1 or max_num_tokens < 1:
            raise ConfigError(f"Scheduler: max_batch_size and max_num_tokens must be >= 1, got "
                              f"{max_batch_size} and {max_num_tokens}")
        self.kv_cache = kv_cache
        self.max_batch_size = max_batch_size
        self.max_num_tokens = max_num_tokens
        self.policy = policy
        self.enable_chunked_context = enable_chunked_context
        self._waiting: collections.deque[Request] = collections.deque()
        self._running: list[Request] = []
        self._live: dict[Hashable, Request] = {}
        self.num_preemptions = 0
        self._batch_in_flight = False  # schedule() returned a batch that update() has not applied

    # -- queries -------------------------------------------------------------------------------

    @property
    def waiting(self) -> tuple[Request, ...]:
        return tuple(self._waiting)

    @property
    def running(self) -> tuple[Request, ...]:
        return tuple(self._running)

    def has_unfinished_requests(self) -> bool:
        return bool(self._live)

    def get_request(self, request_id: Hashable) -> Request | None:
        return self._live.get(request_id)

    # -- requests ------------------------------------------------------------------------------

    def add_request(self, request: Request) -> None:
        """Queue a fresh request. Rejects requests that could never be served (``ConfigError``)."""
        if request.request_id in self._live:
            raise SchedulerError(f"Scheduler.add_request: request id {request.request_id!r} is "
                                 f"already queued or running")
        if request.state is not RequestState.WAITING or request.output_token_ids:
            raise SchedulerError(f"Scheduler.add_request: request {request.request_id!r} is not "
                                 f"fresh (state {request.state.value})")
        kv = self.kv_cache
        # Even alone in the pool it must be able to reach max_new_tokens, or it would livelock.
        need = blocks_for_tokens(request.max_total_tokens, kv.tokens_per_block)
        if need > kv.num_blocks:
            raise ConfigError(
                f"Scheduler.add_request: request {request.request_id!r} may hold "
                f"{request.max_total_tokens} tokens ({need} blocks), the K/V cache has only "
                f"{kv.num_blocks} blocks of {kv.tokens_per_block}; lower max_new_tokens")
        if not self.enable_chunked_context:
            # Unchunked, a context runs in one step; after a preemption it is prompt + output.
            longest = (request.max_total_tokens if self.policy == "max_utilization"
                       else len(request.prompt_token_ids))
            if longest > self.max_num_tokens:
                raise ConfigError(
                    f"Scheduler.add_request: request {request.request_id!r} may need a context of "
                    f"{longest} tokens in one step but max_num_tokens is {self.max_num_tokens}; "
                    f"enable chunked context or shorten the request")
        self._live[request.request_id] = request
        self._waiting.append(request)

    def cancel(self, request_id: Hashable) -> bool:
        """Finish a waiting or running request with reason "cancelled", freeing its blocks.
        Returns False if the id is unknown or already finished."""
        request = self._live.get(request_id)
        if request is None:
            return False
        if request.state is RequestState.RUNNING:
            self._running.remove(request)
            self.kv_cache.free(request_id)
        else:
            self._waiting.remove(request)
        self._finish(request, FinishReason.CANCELLED)
        return True

    # -- one step ------------------------------------------------------------------------------

    def schedule(self) -> ScheduledBatch:
        """Form the next step's batch (possibly empty when nothing can run)."""
        items: list[ScheduledSequence] = []
        preempted: list[Request] = []
        budget = self.max_num_tokens
        # 1. Generation: one token per running request, in admission order.
        for request in list(self._running):
            if request.state is not RequestState.RUNNING or self._remaining(request) != 1:
                continue  # preempted earlier in this loop, or still in context
            if len(items) == self.max_batch_size or budget == 0:
                break
            if not self._reserve_next_slot(request, preempted):
                continue  # it preempted itself: it was the most recently admitted
            items.append(self._schedule_tokens(request, 1))
            budget -= 1
        # 2. Context chunks of requests admitted in earlier steps (their blocks are allocated).
        for request in self._running:
            remaining = self._remaining(request)
            if remaining == 1:
                continue
            n = self._chunk_size(remaining, budget)
            if n == 0 or len(items) == self.max_batch_size:
                break
            items.append(self._schedule_tokens(request, n))
            budget -= n
        # 3. New requests, FCFS; not after a preemption, which freed blocks for the survivors.
        #    (Defensive: the victim heads the queue and cannot fit yet, and FCFS stops there.)
        if not preempted:
            budget = self._admit(items, budget)
        self._batch_in_flight = True
        return ScheduledBatch(items, preempted)

    def update(self, batch: ScheduledBatch,
               sampled_tokens: Mapping[Hashable, int]) -> list[Request]:
        """Apply a step's results: commit its K/V, append each sampling sequence's token from
        ``sampled_tokens`` (extra entries, e.g. for non-final chunks, are ignored), and finish
        requests that hit end id / a stop sequence / max_new_tokens. Returns the finished ones.

        Sequences of requests cancelled since :meth:`schedule` are skipped. Validates the whole
        batch before changing anything, so a rejected call can be retried."""
        live = [item for item in batch.sequences if item.request.state is RequestState.RUNNING]
        for item in live:
            request = item.request
            if request.num_computed_tokens != item.past_len:
                raise SchedulerError(f"Scheduler.update: stale batch for request "
                                     f"{request.request_id!r} (was it updated twice?)")
            if item.samples and request.request_id not in sampled_tokens:
                raise SchedulerError(f"Scheduler.update: no sampled token for request "
                                     f"{request.request_id!r}")
        self._batch_in_flight = False
        finished = []
        for item in live:
            request = item.request
            self.kv_cache.commit_tokens(request.request_id, item.token_ids)
            request.num_computed_tokens += len(item.token_ids)
            if not item.samples:
                continue
            request.output_token_ids.append(int(sampled_tokens[request.request_id]))
            reason = self._stop_reason(request)
            if reason is not None:
                self._running.remove(request)
                self.kv_cache.free(request.request_id)
                self._finish(request, reason)
                finished.append(request)
        return finished

    # -- internals -----------------------------------------------------------------------------

    @staticmethod
    def _remaining(request: Request) -> int:
        return request.num_tokens - request.num_computed_tokens

    def _chunk_size(self, remaining: int, budget: int) -> int:
        if self.enable_chunked_context:
            return min(remaining, budget)
        return remaining if remaining <= budget else 0

    def _schedule_tokens(self, request: Request, n: int) -> ScheduledSequence:
        start = request.num_computed_tokens
        return ScheduledSequence(
            request=request, token_ids=request.all_token_ids[start:start + n], past_len=start,
            block_table=self.kv_cache.block_table(request.request_id),
            samples=start + n == request.num_tokens)

    def _reserve_next_slot(self, request: Request, preempted: list[Request]) -> bool:
        """Make room for ``request``'s next token, preempting the most recently admitted running
        requests as needed. False if ``request`` itself got preempted."""
        while True:
            try:
                self.kv_cache.ensure_capacity(request.request_id, request.num_computed_tokens + 1)
                return True
            except OutOfBlocksError:
                if self.policy == "guaranteed_no_evict":
                    raise SchedulerError(
                        f"Scheduler: request {request.request_id!r} ran out of reserved blocks "
                        f"under guaranteed_no_evict; this is a bug") from None
                victim = self._running[-1]
                self._preempt(victim)
                preempted.append(victim)
                if victim is request:
                    return False

    def _admit(self, items: list[ScheduledSequence], budget: int) -> int:
        """Admit waiting requests FCFS into ``items``; returns the token budget left."""
        kv = self.kv_cache
        while (self._waiting and budget > 0 and len(items) < self.max_batch_size
               and len(self._running) < self.max_batch_size):
            request = self._waiting[0]
            tokens = request.all_token_ids
            reserve = (request.max_total_tokens if self.policy == "guaranteed_no_evict"
                       else len(tokens))
            if kv.num_blocks_needed(tokens, reserve) > kv.num_free_blocks:
                break
            n = self._chunk_size(len(tokens) - kv.match_prefix_tokens(tokens), budget)
            if n == 0:
                break
            cached = kv.allocate(request.request_id, tokens)
            kv.ensure_capacity(request.request_id, reserve)
            self._waiting.popleft()
            self._running.append(request)
            request.state = RequestState.RUNNING
            request.num_computed_tokens = cached
            request.num_cached_tokens += cached
            items.append(self._schedule_tokens(request, n))
            budget -= n
        return budget

    def _preempt(self, request: Request) -> None:
        # Recompute rather than swap: the freed blocks go to the survivors right away, and the
        # request's committed full blocks stay cached, so re-admission often reuses them.
        self._running.remove(request)
        self.kv_cache.free(request.request_id)
        request.state = RequestState.PREEMPTED
        request.num_computed_tokens = 0
        request.num_preemptions += 1
        self.num_preemptions += 1
        self._waiting.appendleft(request)

    def _finish(self, request: Request, reason: FinishReason) -> None:
        request.state = RequestState.FINISHED
        request.finish_reason = reason
        del self._live[request.request_id]

    @staticmethod
    def _stop_reason(request: Request) -> FinishReason | None:
        out = request.output_token_ids
        if request.end_id is not None and out[-1] == request.end_id:
            return FinishReason.STOP
        if any(len(s) <= len(out) and out[-len(s):] == s for s in request.stop_token_ids):
            return FinishReason.STOP
        if len(out) >= request.max_new_tokens:
            return FinishReason.LENGTH
        return None

    def check_invariants(self) -> None:
        """Raise ``AssertionError`` if an invariant of the class docstring is broken."""
        kv = self.kv_cache
        kv.check_invariants()
        queued = list(self._waiting) + self._running
        assert len({id(r) for r in queued}) == len(queued), "a request is queued twice"
        assert {r.request_id for r in queued} == set(self._live), "live set out of sync"
        assert len(self._running) <= self.max_batch_size
        for r in self._waiting:
            assert r.state in (RequestState.WAITING, RequestState.PREEMPTED), r.request_id
            assert r.request_id not in kv and r.num_computed_tokens == 0, r.request_id
        for r in self._running:
            assert r.state is RequestState.RUNNING, r.request_id
            assert kv.num_computed_tokens(r.request_id) == r.num_computed_tokens, r.request_id
            assert r.num_computed_tokens < r.num_tokens, r.request_id
            if self.policy == "guaranteed_no_evict":
                assert kv.capacity(r.request_id) >= r.max_total_tokens, r.request_id
        if not self._batch_in_flight:
            mid_context = [r for r in self._running if self._remaining(r) > 1]
            assert mid_context in ([], self._running[-1:]), "a mid-context request is not last"
