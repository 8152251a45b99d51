"""The process's database: one Piccolo engine on an asyncpg pool, sized and timed from the settings."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager

import asyncpg
from loguru import logger
from piccolo.apps.migrations.tables import Migration
from piccolo.engine.postgres import PostgresEngine
from piccolo.table import Table
from psycopg_pool import AsyncConnectionPool

from agentctl.config import DatabaseSettings, redact_url
from server.database import piccolo_conf
from server.errors import DatabaseUnavailableError

_RECOVERY_POLL_SECONDS = 0.5


class Database:
    """Owns the engine and its pool. Piccolo tables are process-wide classes, so binding is process-wide too: the
    tables given are bound to this engine (server.schema gives all of agentctl's)."""

    def __init__(self, url: str, settings: DatabaseSettings, *, tables: Sequence[type[Table]] = ()) -> None:
        self.url = url
        self.settings = settings
        self.engine = PostgresEngine(config={"dsn": url}, log_queries=False)
        self._tables: list[type[Table]] = [*tables, Migration]
        self.bind()
        # What opening it changed in the schema (server.schema's opener fills it when it migrates).
        self.schema_changes: list[str] = []
        self._pool_checks: list[Callable[[], Awaitable[None]]] = []
        self._recovering: asyncio.Task[None] | None = None

    def check_after_outages(self, check: Callable[[], Awaitable[None]]) -> None:
        """Run ``check`` (which replaces a pool's broken connections) when the database is back after an outage."""
        self._pool_checks.append(check)

    def suspect_outage(self) -> None:
        """A request failed for want of the database: once it answers again, every pool gets fresh connections.

        The pools hand out the connections they hold without checking them (a check per use would cost every
        query a round trip), so connections broken by the outage would fail one request each after it."""
        if self._recovering is None or self._recovering.done():
            self._recovering = asyncio.ensure_future(self._recover())

    @property
    def recovering(self) -> bool:
        """An outage was seen and the pools are not renewed yet: a request could still meet a broken connection."""
        return self._recovering is not None and not self._recovering.done()

    async def _recover(self) -> None:
        while True:
            await asyncio.sleep(_RECOVERY_POLL_SECONDS)
            try:
                await self.ping()
            except DatabaseUnavailableError:
                continue
            if self.engine.pool is not None:
                await self.engine.pool.expire_connections()  # asyncpg replaces each on its next use
            for check in self._pool_checks:
                with contextlib.suppress(Exception):
                    await check()
            logger.info("the database answers again; pooled connections renewed")
            return

    def bind(self) -> None:
        """Bind this database's tables to its engine (again, after another Database in the process took them)."""
        # Piccolo finds its engine through the module PICCOLO_CONF names; ours serves the bound engine.
        os.environ["PICCOLO_CONF"] = piccolo_conf.__name__
        piccolo_conf.bind_engine(self.engine)
        for table in self._tables:
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
        if self._recovering is not None:
            self._recovering.cancel()
        await self.engine.close_connection_pool()

    @property
    def pool(self) -> asyncpg.Pool:
        """The engine's asyncpg pool, for the statements Piccolo does not express (advisory locks, catalogs)."""
        pool = self.engine.pool
        if pool is None:
            raise DatabaseUnavailableError("the connection pool is not open")
        return pool

    async def ping(self) -> None:
        """One round trip through the pool; raises DatabaseUnavailableError when it fails or is late."""
        pool = self.pool
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


async def ping_checkpoint_pool(pool: AsyncConnectionPool, timeout_seconds: float) -> None:
    """One round trip through the checkpointer's (psycopg) pool; DatabaseUnavailableError when it fails or is late."""
    try:
        async with asyncio.timeout(timeout_seconds), pool.connection(timeout=timeout_seconds) as connection:
            await connection.execute("SELECT 1")
    except TimeoutError:
        raise DatabaseUnavailableError(f"the checkpoint pool gave no connection within {timeout_seconds:g} s") from None
    except Exception as error:
        raise DatabaseUnavailableError(f"the checkpoint pool's connection failed ({type(error).__name__})") from None


@asynccontextmanager
async def open_pool(database: Database) -> AsyncIterator[Database]:
    """The database's pool, open for the duration."""
    await database.open()
    try:
        yield database
    finally:
        await database.close()
