"""Prometheus metrics, exposed at GET /metrics, correct with any number of workers.

Under `agentctl serve` every worker writes its samples to files in a directory shared by the workers
(prometheus-client's multiprocess mode, switched on by ``prepare_metrics_directory`` before prometheus-client
is imported), and a scrape, whichever worker answers it, reads all of them: counters and histograms are summed,
gauges of live workers are summed (in flight, open streams, pools, queues) or maxed (circuit state: open in any
worker). Without that directory (tests building the app in process) a worker reports its own registry.

One set of metrics per app rather than module globals, so that tests can build apps side by side.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess, values

_MODEL_LATENCY_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30)
_HTTP_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_TURN_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)
_RECALL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1)
CIRCUIT_STATE_VALUES = {"closed": 0, "half_open": 1, "open": 2}


def multiprocess_mode() -> bool:
    """Whether this process writes its samples for a shared scrape (decided when prometheus-client loaded)."""
    return values.ValueClass is not values.MutexValue


class HttpMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "agentctl_http_requests_total",
            "HTTP requests by method, route template and status.",
            ["method", "route", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "agentctl_http_request_duration_seconds",
            "HTTP request duration by method and route template (a stream: until its last byte).",
            ["method", "route"],
            buckets=_HTTP_LATENCY_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "agentctl_http_requests_in_flight",
            "HTTP requests being answered.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.streams_open = Gauge(
            "agentctl_sse_streams_open",
            "Server-sent event streams open (chat answers being streamed).",
            registry=registry,
            multiprocess_mode="livesum",
        )


class ModelMetrics:
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
            buckets=_MODEL_LATENCY_BUCKETS,
            registry=registry,
        )
        self.time_to_first_token = Histogram(
            "agentctl_model_time_to_first_token_seconds",
            "Streaming calls: time until the first token.",
            ["model", "role"],
            buckets=_MODEL_LATENCY_BUCKETS,
            registry=registry,
        )
        self.circuit_state = Gauge(
            "agentctl_model_circuit_state",
            "Circuit breaker per model and lane (foreground: chat; background: memory, judge): 0 closed, "
            "1 half-open, 2 open (the worst of the workers).",
            ["model", "lane"],
            registry=registry,
            multiprocess_mode="livemax",
        )

        self.connections = Gauge(
            "agentctl_model_connections",
            "Connections to model endpoints by lane and state (active: carrying a request; idle: kept open; "
            "waiting: requests queued for a connection).",
            ["lane", "state"],
            registry=registry,
            multiprocess_mode="livesum",
        )

    def sample_connections(self, lane: str, active: int, idle: int, waiting: int) -> None:
        for state, value in (("active", active), ("idle", idle), ("waiting", waiting)):
            self.connections.labels(lane, state).set(value)

    def record(
        self,
        *,
        model: str,
        role: str,
        outcome: str,
        fallbacks: Sequence[str] = (),
        retries: int = 0,
        input_tokens: int = 0,
        output_tokens: int = 0,
        cached_tokens: int = 0,
        cost_usd: float = 0.0,
        latency_seconds: float = 0.0,
        time_to_first_token_seconds: float | None = None,
    ) -> None:
        """One model call: who answered (``model``, "none" when nobody did), how it ended, what it cost."""
        self.calls.labels(model, role, outcome).inc()
        for fallback in fallbacks:
            self.fallbacks.labels(fallback, role).inc()
        if retries:
            self.retries.labels(role).inc(retries)
        if outcome != "ok":
            return
        for kind, count in (("input", input_tokens), ("output", output_tokens), ("cached", cached_tokens)):
            if count:
                self.tokens.labels(model, role, kind).inc(count)
        if cost_usd:
            self.cost.labels(model, role).inc(cost_usd)
        self.latency.labels(model, role).observe(latency_seconds)
        if time_to_first_token_seconds is not None:
            self.time_to_first_token.labels(model, role).observe(time_to_first_token_seconds)

    def circuit_changed(self, model: str, lane: str) -> Callable[[str], None]:
        """The callback a model's breaker calls with its new state (closed, half_open, open)."""
        gauge = self.circuit_state.labels(model, lane)
        gauge.set(0)
        return lambda state: gauge.set(CIRCUIT_STATE_VALUES[state])


class RateLimitMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.rejections = Counter(
            "agentctl_ratelimit_rejections_total",
            "Requests refused (429) by rate-limit class.",
            ["route_class"],
            registry=registry,
        )


class PoolMetrics:
    """Connection pools, sampled: every few seconds by each worker, and by the worker answering a scrape."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.in_use = Gauge(
            "agentctl_db_pool_connections_in_use",
            "Database connections lent out, by pool (main, checkpoints, memory).",
            ["pool"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.waiting = Gauge(
            "agentctl_db_pool_waiting",
            "Callers waiting for a database connection, by pool.",
            ["pool"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self._samplers: dict[str, Callable[[], tuple[int, int]]] = {}

    def watch(self, pool: str, sample: Callable[[], tuple[int, int]]) -> None:
        """``sample`` returns (in use, waiting) for the pool now."""
        self._samplers[pool] = sample
        self.sample()

    def sample(self) -> None:
        for pool, sample in self._samplers.items():
            in_use, waiting = sample()
            self.in_use.labels(pool).set(in_use)
            self.waiting.labels(pool).set(waiting)


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
            buckets=_RECALL_BUCKETS,
            registry=registry,
        )
        self.writes = Counter(
            "agentctl_memory_writes_total",
            "Turns given to memory after they ended, by outcome: ok, error, dropped (queue full or closing) or erased "
            "(the user forgot everything before it was written).",
            ["outcome"],
            registry=registry,
        )
        self.queue_depth = Gauge(
            "agentctl_memory_queue_depth",
            "Turns waiting to be remembered.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.reembedded = Counter(
            "agentctl_memory_reembedded_total",
            "Memories stored in the old document form, embedded again in the search form (once, after upgrading).",
            registry=registry,
        )
        self.queue_capacity = Gauge(
            "agentctl_memory_queue_capacity",
            "Turns that may wait to be remembered (depth / capacity: saturation).",
            registry=registry,
            multiprocess_mode="livesum",
        )


class ChatMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.turns = Counter(
            "agentctl_chat_turns_total",
            "Chat turns by how they ended: done, error, cancelled, awaiting_human or awaiting_approval.",
            ["status"],
            registry=registry,
        )
        self.duration = Histogram(
            "agentctl_chat_turn_duration_seconds",
            "Chat turns from taking the session to the turn's record.",
            buckets=_TURN_LATENCY_BUCKETS,
            registry=registry,
        )
        self.time_to_first_token = Histogram(
            "agentctl_chat_time_to_first_token_seconds",
            "Chat turns: time until the first token of the answer.",
            buckets=_TURN_LATENCY_BUCKETS,
            registry=registry,
        )
        self.runs = Counter(
            "agentctl_chat_runs_total",
            "Runs by status reached (queued, running, then done, error, cancelled, awaiting_human or "
            "awaiting_approval) and by the strategy they were sent with (reject, enqueue, interrupt, rollback).",
            ["status", "strategy"],
            registry=registry,
        )
        self.followers_open = Gauge(
            "agentctl_chat_run_followers_open",
            "Streams following a run (its first stream, rejoins, waits), by where they read it: memory (the run "
            "is in this worker) or log (the shared event log).",
            ["source"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.rejoins = Counter(
            "agentctl_chat_run_rejoins_total", "Streams that rejoined a run.", ["source"], registry=registry
        )
        self.rejoin_latency = Histogram(
            "agentctl_chat_run_rejoin_seconds",
            "Rejoins: from the request to the first replayed event.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=registry,
        )
        self.events_replayed = Counter(
            "agentctl_chat_run_events_replayed_total",
            "Events sent again to followers that rejoined.",
            registry=registry,
        )
        self.events_logged = Counter(
            "agentctl_chat_run_events_logged_total",
            "Events written to the shared event log (in bursts; Redis streams or PostgreSQL).",
            registry=registry,
        )
        self.event_log_writes = Counter(
            "agentctl_chat_run_event_log_writes_total",
            "Writes (bursts) to the shared event log, by outcome: ok or error.",
            ["outcome"],
            registry=registry,
        )
        self.events_held = Gauge(
            "agentctl_chat_run_events_in_memory",
            "Events of the runs in progress held in memory by the workers.",
            registry=registry,
            multiprocess_mode="livesum",
        )


_TOOL_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class ToolMetrics:
    """The agent's tools: calls, their latency, approvals, and the MCP servers they come from."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.calls = Counter(
            "agentctl_tool_calls_total",
            "Tool calls by tool and outcome: ok, error (the tool failed or refused), timeout, rejected (by the user) "
            "or unavailable (no such tool, or its server is down).",
            ["tool", "outcome"],
            registry=registry,
        )
        self.duration = Histogram(
            "agentctl_tool_call_duration_seconds",
            "Tool calls that ran: time until their result.",
            ["tool"],
            buckets=_TOOL_LATENCY_BUCKETS,
            registry=registry,
        )
        self.approvals = Counter(
            "agentctl_tool_approvals_total",
            "Tool calls that waited for the user, by tool and decision: approved, edited or rejected.",
            ["tool", "decision"],
            registry=registry,
        )
        self.mcp_server_up = Gauge(
            "agentctl_mcp_server_up",
            "1 while this worker is connected to the MCP server, 0 while it is down or restarting.",
            ["server"],
            registry=registry,
            multiprocess_mode="livemin",
        )
        self.mcp_restarts = Counter(
            "agentctl_mcp_server_restarts_total",
            "Times an MCP server was (re)started after its first start failed or it went away.",
            ["server"],
            registry=registry,
        )


class AdmissionMetrics:
    """Admission control: the bound on turns running at once, who waits, what was refused, and the loop's lag."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.turn_limit = Gauge(
            "agentctl_admission_turn_limit",
            "Turns a worker runs at once at most, as it stands (adaptive unless fixed).",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.turns_running = Gauge(
            "agentctl_admission_turns_running",
            "Turns running, counted against the bound.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.turns_waiting = Gauge(
            "agentctl_admission_turns_waiting",
            "Turns waiting for a free slot.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.loop_lag = Gauge(
            "agentctl_event_loop_lag_seconds",
            "How late the event loop runs a timer (moving average): the worker's congestion.",
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.shed = Counter(
            "agentctl_admission_shed_total",
            "Requests refused at once for overload (503 overloaded), by what: turn, password (sign-up and sign-in).",
            ["what"],
            registry=registry,
        )


class AppMetrics:
    """Every metric of one app, on one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.http = HttpMetrics(self.registry)
        self.model = ModelMetrics(self.registry)
        self.ratelimit = RateLimitMetrics(self.registry)
        self.pools = PoolMetrics(self.registry)
        self.memory = MemoryMetrics(self.registry)
        self.chat = ChatMetrics(self.registry)
        self.tools = ToolMetrics(self.registry)
        self.admission = AdmissionMetrics(self.registry)
        self.retention_removed = Counter(
            "agentctl_retention_rows_removed_total",
            "Rows the retention sweeper removed, by kind (sessions, checkpoints, checkpoint_writes, checkpoint_blobs, "
            "turns, run_events, memories).",
            ["kind"],
            registry=self.registry,
        )
        self._before_scrape: list[Callable[[], None]] = [self.pools.sample]
        self._samplers: list[Callable[[], None]] = [self.pools.sample]

    def before_scrape(self, refresh: Callable[[], None]) -> None:
        """Run ``refresh`` (sampling some state into gauges) whenever this worker answers a scrape."""
        self._before_scrape.append(refresh)

    def sample_every_few_seconds(self, refresh: Callable[[], None]) -> None:
        """Run ``refresh`` in every worker every few seconds (and before each scrape this worker answers), so that
        a scrape answered by any worker reads every worker's recent state."""
        self._samplers.append(refresh)
        self._before_scrape.append(refresh)
        refresh()

    def sample(self) -> None:
        for refresh in self._samplers:
            refresh()

    def exposition(self) -> bytes:
        """What a scrape returns: every worker's samples in multiprocess mode, else this registry's."""
        for refresh in self._before_scrape:
            refresh()
        if not multiprocess_mode():
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged)
        return generate_latest(merged)

    @staticmethod
    def worker_stopped() -> None:
        """Drop this worker's live gauges from the shared directory (its counters stay in the totals)."""
        if multiprocess_mode():
            multiprocess.mark_process_dead(os.getpid())
