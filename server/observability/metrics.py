"""Prometheus metrics of the model layer, exposed at GET /metrics.

Circuit-breaker state is read from the breakers at scrape time (a collector), so it is never stale.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from server.llm.registry import ModelRegistry
from server.llm.resilience import BreakerState
from server.llm.service import CallReport

_LATENCY_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30)
_STATE_VALUES = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}


class ModelMetrics:
    """One set per app (not module globals), so tests can build apps side by side."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.calls = Counter(
            "agentctl_model_calls_total",
            "Model calls by the model that answered (or none), role and outcome.",
            ["model", "role", "outcome"],
            registry=registry,
        )
        self.fallbacks = Counter(
            "agentctl_model_fallbacks_total",
            "Models skipped or given up on within a call.",
            ["model", "role"],
            registry=registry,
        )
        self.retries = Counter(
            "agentctl_model_retries_total", "Attempts beyond the first for one model.", ["role"], registry=registry
        )
        self.tokens = Counter(
            "agentctl_model_tokens_total",
            "Tokens by model, role and kind (input, output, cached).",
            ["model", "role", "kind"],
            registry=registry,
        )
        self.cost = Counter(
            "agentctl_model_cost_usd_total",
            "Cost in US dollars from the price table.",
            ["model", "role"],
            registry=registry,
        )
        self.latency = Histogram(
            "agentctl_model_call_duration_seconds",
            "Whole model calls, retries and fallbacks included.",
            ["model", "role"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.time_to_first_token = Histogram(
            "agentctl_model_time_to_first_token_seconds",
            "Streaming calls: time until the first token.",
            ["model", "role"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )

    def record(self, report: CallReport, outcome: str) -> None:
        model = report.model or "none"
        self.calls.labels(model, report.role, outcome).inc()
        for fallback in report.fallbacks:
            self.fallbacks.labels(fallback.model, report.role).inc()
        if report.retries:
            self.retries.labels(report.role).inc(report.retries)
        if outcome != "ok":
            return
        usage = report.usage
        for kind, count in (
            ("input", usage.input_tokens),
            ("output", usage.output_tokens),
            ("cached", usage.cached_tokens),
        ):
            if count:
                self.tokens.labels(model, report.role, kind).inc(count)
        if usage.cost_usd:
            self.cost.labels(model, report.role).inc(usage.cost_usd)
        self.latency.labels(model, report.role).observe(report.latency_seconds)
        if report.time_to_first_token_seconds is not None:
            self.time_to_first_token.labels(model, report.role).observe(report.time_to_first_token_seconds)


class BreakerStateCollector(Collector):
    def __init__(self, models: ModelRegistry) -> None:
        self._models = models

    def collect(self) -> Iterator[GaugeMetricFamily]:
        gauge = GaugeMetricFamily(
            "agentctl_model_circuit_state",
            "Circuit breaker per model: 0 closed, 1 half-open, 2 open.",
            labels=["model"],
        )
        for name, model in self._models.models.items():
            gauge.add_metric([name], _STATE_VALUES[model.breaker.state])
        yield gauge


class MemoryMetrics:
    """Long-term memory: how recalls end (ok, cached, timeout, error) and what became of queued turns."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.recalls = Counter(
            "agentctl_memory_recalls_total",
            "Memory searches before a turn, by outcome: ok, cached, timeout (past the budget) or error.",
            ["outcome"],
            registry=registry,
        )
        self.recall_seconds = Histogram(
            "agentctl_memory_recall_duration_seconds",
            "Memory searches that finished within the budget (embedding included).",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1),
            registry=registry,
        )
        self.writes = Counter(
            "agentctl_memory_writes_total",
            "Turns given to memory after they ended, by outcome: ok, error or dropped (queue full or closing).",
            ["outcome"],
            registry=registry,
        )
        self.queue_depth = Gauge(
            "agentctl_memory_queue_depth", "Turns waiting to be remembered in this worker.", registry=registry
        )
