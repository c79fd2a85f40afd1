"""`GET /metrics`: Prometheus counters and gauges of one server, in its own registry (several
servers in one process, as in the tests, never share counts)."""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["ServerMetrics", "CONTENT_TYPE_LATEST"]

disable_created_metrics()     # the *_created series only add noise to a scrape


class ServerMetrics:
    def __init__(self, slots: int):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("g4rt_requests", "HTTP requests answered, by endpoint and status code",
                                ["endpoint", "status"], registry=r)
        self.prompt_tokens = Counter("g4rt_prompt_tokens", "Prompt tokens of finished generations", registry=r)
        self.cached_tokens = Counter("g4rt_prompt_cached_tokens",
                                     "Prompt tokens reused from a slot's KV cache", registry=r)
        self.generated_tokens = Counter("g4rt_generated_tokens", "Tokens generated", registry=r)
        self.prefill_seconds = Counter("g4rt_prefill_seconds", "Time spent prefilling prompts", registry=r)
        self.decode_seconds = Counter("g4rt_decode_seconds", "Time spent in decode steps", registry=r)
        self.prefill_tps = Gauge("g4rt_prefill_tokens_per_second",
                                 "Prefill throughput over all finished generations", registry=r)
        self.decode_tps = Gauge("g4rt_decode_tokens_per_second",
                                "Decode throughput over all finished generations", registry=r)
        self.ttft = Histogram("g4rt_time_to_first_token_seconds", "Time from request to its first token",
                              buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60), registry=r)
        self.queue_depth = Gauge("g4rt_queue_depth", "Requests waiting for a slot", registry=r)
        self.busy_slots = Gauge("g4rt_busy_slots", "Slots generating now", registry=r)
        self.slots = Gauge("g4rt_slots", "Sequence slots (--parallel)", registry=r)
        self.slots.set(slots)
        self.batch_steps = Counter("g4rt_batch_steps", "Scheduler steps: one batched pass over every busy slot",
                                   registry=r)
        self.batch_sequences = Counter("g4rt_batch_sequences",
                                       "Sequences fed in those steps (over g4rt_batch_steps: the mean batch)",
                                       registry=r)
        self._lock = threading.Lock()
        self._prefill = [0, 0.0]        # tokens, seconds
        self._decode = [0, 0.0]

    def set_load(self, busy: int, queued: int) -> None:
        self.busy_slots.set(busy)
        self.queue_depth.set(queued)

    def record_batch(self, sequences: int) -> None:
        self.batch_steps.inc()
        self.batch_sequences.inc(sequences)

    def record_request(self, endpoint: str, status: int) -> None:
        self.requests.labels(endpoint, str(status)).inc()

    def record_generation(self, usage: dict) -> None:
        """A finished generation's counts (the scheduler's usage dict)."""
        self.prompt_tokens.inc(usage["prompt_tokens"])
        self.cached_tokens.inc(usage["cached_tokens"])
        self.generated_tokens.inc(usage["completion_tokens"])
        self.prefill_seconds.inc(usage["prompt_ms"] / 1e3)
        self.decode_seconds.inc(usage["predicted_ms"] / 1e3)
        if usage["completion_tokens"]:
            self.ttft.observe(usage["time_to_first_token_ms"] / 1e3)
        with self._lock:
            self._prefill[0] += usage["prompt_n"]
            self._prefill[1] += usage["prompt_ms"] / 1e3
            self._decode[0] += max(usage["predicted_n"] - 1, 0)
            self._decode[1] += usage["predicted_ms"] / 1e3
            if self._prefill[1] > 0:
                self.prefill_tps.set(self._prefill[0] / self._prefill[1])
            if self._decode[1] > 0:
                self.decode_tps.set(self._decode[0] / self._decode[1])

    def render(self) -> bytes:
        return generate_latest(self.registry)
