"""Revocation: PostgreSQL keeps the record; every request checks it through a cache that all workers share.

With Redis configured, each revoked id is also a Redis key living as long as the tokens it can match, and
a request costs one Redis round trip. A marker key tells whether Redis holds the whole record: when Redis
has lost it (a restart without persistence), the record is copied back from PostgreSQL before answering.
Without Redis, every request asks PostgreSQL (a primary-key lookup); revoked ids, which never come back,
are remembered in-process.
"""

from __future__ import annotations

import asyncio
import datetime
import uuid
from collections.abc import Iterable
from typing import Any, Protocol

from loguru import logger
from redis.asyncio import Redis
from redis.exceptions import RedisError

from server.auth.tables import RefreshToken, RevokedToken

_MAX_REMEMBERED = 100_000


class RevocationKind:
    TOKEN = "token"
    FAMILY = "family"
    SESSION = "session"


class RevocationCheck(Protocol):
    async def any_revoked(self, ids: list[uuid.UUID]) -> bool: ...

    async def remember(self, revoked_id: uuid.UUID, expires_at: datetime.datetime) -> None: ...


async def revoke(check: RevocationCheck, revoked_id: uuid.UUID, *, kind: str, expires_at: datetime.datetime) -> None:
    """Record a revocation in PostgreSQL, then in the shared cache, before the caller answers."""
    await RevokedToken.raw(
        "INSERT INTO revoked_tokens (id, kind, expires_at, created_at) VALUES ({}, {}, {}, now()) "
        "ON CONFLICT (id) DO UPDATE SET expires_at = GREATEST(revoked_tokens.expires_at, EXCLUDED.expires_at)",
        revoked_id,
        kind,
        expires_at,
    )
    await check.remember(revoked_id, expires_at)


async def revoked_in_database(ids: Iterable[uuid.UUID]) -> list[dict[str, Any]]:
    """The live revocations among ``ids`` (id and expires_at of each); empty when none is revoked."""
    return await RevokedToken.select(RevokedToken.id, RevokedToken.expires_at).where(
        RevokedToken.id.is_in(list(ids)), RevokedToken.expires_at > datetime.datetime.now(tz=datetime.UTC)
    )


class DatabaseRevocationCheck:
    """For a single process or no Redis: ask PostgreSQL each time; remember what was found revoked."""

    def __init__(self) -> None:
        self._known_revoked: dict[uuid.UUID, datetime.datetime] = {}

    async def any_revoked(self, ids: list[uuid.UUID]) -> bool:
        now = datetime.datetime.now(tz=datetime.UTC)
        if any(self._known_revoked.get(revoked_id, now) > now for revoked_id in ids):
            return True
        rows = await revoked_in_database(ids)
        for row in rows:
            await self.remember(row["id"], row["expires_at"])
        return bool(rows)

    async def remember(self, revoked_id: uuid.UUID, expires_at: datetime.datetime) -> None:
        if len(self._known_revoked) > _MAX_REMEMBERED:
            now = datetime.datetime.now(tz=datetime.UTC)
            self._known_revoked = {key: until for key, until in self._known_revoked.items() if until > now}
        self._known_revoked[revoked_id] = expires_at


class RedisRevocationCheck:
    """One Redis round trip per request; PostgreSQL is read only to refill a Redis that lost the record."""

    def __init__(self, redis: Redis, key_prefix: str) -> None:
        self._redis = redis
        self._prefix = f"{key_prefix}:revoked:"
        self._complete_marker = f"{key_prefix}:revoked-loaded"
        self._refill_lock = asyncio.Lock()

    async def any_revoked(self, ids: list[uuid.UUID]) -> bool:
        try:
            values = await self._redis.mget([self._complete_marker, *(self._key(value) for value in ids)])
        except RedisError as error:
            logger.warning("revocation cache unreachable, asking PostgreSQL: {}", error)
            return bool(await revoked_in_database(ids))
        if values[0] is None:
            await self._refill_from_database()
            return bool(await revoked_in_database(ids))
        return any(value is not None for value in values[1:])

    async def remember(self, revoked_id: uuid.UUID, expires_at: datetime.datetime) -> None:
        ttl = max(1, int((expires_at - datetime.datetime.now(tz=datetime.UTC)).total_seconds()) + 1)
        await self._redis.set(self._key(revoked_id), "1", ex=ttl)

    async def _refill_from_database(self) -> None:
        async with self._refill_lock:
            if await self._redis.exists(self._complete_marker):
                return
            now = datetime.datetime.now(tz=datetime.UTC)
            rows = await RevokedToken.select(RevokedToken.id, RevokedToken.expires_at).where(
                RevokedToken.expires_at > now
            )
            async with self._redis.pipeline(transaction=False) as pipeline:
                for row in rows:
                    ttl = max(1, int((row["expires_at"] - now).total_seconds()) + 1)
                    pipeline.set(self._key(row["id"]), "1", ex=ttl)
                pipeline.set(self._complete_marker, "1")
                await pipeline.execute()
            logger.info("revocation cache refilled from PostgreSQL ({} ids)", len(rows))

    def _key(self, revoked_id: uuid.UUID) -> str:
        return f"{self._prefix}{revoked_id}"


async def purge_expired() -> int:
    """Delete revocations and refresh tokens that can no longer match a live token."""
    now = datetime.datetime.now(tz=datetime.UTC)
    revoked = await RevokedToken.delete().where(RevokedToken.expires_at < now).returning(RevokedToken.id)
    refresh = await RefreshToken.delete().where(RefreshToken.expires_at < now).returning(RefreshToken.id)
    return len(revoked) + len(refresh)


async def purge_periodically(interval_seconds: float) -> None:
    """Runs for the worker's lifetime; several workers purging at once is harmless."""
    while True:
        await asyncio.sleep(interval_seconds)
        try:
            purged = await purge_expired()
        except Exception as error:  # the next round tries again; a failed purge never stops the worker
            logger.warning("purging expired revocations failed: {}", error)
        else:
            logger.debug("purged {} expired revocation rows", purged)
