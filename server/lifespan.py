"""What the app opens when a worker starts and closes, in reverse order, when it stops."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from functools import partial

from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from litestar import Litestar
from litestar.types import Scope
from loguru import logger
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis

from agentctl import __version__
from agentctl.config import Settings
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
from server.chat.service import ChatService
from server.database.embedded import database_url
from server.database.engine import Database, open_database, ping_checkpoint_pool
from server.database.migrations import apply_migrations, ensure_schema_current
from server.database.notifications import DatabaseNotifications
from server.evaluation.gauges import EvalGauges, refresh_periodically
from server.health.service import Dependency
from server.llm.health import ModelProbes
from server.llm.registry import ModelRegistry
from server.llm.resilience import Lane
from server.llm.service import LLMService
from server.memory.collection import memory_dimensions
from server.memory.service import MemoryService
from server.observability.metrics import AppMetrics
from server.observability.pools import asyncpg_pool_usage, psycopg_pool_usage
from server.observability.tracing import build_tracer
from server.ratelimit.service import RateLimiter
from server.security.client_ip import Network, client_ip, trusted_networks


@dataclass
class Resources:
    """The connections and services one worker process shares between its requests."""

    settings: Settings
    database: Database
    redis: Redis | None
    auth: AuthService
    limiter: RateLimiter
    llm: LLMService
    chat: ChatService
    memory: MemoryService | None
    metrics: AppMetrics
    readiness: list[Dependency] = field(default_factory=list)
    trusted_proxies: list[Network] = field(default_factory=list)

    def client_ip(self, scope: Scope) -> str:
        return client_ip(scope, self.trusted_proxies)


def build_lifespan(settings: Settings) -> Callable[[Litestar], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            # The embedded database starts here only when nobody started it for us: `agentctl serve` starts it
            # once, for all workers, and hands them its URL.
            url = await asyncio.to_thread(stack.enter_context, database_url(settings))
            database = await stack.enter_async_context(open_database(url, settings.database))
            dimensions = memory_dimensions(settings)
            if settings.database.url is None:
                await apply_migrations(database, dimensions)
            await ensure_schema_current(database, dimensions)

            redis = None
            if settings.redis.url is not None:
                redis = Redis.from_url(
                    settings.redis.url.get_secret_value(),
                    socket_timeout=settings.redis.timeout_seconds,
                    socket_connect_timeout=settings.redis.timeout_seconds,
                )
                stack.push_async_callback(redis.aclose)

            metrics = AppMetrics()
            stack.callback(metrics.worker_stopped)  # runs last: this worker's live gauges leave the scrape
            limiter = RateLimiter(settings, rejections=metrics.ratelimit.rejections)
            revocations: DatabaseRevocationCheck | RedisRevocationCheck = (
                RedisRevocationCheck(redis, settings.redis.key_prefix)
                if redis is not None
                else DatabaseRevocationCheck()
            )
            # Both read files or hash once: off the event loop.
            codec = await asyncio.to_thread(token_codec_for, settings)
            hashing = await asyncio.to_thread(
                partial(PasswordHashing, settings.auth, threads=hashing_threads_for(settings))
            )
            stack.callback(hashing.close)
            auth = AuthService(settings, codec=codec, hashing=hashing, revocations=revocations, limiter=limiter)

            models = ModelRegistry.from_settings(settings.llm)
            stack.push_async_callback(models.aclose)
            if models.uses_local_models:
                from server.llm.local import close_local_models

                # Stops a running generation and frees the weights; otherwise exit waits for queued ones.
                stack.push_async_callback(asyncio.to_thread, close_local_models)
                await models.warm_up_local_models()
            for name, model in models.models.items():
                for lane, breaker in model.breakers.items():
                    breaker.on_change = metrics.model.circuit_changed(name, lane)
            metrics.before_scrape(partial(_notice_breakers, models))
            metrics.sample_every_few_seconds(partial(_sample_model_connections, models, metrics))
            llm = LLMService(models, settings.llm, observe=metrics.model.record)

            checkpoints = AsyncConnectionPool(
                url,
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
            stack.push_async_callback(checkpoints.close)
            database.check_after_outages(checkpoints.check)
            metrics.pools.watch("main", partial(asyncpg_pool_usage, database.engine.pool))
            metrics.pools.watch("checkpoints", partial(psycopg_pool_usage, checkpoints))
            prompts = PromptLibrary(settings.agent)
            await prompts.load()  # a missing prompt file stops the start, not the first chat
            # Compiling loads the tokenizers (~0.4 s): off the event loop.
            agent = await asyncio.to_thread(
                partial(
                    build_agent,
                    llm=llm,
                    tools=build_tools(settings.agent),
                    prompts=prompts,
                    settings=settings.agent,
                    checkpointer=AsyncPostgresSaver(checkpoints),
                )
            )
            memory = None
            if dimensions is not None:
                memory = await MemoryService.open(settings, llm, url, metrics.memory)
                metrics.pools.watch("memory", memory.pool_usage)
                database.check_after_outages(memory.check_pool)
                memory.start()
                # Closed before the model layer and the database it needs, after the server stopped taking turns.
                stack.push_async_callback(memory.close)
            # Langfuse's SDK loads and starts its export threads only when its keys are set: off the event loop.
            tracer = await asyncio.to_thread(
                partial(build_tracer, settings.observability, environment=settings.env, release=__version__)
            )
            if tracer is not None:
                stack.push_async_callback(tracer.close)  # after the last turn ended: its trace is sent too
            chat = ChatService(
                agent=agent,
                llm=llm,
                database=database,
                settings=settings.agent,
                memory=memory,
                metrics=metrics.chat,
                tracer=tracer,
            )
            await chat.open()
            stack.push_async_callback(chat.close)
            metrics.pools.watch("turn_locks", chat.lock_connection_usage)
            sampler = asyncio.create_task(_sample_pools(metrics, _POOL_SAMPLE_SECONDS))
            stack.push_async_callback(_cancel, sampler)
            notifications = DatabaseNotifications(
                url, connect_timeout_seconds=settings.database.connect_timeout_seconds
            )
            notifications.subscribe(chat.cancellations())
            if isinstance(revocations, RedisRevocationCheck):
                notifications.subscribe(revocations.uncached_revocations())
            listener = asyncio.create_task(notifications.listen_forever())
            stack.push_async_callback(_cancel, listener)

            purger = asyncio.create_task(purge_periodically(settings.auth.revocation_purge_interval_seconds))
            stack.push_async_callback(_cancel, purger)
            if isinstance(revocations, RedisRevocationCheck):
                reconciler = asyncio.create_task(reconcile_periodically(revocations, _RECONCILE_SECONDS))
                stack.push_async_callback(_cancel, reconciler)
            # The latest `agentctl eval` run, as gauges on /metrics (read from eval_runs, whoever ran it).
            eval_gauges = EvalGauges(metrics.registry)
            eval_refresher = asyncio.create_task(
                refresh_periodically(eval_gauges, settings.evals.gauge_refresh_seconds)
            )
            stack.push_async_callback(_cancel, eval_refresher)

            readiness = _readiness_dependencies(settings, database, checkpoints, redis, llm, memory)
            app.state.resources = Resources(
                settings=settings,
                database=database,
                redis=redis,
                auth=auth,
                limiter=limiter,
                llm=llm,
                chat=chat,
                memory=memory,
                metrics=metrics,
                readiness=readiness,
                trusted_proxies=trusted_networks(settings.server.trusted_proxies),
            )
            # Everything built so far lives as long as the worker: move it out of the collector's sight. A full
            # collection over it paused every thread, the event loop's included, for 70-100 ms.
            gc.collect()
            gc.freeze()
            logger.info("worker ready")
            yield
            logger.info("worker draining: closing connections")

    return lifespan


_POOL_SAMPLE_SECONDS = 0.5
# Revocations made while Redis was down reach it this soon after it answers again.
_RECONCILE_SECONDS = 2.0


def _readiness_dependencies(
    settings: Settings,
    database: Database,
    checkpoints: AsyncConnectionPool,
    redis: Redis | None,
    llm: LLMService,
    memory: MemoryService | None,
) -> list[Dependency]:
    """What /health/ready looks at: this instance's own database pools decide it; shared dependencies are
    reported as degraded unless the settings require them (Redis is required when rate limits fail closed)."""
    timeout = settings.database.readiness_timeout_seconds
    requires = set(settings.server.readiness_requires)

    async def database_pools() -> None:
        await asyncio.gather(database.ping(), ping_checkpoint_pool(checkpoints, timeout))

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
    return dependencies


def _sample_model_connections(models: ModelRegistry, metrics: AppMetrics) -> None:
    for lane in Lane:
        metrics.model.sample_connections(lane.value, *models.connections(lane))


def _notice_breakers(models: ModelRegistry) -> None:
    for model in models.models.values():
        for breaker in model.breakers.values():
            breaker.notice_state()


async def _sample_pools(metrics: AppMetrics, every_seconds: float) -> None:
    """Pool gauges stay fresh in every worker, not only in the one answering scrapes."""
    while True:
        metrics.sample()
        await asyncio.sleep(every_seconds)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
