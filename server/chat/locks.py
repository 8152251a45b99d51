"""One turn at a time per session, across workers and replicas: PostgreSQL session-level advisory locks.

A worker holds all of its turns' locks on one connection of its own, whatever the number of turns in flight.
Holding a pooled connection per running turn capped a worker at pool-size concurrent turns: with turns that take
seconds (a model's time to first token), the 11th turn waited for a connection and timed out with a 503 while
the machine sat idle. A crashed worker's connection closes, and its locks go with it.

Advisory locks are re-entrant within one PostgreSQL session, so the worker also keeps the keys it holds and
refuses a second turn of the same session itself, before asking PostgreSQL.
"""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
from loguru import logger

from agentctl.config import DatabaseSettings
from server.errors import DatabaseUnavailableError


def turn_lock_key(session_id: uuid.UUID) -> tuple[int]:
    """A session's turn-lock key, as every worker and replica computes it: 64 bits of the session id.

    A 32-bit hash of the id let two sessions' turns collide (a false 409) about once in ten thousand at 1,000
    turns in flight; 60 random bits of a UUIDv4 make that about 4e-13.
    """
    return (int.from_bytes(session_id.bytes[:8], "big", signed=True),)


class SessionBusyError(Exception):
    """Another turn of this session is running, here or in another worker."""


class TurnLocks:
    def __init__(self, url: str, settings: DatabaseSettings) -> None:
        self._url = url
        self._settings = settings
        self._connection: asyncpg.Connection | None = None
        self._guard = asyncio.Lock()  # one query at a time on the connection
        self._claimed: set[tuple[int]] = set()  # turns of this worker, granted or being asked for
        self._granted: set[tuple[int]] = set()  # what PostgreSQL holds for this worker
        self._waiting = 0
        self._releases: set[asyncio.Future[None]] = set()  # kept referenced until done

    async def open(self) -> None:
        async with self._guard:
            await self._connected()

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()  # releases whatever is still held

    def usage(self) -> tuple[int, int]:
        """(connections in use, queries waiting for the connection), for the pool gauges."""
        return (0 if self._connection is None or self._connection.is_closed() else 1), self._waiting

    async def take(self, session_id: uuid.UUID) -> None:
        """Hold the session's turn lock, or raise SessionBusyError (DatabaseUnavailableError: no database)."""
        key = turn_lock_key(session_id)
        if key in self._claimed:
            raise SessionBusyError
        self._claimed.add(key)
        # Shielded: a caller cancelled while PostgreSQL grants the lock must not leave it held for nobody.
        attempt = asyncio.ensure_future(self._query("SELECT pg_try_advisory_lock($1)", key))
        try:
            granted = await asyncio.shield(attempt)
        except asyncio.CancelledError:
            attempt.add_done_callback(lambda done: self._abandon(key, done))
            raise
        except (OSError, asyncpg.PostgresError, TimeoutError) as error:
            self._claimed.discard(key)
            raise DatabaseUnavailableError(f"the turn lock could not be taken ({type(error).__name__})") from None
        if not granted:
            self._claimed.discard(key)
            raise SessionBusyError
        self._granted.add(key)

    async def release(self, session_id: uuid.UUID) -> None:
        await self._release(turn_lock_key(session_id))

    async def _release(self, key: tuple[int]) -> None:
        try:
            if key in self._granted:
                await asyncio.shield(self._query("SELECT pg_advisory_unlock($1)", key))
        except (OSError, asyncpg.PostgresError, TimeoutError) as error:
            # A lost connection released it already; a live one that failed here keeps it until it closes.
            logger.warning("turn lock release failed ({}); the session may stay busy", type(error).__name__)
        finally:
            self._granted.discard(key)
            self._claimed.discard(key)

    def _abandon(self, key: tuple[int], attempt: asyncio.Future[bool]) -> None:
        """The taker was cancelled while PostgreSQL answered: give back whatever it granted."""
        if not attempt.cancelled() and attempt.exception() is None and attempt.result():
            self._granted.add(key)
            self._releases.add(task := asyncio.ensure_future(self._release(key)))
            task.add_done_callback(self._releases.discard)
        else:
            self._claimed.discard(key)

    async def _query(self, sql: str, key: tuple[int]) -> bool:
        self._waiting += 1
        try:
            await self._guard.acquire()
        finally:
            self._waiting -= 1
        try:
            connection = await self._connected()
            return bool(await connection.fetchval(sql, *key, timeout=self._settings.command_timeout_seconds))
        finally:
            self._guard.release()

    async def _connected(self) -> asyncpg.Connection:
        """The lock connection, reconnected after a loss with the locks of the running turns taken again."""
        if self._connection is not None and not self._connection.is_closed():
            return self._connection
        lost = self._connection is not None
        self._connection = await asyncpg.connect(self._url, timeout=self._settings.connect_timeout_seconds)
        if lost:
            logger.warning("turn lock connection lost; reconnected, taking {} lock(s) again", len(self._granted))
            for key in list(self._granted):
                if not await self._connection.fetchval("SELECT pg_try_advisory_lock($1)", *key):
                    self._granted.discard(key)  # another worker took the session meanwhile: its turn may overlap
                    logger.warning("a running turn's session was taken by another worker while the lock was lost")
        return self._connection
