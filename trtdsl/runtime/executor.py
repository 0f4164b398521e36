"""The in-flight batching executor: a background loop that runs scheduler -> one engine step ->
sampling -> update, for requests submitted from any thread.

>>> ex = Executor("engines/tiny", kv_cache_max_tokens=4096)               # doctest: +SKIP
>>> rid = ex.submit(GenerationRequest([1, 2, 3], max_new_tokens=8))        # doctest: +SKIP
>>> for out in ex.stream(rid): print(out.token_ids)                        # doctest: +SKIP
>>> ex.result(rid).output_token_ids                                        # doctest: +SKIP

Threading: the loop thread is the only one that touches the scheduler, the K/V cache manager and
the K/V pool. Other threads talk to it through ``_pending`` (new requests) and ``_cancels``, both
guarded by ``_cond``'s lock, and read results from per-request :class:`_Handle` objects. The lock
is held while scheduling and applying a step's results (microseconds to milliseconds), never while
the model runs, so ``submit``/``cancel``/``stats`` are never blocked behind a step.

Each iteration runs ONE step of the engine's network (every request in the batch advances by a
context chunk or one token). The step goes through a :class:`StepRunner`, which receives the step
inputs on the host: :class:`EagerStepRunner` runs the torch executor layer by layer; on CUDA (the
default there) ``runtime.cuda_graphs.DecodeGraphRunner`` replays decode steps from CUDA graphs
captured per (batch bucket, K/V-length bucket) and runs context/mixed steps eagerly. Padded rows
of a graph write into one pool block reserved for them (the cache manager gets one block less).
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import itertools
import random
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Iterator, Mapping, Protocol, Sequence, cast

import torch

from ..errors import ConfigError, TrtdslError
from .executor_sampling import RowSampling, sample_rows
from .kv_cache import KVCacheManager, KVCacheStats, blocks_for_memory
from .sampling import SamplingParams
from .scheduler import FinishReason, Request, ScheduledBatch, Scheduler

# Executors not shut down by their owner are stopped at interpreter exit: a daemon loop thread that is
# still inside torch while Python finalizes makes the process abort ("terminate called ...").
_LIVE_EXECUTORS: "weakref.WeakSet[Executor]" = weakref.WeakSet()


@atexit.register
def _shutdown_live_executors() -> None:
    for executor in list(_LIVE_EXECUTORS):
        executor.shutdown(timeout=5.0)

__all__ = ["Executor", "ExecutorError", "ExecutorStats", "GenerationOutput", "GenerationRequest",
           "GenerationResult", "QueueFullError", "StepRunner", "EagerStepRunner", "GREEDY"]

GREEDY = SamplingParams(temperature=0.0)


class ExecutorError(TrtdslError):
    """A request failed inside the executor (engine step error, shutdown, unknown id)."""


class QueueFullError(ExecutorError):
    """The executor's bounded queue is full; retry later (servers answer 429)."""


@dataclass(frozen=True)
class GenerationRequest:
    """One generation request.

    Attributes:
        prompt_token_ids: the prompt, token ids in ``[0, vocab_size)``.
        max_new_tokens: most tokens to generate (>= 1).
        end_id: a token that ends generation (kept in the output), or None.
        stop_token_ids: token sequences that end generation when the output ends with one.
        sampling: temperature/top-k/top-p/penalties/seed (default: greedy).
        logprobs: None = no logprobs; 0 = the sampled token's log-probability; k > 0 = also the
            k most likely tokens of each step (model distribution, before sampling transforms).
    """

    prompt_token_ids: Sequence[int]
    max_new_tokens: int = 16
    end_id: int | None = None
    stop_token_ids: Sequence[Sequence[int]] = ()
    sampling: SamplingParams = GREEDY
    logprobs: int | None = None

    def __post_init__(self) -> None:
        try:
            prompt = tuple(int(t) for t in self.prompt_token_ids)
            stops = tuple(tuple(int(t) for t in s) for s in self.stop_token_ids)
        except (TypeError, ValueError):
            raise ConfigError("GenerationRequest: prompt_token_ids and stop_token_ids must be "
                              "(sequences of) ints") from None
        object.__setattr__(self, "prompt_token_ids", prompt)
        object.__setattr__(self, "stop_token_ids", stops)
        problems = []
        if not prompt:
            problems.append("prompt_token_ids is empty")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            problems.append(f"max_new_tokens must be an int >= 1, got {self.max_new_tokens!r}")
        if any(not s for s in stops):
            problems.append("stop_token_ids holds an empty sequence")
        if self.logprobs is not None and (not isinstance(self.logprobs, int) or self.logprobs < 0):
            problems.append(f"logprobs must be None or an int >= 0, got {self.logprobs!r}")
        if not isinstance(self.sampling, SamplingParams):
            problems.append(f"sampling must be a SamplingParams, got {type(self.sampling).__name__}")
        if problems:
            raise ConfigError("GenerationRequest: " + "; ".join(problems))


@dataclass(frozen=True)
class GenerationOutput:
    """One streamed update of a request: the tokens generated since the previous update."""

    request_id: int
    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...] | None = None
    top_logprobs: tuple[dict[int, float], ...] | None = None
    finished: bool = False
    finish_reason: str | None = None  # "stop" | "length" | "cancelled" when finished


@dataclass(frozen=True)
class GenerationResult:
    """A finished request. Times are seconds since ``submit``."""

    request_id: int
    prompt_token_ids: tuple[int, ...]
    output_token_ids: tuple[int, ...]
    finish_reason: str
    logprobs: tuple[float, ...] | None
    top_logprobs: tuple[dict[int, float], ...] | None
    num_cached_tokens: int
    num_preemptions: int
    time_to_first_token: float | None
    latency: float


@dataclass(frozen=True)
class ExecutorStats:
    """A snapshot of the executor. ``kv`` is the block pool; ``kv.reused_tokens`` counts prompt
    tokens served from the prefix cache."""

    waiting_requests: int
    running_requests: int
    submitted_requests: int
    finished_requests: int
    cancelled_requests: int
    failed_requests: int
    steps: int
    generated_tokens: int
    computed_tokens: int
    preemptions: int
    kv: KVCacheStats

    @property
    def kv_usage(self) -> float:
        """Fraction of the pool held by live sequences (cached-but-free blocks do not count)."""
        return self.kv.used_blocks / self.kv.num_blocks


class StepRunner(Protocol):
    """Runs one step: the step inputs of docs/batch_interface.md (K/V pool included) -> logits of
    the last token of each sequence, ``[batch, vocab]`` float32."""

    def run(self, feed: Mapping[str, torch.Tensor], hints: Mapping[str, Any]) -> torch.Tensor: ...


class EagerStepRunner:
    """Runs the engine's network with the torch executor, one layer after another. Step inputs may
    come from the host; they are copied to the executor's device here."""

    def __init__(self, network: Any, device: torch.device, context_logits: bool):
        from ..backends.torch_executor import TorchExecutor
        # A loaded engine names its plugins but does not import the modules that register them
        # (plugins.registry's lazy load imports only the package); import them here.
        from ..passes import fused_plugins  # noqa: F401
        from ..plugins import attention  # noqa: F401
        self.executor = TorchExecutor(network, device)
        # Engines built with context_logits return every token's row; keep only the last ones.
        self.context_logits = context_logits

    def run(self, feed: Mapping[str, torch.Tensor], hints: Mapping[str, Any]) -> torch.Tensor:
        device = self.executor.device
        feed = {k: v if v.device == device else v.to(device) for k, v in feed.items()}
        logits = self.executor.run(feed, hints, outputs=["logits"])["logits"]
        if self.context_logits:
            logits = logits.index_select(0, feed["last_token_ids"].long())
        return logits


@dataclass(frozen=True)
class _Limits:
    """The engine's build-time limits, which bound every request and step."""

    max_batch_size: int
    max_num_tokens: int
    max_seq_len: int
    max_input_len: int
    tokens_per_block: int
    max_num_blocks: int
    vocab_size: int


class _Handle:
    """A request's results, shared between the loop thread (writer) and readers (any thread or
    event loop). Readers index into ``outputs``; ``done`` is set once, after the last output."""

    def __init__(self, request_id: int, request: GenerationRequest, sampling: RowSampling):
        self.request_id = request_id
        self.request = request
        self.sampling = sampling
        self.cond = threading.Condition()
        self.outputs: list[GenerationOutput] = []
        self.done = False
        self.error: BaseException | None = None
        self.result: GenerationResult | None = None
        self.submitted = time.perf_counter()
        self.first_token: float | None = None
        self.waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    def push(self, output: GenerationOutput | None, *, result: GenerationResult | None = None,
             error: BaseException | None = None) -> None:
        with self.cond:
            if self.done:
                return
            if output is not None:
                self.outputs.append(output)
            if result is not None or error is not None:
                self.result, self.error, self.done = result, error, True
            waiters, self.waiters = self.waiters, []
            self.cond.notify_all()
        for loop, event in waiters:
            if not loop.is_closed():
                loop.call_soon_threadsafe(event.set)


class Executor:
    """In-flight batching over one engine. See the module docstring for the threading model.

    Args:
        engine_dir: an engine directory (``trtdsl build``), or a loaded :class:`trtdsl.engine.Engine`.
        device: where the network and the K/V pool live.
        max_batch_size / max_num_tokens: per-step limits, at most the engine's (default: equal).
        kv_cache_free_gpu_mem_fraction: on CUDA, the pool takes this fraction of the memory free
            after loading (capped by the engine's ``num_blocks`` profile).
        kv_cache_max_tokens: the pool size in tokens (overrides the fraction; default on CPU:
            ``max_batch_size`` sequences of ``max_seq_len``).
        scheduler_policy: ``"max_utilization"`` or ``"guaranteed_no_evict"``.
        enable_prefix_reuse: share cached full blocks of identical prompt prefixes.
        max_queue_size: most requests waiting to run; ``submit`` raises QueueFullError beyond.
        max_finished_results: finished results kept for ``result()`` (oldest dropped first).
        seed: seeds the per-request seeds of requests that give none (None: nondeterministic).
        cuda_graphs: replay decode steps from CUDA graphs (default: on when ``device`` is CUDA and
            no ``step_runner`` is given). Reserves one pool block for the padded rows.
        cuda_graph_batch_sizes: the batch buckets decode steps are padded to (default:
            ``cuda_graphs.default_batch_buckets(max_batch_size)``).
        cuda_graph_capture: ``"lazy"`` captures a bucket's graph on its first step; ``"startup"``
            captures every bucket in the constructor (servers: no capture pauses while serving).
        step_runner: run steps with this instead (tests, other backends).
    """

    def __init__(self, engine_dir: str | Path | Any, *, device: str | torch.device = "cpu",
                 max_batch_size: int | None = None, max_num_tokens: int | None = None,
                 kv_cache_free_gpu_mem_fraction: float = 0.9, kv_cache_max_tokens: int | None = None,
                 scheduler_policy: str = "max_utilization", enable_prefix_reuse: bool = True,
                 enable_chunked_context: bool = True, max_queue_size: int = 1024,
                 max_finished_results: int = 4096, seed: int | None = None,
                 cuda_graphs: bool | None = None, cuda_graph_batch_sizes: Sequence[int] | None = None,
                 cuda_graph_capture: str = "lazy", step_runner: StepRunner | None = None):
        from ..engine import Engine
        self.engine = engine_dir if isinstance(engine_dir, Engine) else Engine.load(engine_dir)
        self.device = torch.device(device)
        network = self.engine.network
        if "kv_cache" not in network.input_specs or "logits" not in network.outputs:
            raise ConfigError("Executor: the engine's network has no kv_cache input or no logits "
                              "output; build it with attention_backend='plugin'")
        self.limits = self._limits(network, max_batch_size, max_num_tokens)
        use_graphs = self._wants_graphs(cuda_graphs, step_runner)
        if cuda_graph_capture not in ("lazy", "startup"):
            raise ConfigError(f"Executor: cuda_graph_capture={cuda_graph_capture!r} must be 'lazy' or 'startup'")
        eager = step_runner or EagerStepRunner(network, self.device,
                                               bool(self.engine.build_config.get("context_logits")))
        spec = network.input_specs["kv_cache"]
        pool_blocks = self._pool_blocks(spec, kv_cache_max_tokens, kv_cache_free_gpu_mem_fraction)
        if use_graphs and kv_cache_max_tokens is not None and pool_blocks < self.limits.max_num_blocks:
            pool_blocks += 1  # an explicit token budget stays usable in full; the pad block is extra
        if use_graphs and pool_blocks < 2:
            raise ConfigError("Executor: CUDA graphs reserve one K/V block for padding; the pool "
                              "has 1 (raise kv_cache_max_tokens or pass cuda_graphs=False)")
        shape = tuple(pool_blocks if isinstance(d, str) else d for d in spec.shape)
        self.kv_pool = torch.zeros(shape, dtype=spec.dtype.torch, device=self.device)
        # With graphs, the pool's last block is the padded rows' scratch block, never handed out.
        num_blocks = pool_blocks - 1 if use_graphs else pool_blocks
        self.step_runner: StepRunner = eager
        if use_graphs:
            runner = self._graph_runner(network, eager, pad_block=num_blocks,
                                        batch_sizes=cuda_graph_batch_sizes)
            if cuda_graph_capture == "startup":
                runner.capture_all()
            self.step_runner = runner
        self.kv_cache = KVCacheManager(num_blocks, self.limits.tokens_per_block, enable_prefix_reuse)
        self.scheduler = Scheduler(self.kv_cache, self.limits.max_batch_size,
                                   self.limits.max_num_tokens, scheduler_policy, enable_chunked_context)
        self.max_queue_size = max_queue_size
        self.max_finished_results = max_finished_results
        self._seeds = random.Random(seed)
        self._cond = threading.Condition()
        self._ids = itertools.count()
        self._pending: collections.deque[_Handle] = collections.deque()
        self._cancels: set[int] = set()
        self._handles: dict[int, _Handle] = {}
        self._finished_order: collections.deque[int] = collections.deque()
        self._counts = collections.Counter[str]()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="trtdsl-executor", daemon=True)
        self._thread.start()
        _LIVE_EXECUTORS.add(self)

    # -- construction helpers ----------------------------------------------------------------------
    def _limits(self, network: Any, max_batch_size: int | None, max_num_tokens: int | None) -> _Limits:
        bc = self.engine.build_config
        profile = network.profiles[0].ranges if network.profiles else {}
        built_batch = int(bc.get("max_batch_size") or profile.get("batch", (0, 0, 1))[2])
        built_tokens = int(bc.get("max_num_tokens") or profile.get("num_tokens", (0, 0, 1))[2])
        tpb = int(network.input_specs["kv_cache"].shape[4])
        max_seq = int(bc.get("max_seq_len") or profile.get("max_blocks_per_seq", (0, 0, 1))[2] * tpb)
        problems = []
        for name, value, built in (("max_batch_size", max_batch_size, built_batch),
                                   ("max_num_tokens", max_num_tokens, built_tokens)):
            if value is not None and not 1 <= value <= built:
                problems.append(f"{name}={value} must be in [1, {built}] (the engine's build limit)")
        if problems:
            raise ConfigError("Executor: " + "; ".join(problems))
        vocab = network.outputs["logits"].shape[-1]
        return _Limits(max_batch_size=max_batch_size or built_batch,
                       max_num_tokens=max_num_tokens or built_tokens, max_seq_len=max_seq,
                       max_input_len=int(bc.get("max_input_len") or max_seq), tokens_per_block=tpb,
                       max_num_blocks=int(profile.get("num_blocks", (0, 0, 1 << 30))[2]),
                       vocab_size=int(vocab))

    def _wants_graphs(self, cuda_graphs: bool | None, step_runner: StepRunner | None) -> bool:
        if cuda_graphs is None:
            return self.device.type == "cuda" and step_runner is None
        if cuda_graphs and (self.device.type != "cuda" or step_runner is not None):
            raise ConfigError("Executor: cuda_graphs=True needs device='cuda' and the built-in step "
                              "runner (no step_runner)")
        return bool(cuda_graphs)

    def _graph_runner(self, network: Any, eager: Any, pad_block: int,
                      batch_sizes: Sequence[int] | None) -> Any:
        from .cuda_graphs import DecodeGraphRunner, default_batch_buckets, default_kv_buckets
        lim = self.limits
        buckets = tuple(batch_sizes) if batch_sizes else default_batch_buckets(lim.max_batch_size)
        if any(not isinstance(b, int) or not 1 <= b <= lim.max_batch_size for b in buckets):
            raise ConfigError(f"Executor: cuda_graph_batch_sizes={list(buckets)} must be ints in "
                              f"[1, max_batch_size={lim.max_batch_size}]")
        profile = network.profiles[0].ranges if network.profiles else {}
        width = int(profile.get("max_blocks_per_seq", (0, 0, -(-lim.max_seq_len // lim.tokens_per_block)))[2])
        return DecodeGraphRunner(eager, self.kv_pool, table_width=width, pad_block=pad_block,
                                 batch_buckets=buckets, kv_buckets=default_kv_buckets(lim.max_seq_len))

    def _pool_blocks(self, spec: Any, max_tokens: int | None, fraction: float) -> int:
        tpb, cap = self.limits.tokens_per_block, self.limits.max_num_blocks
        if max_tokens is not None:
            if not isinstance(max_tokens, int) or max_tokens < tpb:
                raise ConfigError(f"Executor: kv_cache_max_tokens={max_tokens!r} must be an int >= "
                                  f"tokens_per_block ({tpb})")
            blocks = max_tokens // tpb
            if blocks > cap:
                raise ConfigError(f"Executor: kv_cache_max_tokens={max_tokens} needs {blocks} blocks "
                                  f"but the engine was built for at most {cap} (its num_blocks "
                                  f"profile); rebuild with a larger pool or ask for <= {cap * tpb}")
            return blocks
        if self.device.type != "cuda":
            # Every sequence of a full batch at max_seq_len: enough to never preempt. (The engine's
            # num_blocks profile may allow far more; on the CPU nothing measures free memory.)
            lim = self.limits
            return min(cap, lim.max_batch_size * -(-lim.max_seq_len // tpb))
        layers, _, _, kv_heads, _, head_dim = spec.shape
        free = torch.cuda.mem_get_info(self.device)[0]
        blocks = blocks_for_memory(free, kv_cache_free_gpu_mem_fraction_check(fraction),
                                   num_layers=layers, num_kv_heads=kv_heads, head_dim=head_dim,
                                   tokens_per_block=tpb, dtype_bytes=spec.dtype.itemsize_bits / 8)
        if blocks < 1:
            raise ConfigError(f"Executor: no GPU memory left for the K/V cache ({free} bytes free)")
        return min(blocks, cap)

    # -- public API --------------------------------------------------------------------------------
    def submit(self, request: GenerationRequest) -> int:
        """Queue a request; returns its id. Raises ConfigError for a request the engine cannot
        serve and QueueFullError when ``max_queue_size`` requests are already waiting."""
        self._validate(request)
        seed = request.sampling.seed
        generator = torch.Generator(device=self.device)
        generator.manual_seed(seed if seed is not None else self._seeds.getrandbits(62))
        with self._cond:
            if self._stopping:
                raise ExecutorError("Executor.submit: the executor is shut down")
            if len(self._pending) + len(self.scheduler.waiting) >= self.max_queue_size:
                raise QueueFullError(f"Executor.submit: {self.max_queue_size} requests are already "
                                     "queued (max_queue_size); retry later")
            request_id = next(self._ids)
            handle = _Handle(request_id, request, RowSampling(request.sampling, generator,
                                                              request.logprobs))
            self._handles[request_id] = handle
            self._pending.append(handle)
            self._counts["submitted"] += 1
            self._cond.notify_all()
        return request_id

    def _validate(self, request: GenerationRequest) -> None:
        if not isinstance(request, GenerationRequest):
            raise ConfigError(f"Executor.submit takes a GenerationRequest, got {type(request).__name__}")
        lim, n = self.limits, len(request.prompt_token_ids)
        problems = []
        if n > lim.max_input_len:
            problems.append(f"the prompt has {n} tokens, the engine's max_input_len is {lim.max_input_len}")
        if n + request.max_new_tokens > lim.max_seq_len:
            problems.append(f"prompt ({n}) + max_new_tokens ({request.max_new_tokens}) exceeds the "
                            f"engine's max_seq_len {lim.max_seq_len}")
        bad = [t for t in request.prompt_token_ids if not 0 <= t < lim.vocab_size]
        if bad:
            problems.append(f"prompt token ids {bad[:5]} are outside the vocabulary [0, {lim.vocab_size})")
        if request.end_id is not None and not 0 <= request.end_id < lim.vocab_size:
            problems.append(f"end_id {request.end_id} is outside the vocabulary [0, {lim.vocab_size})")
        need = -(-(n + request.max_new_tokens - 1) // lim.tokens_per_block)
        if need > self.kv_cache.num_blocks:
            problems.append(f"it may hold {n + request.max_new_tokens - 1} tokens ({need} blocks) but "
                            f"the K/V cache has {self.kv_cache.num_blocks} blocks")
        if problems:
            raise ConfigError("GenerationRequest: " + "; ".join(problems))

    def cancel(self, request_id: int) -> bool:
        """Cancel a queued or running request (its blocks are freed at the next iteration).
        Returns False when the id is unknown or already finished."""
        with self._cond:
            handle = self._handles.get(request_id)
            if handle is None or handle.done:
                return False
            self._cancels.add(request_id)
            self._cond.notify_all()
        return True

    def stream(self, request_id: int, timeout: float | None = None) -> Iterator[GenerationOutput]:
        """Yield the request's updates as they come; the last one has ``finished=True``."""
        handle = self._handle(request_id)
        i = 0
        while True:
            with handle.cond:
                if not handle.cond.wait_for(lambda: len(handle.outputs) > i or handle.done, timeout):
                    raise TimeoutError(f"request {request_id}: no output within {timeout} s")
                new, done, error = handle.outputs[i:], handle.done, handle.error
            for out in new:
                yield out
            i += len(new)
            if done and i == len(handle.outputs):
                if error is not None:
                    raise ExecutorError(f"request {request_id} failed: {error}") from error
                return

    async def astream(self, request_id: int) -> AsyncIterator[GenerationOutput]:
        """``async for`` version of :meth:`stream`, for asyncio servers (never blocks the loop)."""
        handle = self._handle(request_id)
        loop = asyncio.get_running_loop()
        i = 0
        while True:
            with handle.cond:
                new, done, error = handle.outputs[i:], handle.done, handle.error
                event = None
                if not new and not done:
                    event = asyncio.Event()
                    handle.waiters.append((loop, event))
            if event is not None:
                await event.wait()
                continue
            for out in new:
                yield out
            i += len(new)
            if done and i == len(handle.outputs):
                if error is not None:
                    raise ExecutorError(f"request {request_id} failed: {error}") from error
                return

    def result(self, request_id: int, timeout: float | None = None) -> GenerationResult:
        """Wait for the request to finish and return its result."""
        handle = self._handle(request_id)
        with handle.cond:
            if not handle.cond.wait_for(lambda: handle.done, timeout):
                raise TimeoutError(f"request {request_id} did not finish within {timeout} s")
        if handle.error is not None:
            raise ExecutorError(f"request {request_id} failed: {handle.error}") from handle.error
        assert handle.result is not None
        return handle.result

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Submit every request, wait for all; results in order (the batch path of ModelRunner)."""
        ids = [self.submit(r) for r in requests]
        return [self.result(i) for i in ids]

    def stats(self) -> ExecutorStats:
        with self._cond:
            c = self._counts
            return ExecutorStats(
                waiting_requests=len(self._pending) + len(self.scheduler.waiting),
                running_requests=len(self.scheduler.running), submitted_requests=c["submitted"],
                finished_requests=c["finished"], cancelled_requests=c["cancelled"],
                failed_requests=c["failed"], steps=c["steps"], generated_tokens=c["generated"],
                computed_tokens=c["computed"], preemptions=self.scheduler.num_preemptions,
                kv=self.kv_cache.stats())

    def shutdown(self, timeout: float | None = 10.0) -> None:
        """Stop the loop; unfinished requests fail with ExecutorError. Idempotent."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        with self._cond:
            handles = [h for h in self._handles.values() if not h.done]
        for h in handles:
            h.push(None, error=ExecutorError("the executor was shut down"))

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()

    @property
    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def _handle(self, request_id: int) -> _Handle:
        with self._cond:
            handle = self._handles.get(request_id)
        if handle is None:
            raise ExecutorError(f"unknown request id {request_id!r} (never submitted, or its result "
                                f"was dropped after max_finished_results={self.max_finished_results})")
        return handle

    # -- the loop ----------------------------------------------------------------------------------
    def _loop(self) -> None:
        idle_steps = 0
        while True:
            with self._cond:
                while not (self._stopping or self._pending or self._cancels
                           or self.scheduler.has_unfinished_requests()):
                    self._cond.wait()
                if self._stopping:
                    return
                self._admit_pending()
                self._apply_cancels()
                if not self.scheduler.has_unfinished_requests():
                    continue
                batch = self.scheduler.schedule()
            if not batch.sequences:
                # Nothing fits this iteration (e.g. a request just preempted itself); the next
                # schedule admits it. Back off only if it keeps happening.
                idle_steps += 1
                if idle_steps > 2:
                    time.sleep(0.001)
                with self._cond:
                    self.scheduler.update(batch, {})
                continue
            idle_steps = 0
            self._run_step(batch)

    def _admit_pending(self) -> None:
        while self._pending:
            handle = self._pending.popleft()
            r = handle.request
            try:
                self.scheduler.add_request(Request(handle.request_id, list(r.prompt_token_ids),
                                                   r.max_new_tokens, r.end_id,
                                                   [list(s) for s in r.stop_token_ids]))
            except TrtdslError as exc:
                self._fail(handle, exc)

    def _apply_cancels(self) -> None:
        for request_id in sorted(self._cancels):
            handle = self._handles.get(request_id)
            if handle is None or handle.done:
                continue
            if handle in self._pending:  # not admitted yet
                self._pending.remove(handle)
            request = self.scheduler.get_request(request_id)
            self.scheduler.cancel(request_id)
            self._finish(handle, request, FinishReason.CANCELLED)
        self._cancels.clear()

    def _run_step(self, batch: ScheduledBatch) -> None:
        try:
            steps = batch.to_step_inputs("cpu")  # the step runner copies them to the device
            feed = {**steps.as_dict(), "kv_cache": self.kv_pool}
            hints = {"max_q_len": max(len(s.token_ids) for s in batch.sequences),
                     "max_kv_len": max(s.past_len + len(s.token_ids) for s in batch.sequences)}
            logits = self.step_runner.run(feed, hints)
            rows = [i for i, s in enumerate(batch.sequences) if s.samples]
            sampled = None
            if rows:
                reqs = [batch.sequences[i].request for i in rows]
                if len(rows) < logits.shape[0]:  # rows of mid-context chunks sample nothing
                    logits = logits.index_select(0, torch.tensor(rows, device=logits.device))
                sampled = sample_rows(
                    logits,
                    [self._handles[_rid(r)].sampling for r in reqs],
                    [r.all_token_ids for r in reqs], [r.output_token_ids for r in reqs])
        except Exception as exc:  # noqa: BLE001 - one bad step must not kill the server
            with self._cond:
                for s in batch.sequences:
                    self.scheduler.cancel(s.request_id)
                self.scheduler.update(batch, {})
                for s in batch.sequences:
                    self._fail(self._handles[_rid(s.request)], exc)
            return
        with self._cond:
            tokens = {}
            if sampled is not None:
                tokens = {batch.sequences[i].request_id: t for i, t in zip(rows, sampled.tokens)}
            self.scheduler.update(batch, tokens)
            self._counts["steps"] += 1
            self._counts["computed"] += batch.num_tokens
            if sampled is not None:
                self._deliver(batch, rows, sampled)

    def _deliver(self, batch: ScheduledBatch, rows: list[int], sampled: Any) -> None:
        now = time.perf_counter()
        for j, i in enumerate(rows):
            request = batch.sequences[i].request
            handle = self._handles.get(_rid(request))
            if handle is None or handle.done:
                continue  # cancelled while the step ran
            self._counts["generated"] += 1
            if handle.first_token is None:
                handle.first_token = now
            want = handle.sampling.logprobs is not None
            out = GenerationOutput(
                _rid(request), (sampled.tokens[j],),
                (sampled.logprobs[j],) if want else None,
                (sampled.top_logprobs[j] or {},) if want else None,
                request.is_finished,
                request.finish_reason.value if request.finish_reason else None)
            if request.is_finished:
                self._finish(handle, request, request.finish_reason, out)
            else:
                handle.push(out)

    def _finish(self, handle: _Handle, request: Request | None, reason: FinishReason | None,
                last: GenerationOutput | None = None) -> None:
        reason = reason or FinishReason.CANCELLED
        want = handle.sampling.logprobs is not None
        if last is None:  # cancelled: a final, empty update
            last = GenerationOutput(handle.request_id, (), () if want else None, () if want else None,
                                    True, reason.value)
        outs = handle.outputs + [last]
        tokens = tuple(t for o in outs for t in o.token_ids)
        now = time.perf_counter()
        result = GenerationResult(
            request_id=handle.request_id, prompt_token_ids=tuple(handle.request.prompt_token_ids),
            output_token_ids=tokens, finish_reason=reason.value,
            logprobs=tuple(x for o in outs for x in (o.logprobs or ())) if want else None,
            top_logprobs=tuple(x for o in outs for x in (o.top_logprobs or ())) if want else None,
            num_cached_tokens=request.num_cached_tokens if request else 0,
            num_preemptions=request.num_preemptions if request else 0,
            time_to_first_token=(handle.first_token - handle.submitted) if handle.first_token else None,
            latency=now - handle.submitted)
        self._counts["cancelled" if reason is FinishReason.CANCELLED else "finished"] += 1
        handle.push(last, result=result)
        self._retire(handle.request_id)

    def _fail(self, handle: _Handle, exc: BaseException) -> None:
        self._counts["failed"] += 1
        handle.push(None, error=exc)
        self._retire(handle.request_id)

    def _retire(self, request_id: int) -> None:
        """Keep finished handles for ``result()``, dropping the oldest beyond the bound."""
        self._finished_order.append(request_id)
        while len(self._finished_order) > self.max_finished_results:
            self._handles.pop(self._finished_order.popleft(), None)


def _rid(request: Request) -> int:
    """Scheduler ids are Hashable; the executor's are the ints ``submit`` returned."""
    return cast(int, request.request_id)


def kv_cache_free_gpu_mem_fraction_check(fraction: float) -> float:
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"Executor: kv_cache_free_gpu_mem_fraction={fraction} must be in (0, 1]")
    return fraction
