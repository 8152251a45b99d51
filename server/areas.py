"""What each area of a worker opens when the worker starts, and closes when it stops.

One async context manager per area; server.lifespan composes them in one visible order and closes them in the
reverse one. An area gets what it needs from the areas opened before it, as arguments.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis

from agentctl import __version__
from agentctl.config import Settings
from server.admission.service import TurnAdmission
from server.agent.graph import build_agent
from server.agent.prompts import PromptLibrary
from server.agent.tools import build_tools
from server.auth.passwords import PasswordHashing, hashing_threads_for
from server.auth.revocation import (
    DatabaseRevocationCheck,
    RedisRevocationCheck,
    purge_periodically,
    reconcile_periodically,
)
from server.auth.service import AuthService
from server.auth.tokens import token_codec_for
from server.chat.events import DatabaseEventLog, RedisEventLog, SharedEventLog
from server.chat.runs import RunStore, worker_name
from server.chat.service import ChatService
from server.database.embedded import database_url
from server.database.engine import Database, ping_checkpoint_pool
from server.database.notifications import DatabaseNotifications
from server.errors import DatabaseUnavailableError
from server.evaluation.gauges import EvalGauges, ReplayGauges, refresh_periodically
from server.health.service import Dependency, ReadinessProbe
from server.llm.health import ModelProbes
from server.llm.registry import ModelRegistry
from server.llm.resilience import Lane
from server.llm.service import LLMService, metrics_recorder
from server.memory.collection import memory_dimensions
from server.memory.service import MemoryService, history_file
from server.observability.metrics import AppMetrics
from server.observability.pools import asyncpg_pool_usage, psycopg_pool_usage
from server.observability.tracing import TurnTracer, build_tracer
from server.ratelimit.service import RateLimiter
from server.retention.service import RetentionSweeper, sweeping
from server.schema import open_database, schema_action_for
from server.security.client_ip import Network, trusted_networks
from server.tasks import running
from server.tools.catalog import ToolCatalog

if TYPE_CHECKING:
    from server.tools.mcp import McpServers

# Pool and connection gauges stay fresh in every worker this often, not only in the one answering scrapes.
_SAMPLE_SECONDS = 0.5
# Revocations made while Redis was down reach it this soon after it answers again (the periodic round; a
# notice from the worker that could not write one starts a round at once).
_RECONCILE_SECONDS = 2.0


@dataclass(frozen=True)
class Observability:
    metrics: AppMetrics
    tracer: TurnTracer | None


@asynccontextmanager
async def open_observability(settings: Settings) -> AsyncIterator[Observability]:
    """The worker's metrics (sampled every half second) and, with Langfuse's keys, its tracer. Closed last: the
    last turn's trace is sent, then the worker's live gauges leave the shared scrape."""
    metrics = AppMetrics()
    # Langfuse's SDK loads and starts its export threads only when its keys are set: off the event loop.
    tracer = await asyncio.to_thread(
        partial(build_tracer, settings.observability, environment=settings.env, release=__version__)
    )
    try:
        async with running(_sample_forever(metrics)):
            yield Observability(metrics, tracer)
    finally:
        if tracer is not None:
            await tracer.close()
        metrics.worker_stopped()


@dataclass(frozen=True)
class Storage:
    url: str
    database: Database
    notifications: DatabaseNotifications


@asynccontextmanager
async def open_storage(settings: Settings, metrics: AppMetrics) -> AsyncIterator[Storage]:
    """The database, its schema checked (migrated, if it is the embedded one), and the worker's NOTIFY listener
    (which starts listening once every area has subscribed: ``Storage.notifications.listening``)."""
    async with AsyncExitStack() as stack:
        # The embedded database starts here only when nobody started it for us: `agentctl serve` starts it once,
        # for all workers, and hands them its URL.
        url = await asyncio.to_thread(stack.enter_context, database_url(settings))
        database = await stack.enter_async_context(open_database(url, settings, schema=schema_action_for(settings)))
        metrics.pools.watch("main", partial(asyncpg_pool_usage, database.pool))
        notifications = DatabaseNotifications(url, connect_timeout_seconds=settings.database.connect_timeout_seconds)
        yield Storage(url, database, notifications)


@asynccontextmanager
async def open_redis(settings: Settings) -> AsyncIterator[Redis | None]:
    """The shared Redis, when one is configured (rate limits and the revocation cache use it)."""
    if settings.redis.url is None:
        yield None
        return
    redis = Redis.from_url(
        settings.redis.url.get_secret_value(),
        socket_timeout=settings.redis.timeout_seconds,
        socket_connect_timeout=settings.redis.timeout_seconds,
    )
    try:
        yield redis
    finally:
        await redis.aclose()


@dataclass(frozen=True)
class Protection:
    auth: AuthService
    limiter: RateLimiter
    trusted_proxies: list[Network]


@asynccontextmanager
async def open_protection(
    settings: Settings, *, redis: Redis | None, notifications: DatabaseNotifications, metrics: AppMetrics
) -> AsyncIterator[Protection]:
    """Tokens, passwords, revocation (with its purge and, with Redis, its reconciliation) and rate limits."""
    limiter = RateLimiter(settings, rejections=metrics.ratelimit.rejections)
    revocations: DatabaseRevocationCheck | RedisRevocationCheck = (
        RedisRevocationCheck(redis, settings.redis.key_prefix) if redis is not None else DatabaseRevocationCheck()
    )
    # Both read files or hash once: off the event loop.
    codec = await asyncio.to_thread(token_codec_for, settings)
    hashing = await asyncio.to_thread(
        partial(
            PasswordHashing,
            settings.auth,
            threads=hashing_threads_for(settings),
            backlog_max_seconds=settings.admission.hashing_backlog_max_seconds if settings.admission.enabled else None,
            shed=metrics.admission.shed.labels("password"),
        )
    )
    auth = AuthService(settings, codec=codec, hashing=hashing, revocations=revocations, limiter=limiter)
    try:
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(
                running(purge_periodically(settings.auth.revocation_purge_interval_seconds))
            )
            if isinstance(revocations, RedisRevocationCheck):
                notifications.subscribe(revocations.uncached_revocations())
                await stack.enter_async_context(running(reconcile_periodically(revocations, _RECONCILE_SECONDS)))
            yield Protection(auth, limiter, trusted_networks(settings.server.trusted_proxies))
    finally:
        hashing.close()


@asynccontextmanager
async def open_models(settings: Settings, metrics: AppMetrics) -> AsyncIterator[LLMService]:
    """The model registry behind the model layer: clients and connection pools, breakers told to the metrics,
    the bundled local models loaded now rather than at the first conversation."""
    models = ModelRegistry.from_settings(settings.llm)
    try:
        for name, model in models.models.items():
            for lane, breaker in model.breakers.items():
                breaker.on_change = metrics.model.circuit_changed(name, lane)
        metrics.before_scrape(partial(_notice_breakers, models))
        metrics.sample_every_few_seconds(partial(_sample_model_connections, models, metrics))
        if models.uses_local_models:
            await models.warm_up_local_models()
        yield LLMService(models, settings.llm, observe=metrics_recorder(metrics.model))
    finally:
        if models.uses_local_models:
            from server.llm.local import close_local_models

            # Stops a running generation and frees the weights; otherwise exit waits for queued ones.
            await asyncio.to_thread(close_local_models)
        await models.aclose()


@asynccontextmanager
async def open_memory(
    settings: Settings, *, llm: LLMService, storage: Storage, metrics: AppMetrics
) -> AsyncIterator[MemoryService | None]:
    """Long-term memory, when it is on and an embedding model serves it. Closed (its queue drained) after the
    server stopped taking turns, before the model layer and the database it needs."""
    if memory_dimensions(settings) is None:
        yield None
        return
    memory = await MemoryService.open(settings, llm, storage.url, metrics.memory)
    metrics.pools.watch("memory", memory.pool_usage)
    storage.database.check_after_outages(memory.check_pool)
    memory.start()
    try:
        yield memory
    finally:
        await memory.close()


@dataclass(frozen=True)
class Conversations:
    chat: ChatService
    checkpoints: AsyncConnectionPool
    catalog: ToolCatalog
    mcp: McpServers | None  # None without MCP servers


@asynccontextmanager
async def open_conversations(
    settings: Settings,
    *,
    llm: LLMService,
    storage: Storage,
    redis: Redis | None,
    memory: MemoryService | None,
    observability: Observability,
) -> AsyncIterator[Conversations]:
    """The agent (its graph compiled once, its checkpoints on a pool of their own) and the chat service that runs
    its turns, one at a time per session."""
    database, metrics = storage.database, observability.metrics
    checkpoints = AsyncConnectionPool(
        storage.url,
        min_size=max(1, settings.database.pool_min_size),
        max_size=settings.database.pool_max_size,
        timeout=settings.database.connect_timeout_seconds,
        # What AsyncPostgresSaver needs of its connections (setup() ran at migrate time).
        kwargs={
            "autocommit": True,
            "prepare_threshold": 0,
            "row_factory": dict_row,
            "connect_timeout": max(1, round(settings.database.connect_timeout_seconds)),
        },
        open=False,
    )
    await checkpoints.open()
    stack = AsyncExitStack()  # the MCP servers: stopped after the chat, before the checkpoints' pool closes
    try:
        database.check_after_outages(checkpoints.check)
        metrics.pools.watch("checkpoints", partial(psycopg_pool_usage, checkpoints))
        prompts = PromptLibrary(settings.agent)
        await prompts.load()  # a missing prompt file stops the start, not the first chat
        catalog = ToolCatalog(settings.agent, build_tools(settings.agent))
        mcp = None
        if any(server.enabled for server in settings.agent.mcp_servers.values()):
            # Imported only then: the MCP SDK and its adapters are modules a worker without servers need not hold.
            from server.tools.mcp import McpServers

            mcp = await stack.enter_async_context(McpServers(settings.agent, catalog, metrics.tools).running())
        # Compiling loads the tokenizers (~0.4 s): off the event loop.
        agent = await asyncio.to_thread(
            partial(
                build_agent,
                llm=llm,
                catalog=catalog,
                prompts=prompts,
                settings=settings.agent,
                checkpointer=AsyncPostgresSaver(checkpoints),  # type: ignore[arg-type]  # psycopg's row type is dict
                tool_metrics=metrics.tools,
            )
        )
        admission = TurnAdmission(settings.admission, metrics.admission)
        shared_events: SharedEventLog = (
            RedisEventLog(redis, settings.redis.key_prefix, settings.chat.run_events_ttl_seconds)
            if redis is not None
            else DatabaseEventLog(database, settings.chat.run_events_ttl_seconds)
        )
        chat = ChatService(
            agent=agent,
            llm=llm,
            database=database,
            settings=settings.agent,
            chat_settings=settings.chat,
            runs=RunStore(database, worker=worker_name(), lease_seconds=settings.chat.run_lease_seconds),
            shared_events=shared_events,
            memory=memory,
            metrics=metrics.chat,
            tracer=observability.tracer,
            budget=settings.budget,
            catalog=catalog,
            admission=admission,
        )
        sweeper = RetentionSweeper(
            database,
            settings.retention,
            events_ttl_seconds=settings.chat.run_events_ttl_seconds,
            history_path=history_file(settings) if memory is not None else None,
            removed=metrics.retention_removed,
        )
        async with (
            running(admission.watch_the_loop()),
            chat.serving(),
            sweeping(sweeper, enabled=settings.retention.enabled),
        ):
            storage.notifications.subscribe(chat.cancellations())
            yield Conversations(chat, checkpoints, catalog, mcp)
    finally:
        await stack.aclose()
        await checkpoints.close()


@asynccontextmanager
async def open_evaluation_gauges(settings: Settings, metrics: AppMetrics) -> AsyncIterator[None]:
    """The latest `agentctl eval` run, as gauges on /metrics (read from eval_runs, whoever ran it)."""
    gauges = EvalGauges(metrics.registry)
    replay_gauges = ReplayGauges(metrics.registry)
    async with running(refresh_periodically(gauges, replay_gauges, settings.evals.gauge_refresh_seconds)):
        yield


def readiness_probe(
    settings: Settings,
    *,
    storage: Storage,
    conversations: Conversations,
    redis: Redis | None,
    llm: LLMService,
    memory: MemoryService | None,
) -> ReadinessProbe:
    """What /health/ready looks at: this instance's own database pools decide it; shared dependencies are
    reported as degraded unless the settings require them (Redis is required when rate limits fail closed). A
    failing database is told to it, so that its pools are renewed when it is back."""
    timeout = settings.database.readiness_timeout_seconds
    requires = set(settings.server.readiness_requires)

    async def database_pools() -> None:
        if storage.database.recovering:
            # A ping takes one connection, which may be a fresh one while others in the pools are still broken.
            raise DatabaseUnavailableError("back from an outage: the pooled connections are being renewed")
        await asyncio.gather(storage.database.ping(), ping_checkpoint_pool(conversations.checkpoints, timeout))

    probes = ModelProbes(
        llm.registry, cache_seconds=settings.llm.probe_cache_seconds, timeout_seconds=settings.llm.probe_timeout_seconds
    )
    dependencies = [
        Dependency("database", database_pools, required=True),
        Dependency("models", probes.check_role, required="models" in requires),
    ]
    if redis is not None:
        fails_closed = settings.ratelimit.enabled and settings.ratelimit.on_storage_error == "deny"

        async def redis_answers() -> None:
            await asyncio.wait_for(redis.ping(), settings.redis.timeout_seconds)

        dependencies.append(Dependency("redis", redis_answers, required=fails_closed or "redis" in requires))
    if memory is not None:
        dependencies.append(Dependency("memory", partial(memory.ping, timeout), required="memory" in requires))
    if conversations.mcp is not None:
        dependencies.append(Dependency("mcp", conversations.mcp.check, required="mcp" in requires))

    def on_failing(failing: list[str]) -> None:
        if "database" in failing:
            storage.database.suspect_outage()

    return ReadinessProbe(dependencies, on_failing)


async def _sample_forever(metrics: AppMetrics) -> None:
    while True:
        metrics.sample()
        await asyncio.sleep(_SAMPLE_SECONDS)


def _sample_model_connections(models: ModelRegistry, metrics: AppMetrics) -> None:
    for lane in Lane:
        metrics.model.sample_connections(lane.value, *models.connections(lane))


def _notice_breakers(models: ModelRegistry) -> None:
    for model in models.models.values():
        for breaker in model.breakers.values():
            breaker.notice_state()
