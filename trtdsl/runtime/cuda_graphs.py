"""CUDA-graph replay of whole steps.

A step of a built network is captured once per *bucket* (a padded shape of the step inputs, e.g. a
decode step of up to 8 sequences) and replayed afterwards: the Python executor, which walks ~10
layers per transformer block, runs only at capture time. Inputs are copied into static buffers
before each replay; outputs are views of static buffers, valid until the next replay.

Invariants:
- the K/V pool (and any other input listed in ``persistent``) is captured by address, never copied:
  the caller passes the same tensor every step;
- every plugin implementation used in a captured step reads its metadata from device buffers and
  sizes its grid from the host-side ``hints`` that are fixed per bucket (no host synchronization);
- a bucket's padded rows compute garbage that the caller ignores (padded sequences use
  ``seq_lens = 0`` or a scratch block, chosen by the caller).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch

from ..errors import BackendError, ConfigError, ShapeError

__all__ = ["CapturedStep", "CudaGraphCache", "DecodeGraphRunner", "bucket_for", "default_batch_buckets",
           "default_kv_buckets", "pad_decode_step", "padding_only_step"]


class CapturedStep:
    """One captured step: static input buffers, a CUDA graph and its static outputs."""

    def __init__(self, executor: Any, example_feed: Mapping[str, torch.Tensor],
                 hints: Mapping[str, Any], persistent: tuple[str, ...] = ("kv_cache",),
                 pool: Any = None, warmup: int = 2):
        if executor.device.type != "cuda":
            raise BackendError("CUDA graphs need an executor on a CUDA device")
        self.persistent = set(persistent)
        self.inputs = {k: (v if k in self.persistent else v.clone()) for k, v in example_feed.items()}
        self.hints = dict(hints)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(warmup):  # first runs allocate and build lazy kernels outside the graph
                executor.run(self.inputs, hints=self.hints)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: other threads (a server submitting requests) may use CUDA during capture.
        with torch.cuda.graph(self.graph, pool=pool, capture_error_mode="thread_local"):
            self.outputs = executor.run(self.inputs, hints=self.hints)

    def replay(self, feed: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Copy ``feed`` into the static buffers (same shapes as captured) and replay."""
        for name, value in feed.items():
            if name in self.persistent:
                if value.data_ptr() != self.inputs[name].data_ptr():
                    raise BackendError(f"input {name!r} was captured by address; pass the same tensor")
                continue
            dst = self.inputs[name]
            if dst.shape != value.shape:
                raise BackendError(f"input {name!r}: shape {tuple(value.shape)} != captured "
                                   f"{tuple(dst.shape)}; pad to the bucket first")
            dst.copy_(value, non_blocking=True)
        self.graph.replay()
        return self.outputs


class CudaGraphCache:
    """Captured steps keyed by bucket (any hashable), sharing one memory pool."""

    def __init__(self, executor: Any, persistent: tuple[str, ...] = ("kv_cache",)):
        self.executor = executor
        self.persistent = persistent
        self.pool = torch.cuda.graph_pool_handle()
        self.steps: dict[Any, CapturedStep] = {}

    def run(self, bucket: Any, feed: Mapping[str, torch.Tensor],
            hints: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        step = self.steps.get(bucket)
        if step is None:
            step = CapturedStep(self.executor, feed, hints, self.persistent, self.pool)
            self.steps[bucket] = step
        return step.replay(feed)


# -- decode steps of the in-flight executor ----------------------------------------------------------

STEP_INPUT_NAMES = ("input_ids", "position_ids", "seq_lens", "past_lens", "cu_seqlens", "block_tables",
                    "last_token_ids")


def default_batch_buckets(max_batch_size: int) -> tuple[int, ...]:
    """Batch sizes a decode step is padded to: powers of two up to 32, then multiples of 32, and
    ``max_batch_size`` itself. Decode is weight-bandwidth bound, so a padded row costs far less than
    a row of its own; coarser buckets mean fewer captures (and fewer static logits buffers)."""
    if max_batch_size < 1:
        raise ConfigError(f"max_batch_size must be >= 1, got {max_batch_size}")
    sizes = {b for b in (1, 2, 4, 8, 16, 32) if b < max_batch_size}
    sizes.update(range(64, max_batch_size, 32))
    sizes.add(max_batch_size)
    return tuple(sorted(sizes))


def default_kv_buckets(max_seq_len: int, smallest: int = 512) -> tuple[int, ...]:
    """Upper bounds of ``past_len + 1`` a decode graph is captured for: ``smallest`` (the fused
    decode kernel's range), then x4 steps, then ``max_seq_len``. The attention kernels size their
    grids from this bound, so each is a separate graph; a sequence shorter than its bucket costs
    only early-exiting splits."""
    sizes, bound = [], smallest
    while bound < max_seq_len:
        sizes.append(bound)
        bound *= 4
    sizes.append(max_seq_len)
    return tuple(sizes)


def bucket_for(value: int, buckets: Sequence[int]) -> int:
    """The smallest bucket >= ``value`` (buckets sorted ascending)."""
    for b in buckets:
        if value <= b:
            return b
    raise ConfigError(f"{value} exceeds the largest bucket {buckets[-1]}")


def pad_decode_step(feed: Mapping[str, torch.Tensor], batch: int, table_width: int,
                    pad_block: int) -> dict[str, torch.Tensor]:
    """Pad a decode step (exactly one new token per sequence) of ``n <= batch`` sequences to
    ``batch`` rows and its block tables to ``table_width`` columns.

    A padded row is a one-token sequence (token 0 at position 0, ``past_len = 0``) whose block
    table is ``[pad_block]``: it writes K/V only into ``pad_block`` (a block the cache manager
    never hands out), attends only to itself, and its logits row is dropped by the caller. Real
    tables are widened with block id 0, as :func:`~trtdsl.runtime.step_inputs.build_step_inputs`
    pads them (the kernels never read entries past a sequence's length). Works on any device."""
    n = int(feed["seq_lens"].shape[0])
    if int(feed["input_ids"].shape[0]) != n:
        raise ShapeError(f"pad_decode_step: {feed['input_ids'].shape[0]} tokens for {n} sequences; "
                         "only decode steps (one token per sequence) are padded")
    tables = feed["block_tables"]
    if n > batch or tables.shape[1] > table_width:
        raise ShapeError(f"pad_decode_step: step of {n} sequences x {tables.shape[1]} blocks does not "
                         f"fit the bucket of {batch} x {table_width}")
    extra = batch - n

    def rows(name: str, fill: int) -> torch.Tensor:
        t = feed[name]
        return torch.cat([t, t.new_full((extra,), fill)]) if extra else t

    padded_tables = tables.new_zeros((batch, table_width))
    padded_tables[:n, :tables.shape[1]] = tables
    padded_tables[n:, 0] = pad_block
    ramp = torch.arange(batch + 1, dtype=feed["cu_seqlens"].dtype, device=tables.device)
    return {"input_ids": rows("input_ids", 0), "position_ids": rows("position_ids", 0),
            "seq_lens": rows("seq_lens", 1), "past_lens": rows("past_lens", 0),
            "cu_seqlens": ramp, "block_tables": padded_tables, "last_token_ids": ramp[:-1]}


def padding_only_step(batch: int, table_width: int, pad_block: int) -> dict[str, torch.Tensor]:
    """A decode step of ``batch`` padded rows and no sequence: what a bucket is captured with before
    any request exists (it writes K/V only into ``pad_block``)."""
    empty = {name: torch.zeros(0, dtype=torch.int32) for name in STEP_INPUT_NAMES}
    empty["cu_seqlens"] = torch.zeros(1, dtype=torch.int32)
    empty["block_tables"] = torch.zeros((0, 1), dtype=torch.int32)
    return pad_decode_step(empty, batch, table_width, pad_block)


class _DecodeGraph:
    """A captured decode step of one (batch, K/V bound) bucket. Its step inputs are views of ONE
    device int32 buffer, loaded per replay from a pinned host buffer with a single copy."""

    def __init__(self, executor: Any, kv_pool: torch.Tensor, padded: Mapping[str, torch.Tensor],
                 kv_bound: int, pool: Any):
        self.shapes = {name: tuple(padded[name].shape) for name in STEP_INPUT_NAMES}
        sizes = [math.prod(shape) for shape in self.shapes.values()]
        self.host = torch.empty(sum(sizes), dtype=torch.int32, pin_memory=True)
        self.device_buffer = torch.empty(sum(sizes), dtype=torch.int32, device=kv_pool.device)
        self.views = {name: part.view(shape) for (name, shape), part
                      in zip(self.shapes.items(), self.device_buffer.split(sizes))}
        self.load(padded)
        feed = {**self.views, "kv_cache": kv_pool}
        # Every input is captured by address (the views and the pool); nothing is cloned.
        self.step = CapturedStep(executor, feed, {"max_q_len": 1, "max_kv_len": kv_bound},
                                 persistent=tuple(feed), pool=pool)

    def load(self, padded: Mapping[str, torch.Tensor]) -> None:
        torch.cat([padded[name].reshape(-1).to(torch.int32) for name in self.shapes], out=self.host)
        # The host buffer is rewritten only after the caller has read this step's sampled tokens,
        # which waits for the stream, so the asynchronous copy has finished by then.
        self.device_buffer.copy_(self.host, non_blocking=True)

    def replay(self, padded: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self.load(padded)
        self.step.graph.replay()
        return self.step.outputs


class DecodeGraphRunner:
    """A step runner (see ``runtime.executor.StepRunner``) that replays decode steps from CUDA
    graphs and runs every other step (context chunks, mixed steps) with ``eager``.

    A decode step of ``n`` sequences whose longest holds ``L`` tokens after the step is padded to
    the smallest batch bucket ``>= n`` (:func:`pad_decode_step`) and replayed from the graph of
    ``(batch bucket, smallest K/V bucket >= L)``, captured on first use. Invariants: ``kv_pool``
    is the same tensor every step (captured by address); ``pad_block`` is never given to a sequence
    by the cache manager; step inputs arrive on the host (the runner does the one device copy).

    Args:
        eager: the eager runner; its ``executor`` (a CUDA ``TorchExecutor``) is what is captured.
        kv_pool: the executor's K/V pool.
        table_width: block-table columns of every graph (the engine's ``max_blocks_per_seq``).
        pad_block: the reserved pool block padded rows write into.
        batch_buckets / kv_buckets: see :func:`default_batch_buckets` / :func:`default_kv_buckets`.
    """

    def __init__(self, eager: Any, kv_pool: torch.Tensor, *, table_width: int, pad_block: int,
                 batch_buckets: Sequence[int], kv_buckets: Sequence[int]):
        if kv_pool.device.type != "cuda":
            raise BackendError("DecodeGraphRunner needs the K/V pool on a CUDA device")
        self.eager = eager
        self.kv_pool = kv_pool
        self.table_width, self.pad_block = int(table_width), int(pad_block)
        self.batch_buckets = tuple(sorted(batch_buckets))
        self.kv_buckets = tuple(sorted(kv_buckets))
        self.pool = torch.cuda.graph_pool_handle()
        self.graphs: dict[tuple[int, int], _DecodeGraph] = {}
        self.replays = 0

    def capture_all(self) -> int:
        """Capture every (batch, K/V) bucket now (a server's startup) rather than on first use;
        the capture steps consist of padded rows only, so they write only into the pad block.
        Returns the number of graphs held."""
        for batch in self.batch_buckets:
            for kv_bound in self.kv_buckets:
                if (batch, kv_bound) not in self.graphs:
                    padded = padding_only_step(batch, self.table_width, self.pad_block)
                    self.graphs[(batch, kv_bound)] = _DecodeGraph(self.eager.executor, self.kv_pool, padded,
                                                                  kv_bound, self.pool)
        return len(self.graphs)

    def run(self, feed: Mapping[str, torch.Tensor], hints: Mapping[str, Any]) -> torch.Tensor:
        n = int(feed["seq_lens"].shape[0])
        if int(hints["max_q_len"]) != 1 or n > self.batch_buckets[-1] or \
                int(hints["max_kv_len"]) > self.kv_buckets[-1]:
            return self.eager.run(feed, hints)
        key = (bucket_for(n, self.batch_buckets), bucket_for(int(hints["max_kv_len"]), self.kv_buckets))
        padded = pad_decode_step(feed, key[0], self.table_width, self.pad_block)
        graph = self.graphs.get(key)
        if graph is None:
            graph = self.graphs[key] = _DecodeGraph(self.eager.executor, self.kv_pool, padded, key[1],
                                                    self.pool)
        outputs = graph.replay(padded)
        self.replays += 1
        return outputs["logits"][:n]
