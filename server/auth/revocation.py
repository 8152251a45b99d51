"""Revocation: PostgreSQL keeps the record; every request checks it through a cache that all workers share.

With Redis configured, each revoked id is also a Redis key living as long as the tokens it can match, and
a request costs one Redis round trip. A marker key tells whether Redis holds the whole record: when Redis
has lost it (a restart without persistence), the record is copied back from PostgreSQL before answering.
Without Redis, every request asks PostgreSQL (a primary-key lookup); revoked ids, which never come back,
are remembered in-process.

Redis is only a cache: a revocation is stored in PostgreSQL first and succeeds whether or not Redis takes it.
A row Redis has not taken yet is marked (``cached = false``) and copied into Redis by every worker's reconciler
once Redis answers again; meanwhile, and whenever Redis cannot be asked, the check asks PostgreSQL. An
unreachable cache never lets a revoked token through, whatever the rate limits' fail-open setting says.
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
from server.database.notifications import Subscription
from server.outages import Outage, RateLimitedLog

_MAX_REMEMBERED = 100_000
_RECONCILE_BATCH = 1000
# Told to every worker and replica when a revocation could not be written to Redis: until it is, they ask PostgreSQL.
UNCACHED_CHANNEL = "agentctl_revocations_uncached"


class RevocationKind:
    TOKEN = "token"
    FAMILY = "family"
    SESSION = "session"


class RevocationCheck(Protocol):
    shared_cache: bool  # whether revocations are also kept outside PostgreSQL (and must be copied there)

    async def any_revoked(self, ids: list[uuid.UUID]) -> bool: ...

    async def remember(self, revoked_id: uuid.UUID, expires_at: datetime.datetime) -> bool:
        """Keep the revocation where requests check it; False when the shared cache could not take it."""
        ...


async def revoke(check: RevocationCheck, revoked_id: uuid.UUID, *, kind: str, expires_at: datetime.datetime) -> None:
    """Record a revocation in PostgreSQL, then in the shared cache, before the caller answers. PostgreSQL is the
    record: a cache that is down leaves the row marked for its reconciler, and the revocation stands."""
    await RevokedToken.raw(
        "INSERT INTO revoked_tokens (id, kind, expires_at, cached, created_at) VALUES ({}, {}, {}, {}, now()) "
        "ON CONFLICT (id) DO UPDATE SET expires_at = GREATEST(revoked_tokens.expires_at, EXCLUDED.expires_at), "
        "cached = EXCLUDED.cached",
        revoked_id,
        kind,
        expires_at,
        not check.shared_cache,
    )
    if await check.remember(revoked_id, expires_at) and check.shared_cache:
        await RevokedToken.update({RevokedToken.cached: True}).where(RevokedToken.id == revoked_id)


async def revoked_in_database(ids: Iterable[uuid.UUID]) -> list[dict[str, Any]]:
    """The live revocations among ``ids`` (id and expires_at of each); empty when none is revoked."""
    return await RevokedToken.select(RevokedToken.id, RevokedToken.expires_at).where(
        RevokedToken.id.is_in(list(ids)), RevokedToken.expires_at > datetime.datetime.now(tz=datetime.UTC)
    )


class DatabaseRevocationCheck:
    """For a single process or no Redis: ask PostgreSQL each time; remember what was found revoked."""

    shared_cache = False

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

    async def remember(self, revoked_id: uuid.UUID, expires_at: datetime.datetime) -> bool:
        if len(self._known_revoked) > _MAX_REMEMBERED:
            now = datetime.datetime.now(tz=datetime.UTC)
            self._known_revoked = {key: until for key, until in self._known_revoked.items() if until > now}
        self._known_revoked[revoked_id] = expires_at
        return True


class RedisRevocationCheck:
    """One Redis round trip per request; PostgreSQL is read when Redis lost the record or cannot be asked."""

    shared_cache = True

    def __init__(self, redis: Redis, key_prefix: str) -> None:
        self._redis = redis
        self._prefix = f"{key_prefix}:revoked:"
        self._complete_marker = f"{key_prefix}:revoked-loaded"
        self._refill_lock = asyncio.Lock()
        self._outage = Outage()  # after a failure, PostgreSQL answers for a few seconds without asking Redis
        self._failures = RateLimitedLog()
        # Set while PostgreSQL may hold revocations Redis has not taken: Redis would answer "not revoked" for them.
        self._redis_incomplete = False
        self._doubts = 0  # counts the reasons given to distrust Redis; a reconcile clears only those it saw
        self._reconciling: asyncio.Task[None] | None = None

    def uncached_revocations(self) -> Subscription:
        """What this worker listens for: another worker could not write a revocation into Redis."""
        return Subscription(UNCACHED_CHANNEL, lambda _payload: self._distrust_redis(), self._after_missed_notices)

    async def _after_missed_notices(self) -> None:
        self._distrust_redis()  # a notice may have been said while the listener was away

    def _distrust_redis(self) -> None:
        self._redis_incomplete = True
        self._doubts += 1
        if self._reconciling is None or self._reconciling.done():
            self._reconciling = asyncio.ensure_future(self._reconcile_soon())

    async def _reconcile_soon(self) -> None:
        try:
            while True:
                doubts = self._doubts
                await self.reconcile()
                if not self._redis_incomplete or self._doubts == doubts:
                    return  # trusted again, or Redis still down (the periodic reconciler carries on)
        except Exception as error:  # the periodic reconciler tries again
            logger.debug("revocation reconcile failed: {}", error)

    async def any_revoked(self, ids: list[uuid.UUID]) -> bool:
        if self._outage.ongoing or self._redis_incomplete:
            return bool(await revoked_in_database(ids))
        try:
            values = await self._redis.mget([self._complete_marker, *(self._key(value) for value in ids)])
            if values[0] is None:
                await self._refill_from_database()
                return bool(await revoked_in_database(ids))
        except RedisError as error:
            self._cache_failed(error)
            return bool(await revoked_in_database(ids))
        return any(value is not None for value in values[1:])

    async def remember(self, revoked_id: uuid.UUID, expires_at: datetime.datetime) -> bool:
        if not self._outage.ongoing:
            try:
                await self._redis.set(self._key(revoked_id), "1", ex=_ttl(expires_at))
                return True
            except RedisError as error:
                self._cache_failed(error)
        # Every worker and replica asks PostgreSQL until the revocation is in Redis: one that trusted Redis now, if
        # it answers them, would let the revoked token through.
        self._distrust_redis()
        await RevokedToken.raw("SELECT pg_notify({}, '')", UNCACHED_CHANNEL)
        return False

    async def reconcile(self) -> int:
        """Copy into Redis the revocations it has not taken (it was down when they were made); how many. Once none
        is left, Redis is trusted again."""
        if self._outage.ongoing:
            return 0
        doubts = self._doubts  # a doubt raised from here on may concern a row this round does not see
        now = datetime.datetime.now(tz=datetime.UTC)
        rows = (
            await RevokedToken.select(RevokedToken.id, RevokedToken.expires_at)
            .where((RevokedToken.cached == False) & (RevokedToken.expires_at > now))  # noqa: E712 (a query)
            .limit(_RECONCILE_BATCH)
        )
        if not rows:
            self._trust_redis_if_no_new_doubt(doubts)
            return 0
        try:
            async with self._redis.pipeline(transaction=False) as pipeline:
                for row in rows:
                    pipeline.set(self._key(row["id"]), "1", ex=_ttl(row["expires_at"]))
                await pipeline.execute()
        except RedisError as error:
            self._cache_failed(error)
            return 0
        await RevokedToken.update({RevokedToken.cached: True}).where(RevokedToken.id.is_in([row["id"] for row in rows]))
        logger.info("revocation cache: {} revocation(s) made while Redis was unreachable copied into it", len(rows))
        if len(rows) < _RECONCILE_BATCH:
            self._trust_redis_if_no_new_doubt(doubts)
        return len(rows)

    def _trust_redis_if_no_new_doubt(self, doubts: int) -> None:
        if self._doubts == doubts:
            self._redis_incomplete = False

    def _cache_failed(self, error: RedisError) -> None:
        self._outage.began()
        self._failures.warning("redis", "revocation cache unreachable, PostgreSQL answers: {}", error)

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
                    pipeline.set(self._key(row["id"]), "1", ex=_ttl(row["expires_at"]))
                pipeline.set(self._complete_marker, "1")
                await pipeline.execute()
            logger.info("revocation cache refilled from PostgreSQL ({} ids)", len(rows))

    def _key(self, revoked_id: uuid.UUID) -> str:
        return f"{self._prefix}{revoked_id}"


def _ttl(expires_at: datetime.datetime) -> int:
    return max(1, int((expires_at - datetime.datetime.now(tz=datetime.UTC)).total_seconds()) + 1)


async def reconcile_periodically(check: RedisRevocationCheck, interval_seconds: float) -> None:
    """Runs for the worker's lifetime: revocations made while Redis was down reach it once it answers."""
    while True:
        await asyncio.sleep(interval_seconds)
        try:
            await check.reconcile()
        except Exception as error:  # the database may be down too: the next round tries again
            logger.debug("revocation reconcile failed: {}", error)


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
