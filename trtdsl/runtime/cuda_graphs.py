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

from typing import Any, Mapping

import torch

from ..errors import BackendError

__all__ = ["CapturedStep", "CudaGraphCache"]


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
        with torch.cuda.graph(self.graph, pool=pool):
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
