"""Prometheus metrics of one server. Each server owns its own ``CollectorRegistry`` (no global
state: two servers in one process, e.g. in tests, do not share counters).

Gauges that mirror the executor (queue lengths, K/V blocks) are refreshed from
``Executor.stats()`` when ``/metrics`` is scraped; latencies are observed by the request handlers
as tokens reach the client, so they include detokenization and queueing, as a user sees them.
"""

from __future__ import annotations

import collections
import threading
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from ..runtime.executor import ExecutorStats

__all__ = ["ServerMetrics"]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                    30.0, 60.0)
_RATE_WINDOW_S = 10.0


class ServerMetrics:
    """The server's metrics; :meth:`render` returns the Prometheus text format."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.waiting = Gauge("trtdsl_requests_waiting", "Requests queued, not yet running", registry=r)
        self.running = Gauge("trtdsl_requests_running", "Requests holding K/V blocks", registry=r)
        self.kv_usage = Gauge("trtdsl_kv_cache_usage_ratio", "Fraction of K/V blocks held by live "
                              "requests", registry=r)
        self.kv_used = Gauge("trtdsl_kv_cache_used_blocks", "K/V blocks held by live requests", registry=r)
        self.kv_total = Gauge("trtdsl_kv_cache_blocks", "K/V blocks in the pool", registry=r)
        self.kv_cached = Gauge("trtdsl_kv_cache_cached_blocks", "Blocks in the prefix cache", registry=r)
        self.prefix_reused = Gauge("trtdsl_prefix_cache_reused_tokens", "Prompt tokens served from the "
                                   "prefix cache since start", registry=r)
        self.prefix_hit_rate = Gauge("trtdsl_prefix_cache_hit_ratio", "Reused / looked-up prompt "
                                     "tokens since start", registry=r)
        self.preemptions = Gauge("trtdsl_preemptions", "Requests preempted since start", registry=r)
        self.tokens_per_s = Gauge("trtdsl_generation_tokens_per_second", "Tokens sent to clients per "
                                  f"second over the last {_RATE_WINDOW_S:g} s", registry=r)
        self.generated = Counter("trtdsl_generation_tokens", "Tokens generated for clients", registry=r)
        self.prompt_tokens = Counter("trtdsl_prompt_tokens", "Prompt tokens of accepted requests",
                                     registry=r)
        self.requests = Counter("trtdsl_requests", "Finished HTTP requests by outcome", ["outcome"],
                                registry=r)
        self.ttft = Histogram("trtdsl_time_to_first_token_seconds", "Request arrival to first token",
                              buckets=_LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("trtdsl_inter_token_latency_seconds", "Time between consecutive tokens "
                             "of a request", buckets=_LATENCY_BUCKETS, registry=r)
        self.e2e = Histogram("trtdsl_request_latency_seconds", "Request arrival to last token",
                             buckets=_LATENCY_BUCKETS, registry=r)
        self._lock = threading.Lock()
        self._recent: collections.deque[tuple[float, int]] = collections.deque()

    def observe_tokens(self, n: int) -> None:
        if n <= 0:
            return
        self.generated.inc(n)
        now = time.monotonic()
        with self._lock:
            self._recent.append((now, n))

    def render(self, stats: ExecutorStats) -> bytes:
        self.waiting.set(stats.waiting_requests)
        self.running.set(stats.running_requests)
        self.kv_usage.set(stats.kv_usage)
        self.kv_used.set(stats.kv.used_blocks)
        self.kv_total.set(stats.kv.num_blocks)
        self.kv_cached.set(stats.kv.cached_blocks)
        self.prefix_reused.set(stats.kv.reused_tokens)
        self.prefix_hit_rate.set(stats.kv.hit_rate)
        self.preemptions.set(stats.preemptions)
        now = time.monotonic()
        with self._lock:
            while self._recent and self._recent[0][0] < now - _RATE_WINDOW_S:
                self._recent.popleft()
            total = sum(n for _, n in self._recent)
        self.tokens_per_s.set(total / _RATE_WINDOW_S)
        return generate_latest(self.registry)
