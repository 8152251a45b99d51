"""What the app opens when a worker starts and closes, in reverse order, when it stops."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

from litestar import Litestar
from loguru import logger
from redis.asyncio import Redis

from agentctl.config import Settings
from server.database.embedded import database_url
from server.database.engine import Database, open_database
from server.database.migrations import apply_migrations, ensure_schema_current


@dataclass
class Resources:
    """The connections one worker process shares between its requests."""

    settings: Settings
    database: Database
    redis: Redis | None


def build_lifespan(settings: Settings) -> Callable[[Litestar], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            # The embedded database starts here only when nobody started it for us: `agentctl serve` starts it
            # once, for all workers, and hands them its URL.
            url = await asyncio.to_thread(stack.enter_context, database_url(settings))
            database = await stack.enter_async_context(open_database(url, settings.database))
            if settings.database.url is None:
                await apply_migrations(database)
            await ensure_schema_current(database)

            redis = None
            if settings.redis.url is not None:
                redis = Redis.from_url(
                    settings.redis.url.get_secret_value(),
                    socket_timeout=settings.redis.timeout_seconds,
                    socket_connect_timeout=settings.redis.timeout_seconds,
                )
                stack.push_async_callback(redis.aclose)

            app.state.resources = Resources(settings=settings, database=database, redis=redis)
            logger.info("worker ready")
            yield
            logger.info("worker draining: closing connections")

    return lifespan
