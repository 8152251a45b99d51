"""Rate limits with `limits` (moving window), in memory or in Redis so that they hold across workers."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from enum import StrEnum

import limits
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter
from prometheus_client import Counter

from agentctl.config import Settings
from server.errors import RateLimitedError, ServiceUnavailableError
from server.outages import Outage, RateLimitedLog


class RouteClass(StrEnum):
    REGISTER = "register"
    LOGIN = "login"
    LOGIN_EMAIL = "login-email"
    CHAT = "chat"
    DEFAULT = "default"


@dataclass(frozen=True)
class LimitDecision:
    allowed: bool
    limit: int
    remaining: int
    reset_after_seconds: int

    def headers(self) -> dict[str, str]:
        """The RateLimit-* headers every limited response carries; Retry-After when refused."""
        headers = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_after_seconds),
        }
        if not self.allowed:
            headers["Retry-After"] = str(max(1, self.reset_after_seconds))
        return headers

    def raise_if_refused(self, what: str) -> None:
        if not self.allowed:
            raise RateLimitedError(
                f"too many {what}; retry in {max(1, self.reset_after_seconds)} s", headers=self.headers()
            )


class _InProcessLimiter:
    """limits' synchronous in-memory moving window behind the async strategy's interface.

    A few dictionary operations under a lock, so calling it on the event loop is fine; limits' async memory storage
    instead expires its keys through asyncio.to_thread, one thread hop per key on every expiry pass, which cost a
    worker 4% of its CPU under load (a `loadtests/bench_loadtest.py overhead` profile)."""

    def __init__(self) -> None:
        self._limiter = limits.strategies.MovingWindowRateLimiter(limits.storage.MemoryStorage())

    async def hit(self, item: limits.RateLimitItem, *identifiers: str) -> bool:
        return self._limiter.hit(item, *identifiers)

    async def get_window_stats(self, item: limits.RateLimitItem, *identifiers: str) -> limits.WindowStats:
        return self._limiter.get_window_stats(item, *identifiers)


class RateLimiter:
    """One limiter per worker; with Redis every worker and replica counts in the same windows."""

    def __init__(self, settings: Settings, *, rejections: Counter | None = None) -> None:
        config = settings.ratelimit
        self.enabled = config.enabled
        self._rejections = rejections
        self._fail_open = config.on_storage_error == "allow"
        self._outage = Outage()  # a store that just failed is not asked again for a few seconds
        self._failures = RateLimitedLog()
        self._limits = {
            RouteClass.REGISTER: limits.parse(config.register_per_ip),
            RouteClass.LOGIN: limits.parse(config.login_per_ip),
            RouteClass.LOGIN_EMAIL: limits.parse(config.login_per_email),
            RouteClass.CHAT: limits.parse(config.chat),
            RouteClass.DEFAULT: limits.parse(config.default),
        }
        self._strategy: MovingWindowRateLimiter | _InProcessLimiter
        if settings.redis.url is None:
            self._strategy = _InProcessLimiter()
        else:
            storage = RedisStorage(
                "async+" + settings.redis.url.get_secret_value(),
                implementation="redispy",  # limits' default (coredis) is not installed; redis-py is
                key_prefix=f"{settings.redis.key_prefix}:ratelimit",
                wrap_exceptions=True,
                socket_timeout=settings.redis.timeout_seconds,
                socket_connect_timeout=settings.redis.timeout_seconds,
            )
            self._strategy = MovingWindowRateLimiter(storage)

    async def hit(self, route_class: RouteClass, key: str) -> LimitDecision:
        """Count one request of ``route_class`` for ``key`` and say whether it is within the limit."""
        item = self._limits[route_class]
        if self._outage.ongoing:
            return self._storage_failed(item, None)
        try:
            allowed = await self._strategy.hit(item, route_class.value, key)
            stats = await self._strategy.get_window_stats(item, route_class.value, key)
        except limits.errors.StorageError as error:
            self._outage.began()
            return self._storage_failed(item, error)
        if not allowed and self._rejections is not None:
            self._rejections.labels(route_class.value).inc()
        return LimitDecision(
            allowed=allowed,
            limit=item.amount,
            remaining=max(0, stats.remaining),
            reset_after_seconds=max(0, math.ceil(stats.reset_time - time.time())),
        )

    def _storage_failed(self, item: limits.RateLimitItem, error: Exception | None) -> LimitDecision:
        """What a request gets while the limit store is down: refused or allowed, as the settings say."""
        if error is not None:
            mode = "allowing requests (fail open)" if self._fail_open else "refusing requests (fail closed)"
            self._failures.warning("store", "rate-limit store failed; {}: {}", mode, error)
        if not self._fail_open:
            raise ServiceUnavailableError(
                "rate limiting is unavailable; try again shortly", headers={"Retry-After": "5"}
            )
        return LimitDecision(allowed=True, limit=item.amount, remaining=item.amount, reset_after_seconds=0)
