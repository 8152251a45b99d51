"""The process's database: one Piccolo engine on an asyncpg pool, sized and timed from the settings."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from loguru import logger
from piccolo.apps.migrations.tables import Migration
from piccolo.engine.postgres import PostgresEngine

from agentctl.config import DatabaseSettings, redact_url
from server.database import piccolo_conf
from server.database.piccolo_app import APP_CONFIG
from server.errors import ServiceUnavailableError


class DatabaseUnavailableError(ServiceUnavailableError):
    """The database did not answer in time or refused the connection."""

    code = "database-unavailable"


class Database:
    """Owns the engine and its pool. Piccolo tables are process-wide classes, so binding is process-wide too."""

    def __init__(self, url: str, settings: DatabaseSettings) -> None:
        self.url = url
        self.settings = settings
        self.engine = PostgresEngine(config={"dsn": url}, log_queries=False)
        self._bind()

    def _bind(self) -> None:
        # Piccolo finds its engine through the module PICCOLO_CONF names; ours serves the bound engine.
        os.environ["PICCOLO_CONF"] = piccolo_conf.__name__
        piccolo_conf.bind_engine(self.engine)
        for table in [*APP_CONFIG.table_classes, Migration]:
            table._meta.db = self.engine

    async def open(self) -> None:
        """Open the pool; fails with a message naming the (password-redacted) URL when nothing answers."""
        try:
            await self._start_pool()
        except Exception as error:
            raise DatabaseUnavailableError(
                f"cannot connect to PostgreSQL at {redact_url(self.url)}: {type(error).__name__}: {error}"
            ) from None

    async def _start_pool(self) -> None:
        await self.engine.start_connection_pool(
            min_size=self.settings.pool_min_size,
            max_size=self.settings.pool_max_size,
            timeout=self.settings.connect_timeout_seconds,
            command_timeout=self.settings.command_timeout_seconds,
            max_inactive_connection_lifetime=self.settings.max_idle_seconds,
        )

    async def close(self) -> None:
        await self.engine.close_connection_pool()

    async def ping(self) -> None:
        """One round trip through the pool; raises DatabaseUnavailableError when it fails or is late."""
        pool = self.engine.pool
        if pool is None:
            raise DatabaseUnavailableError("the connection pool is not open")
        timeout = self.settings.readiness_timeout_seconds
        try:
            async with asyncio.timeout(timeout):
                async with pool.acquire() as connection:
                    await connection.fetchval("SELECT 1")
        except TimeoutError:
            raise DatabaseUnavailableError(f"no answer within {timeout:g} s") from None
        except Exception as error:  # asyncpg and the OS raise many types for one cause: no database
            logger.warning("database ping failed: {}: {}", type(error).__name__, error)
            raise DatabaseUnavailableError(f"connection failed ({type(error).__name__})") from None


@asynccontextmanager
async def open_database(url: str, settings: DatabaseSettings) -> AsyncIterator[Database]:
    """A Database with its pool open for the duration."""
    database = Database(url, settings)
    await database.open()
    try:
        yield database
    finally:
        await database.close()
