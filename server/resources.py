"""What one worker process opens at start and shares between its requests, and the typed way to reach it."""

from __future__ import annotations

from dataclasses import dataclass, field

from litestar import Litestar
from litestar.datastructures import State
from litestar.types import Scope
from redis.asyncio import Redis

from agentctl.config import Settings
from server.auth.service import AuthService
from server.chat.service import ChatService
from server.database.engine import Database
from server.health.service import ReadinessProbe
from server.llm.service import LLMService
from server.memory.service import MemoryService
from server.observability.metrics import AppMetrics
from server.ratelimit.service import RateLimiter
from server.security.client_ip import Network, client_ip


@dataclass
class Resources:
    """The connections and services of one worker, built by the lifespan (server.areas, in server.lifespan)."""

    settings: Settings
    database: Database
    redis: Redis | None
    auth: AuthService
    limiter: RateLimiter
    llm: LLMService
    chat: ChatService
    memory: MemoryService | None
    metrics: AppMetrics
    readiness: ReadinessProbe
    trusted_proxies: list[Network] = field(default_factory=list)

    def client_ip(self, scope: Scope) -> str:
        return client_ip(scope, self.trusted_proxies)


def resources_of(state: State) -> Resources:
    """The worker's resources (the lifespan has run: nothing is served before it)."""
    resources = state.get("resources")
    if not isinstance(resources, Resources):
        raise RuntimeError("the worker's resources are not open (the lifespan has not run)")
    return resources


def open_resources_of(app: Litestar) -> Resources | None:
    """The worker's resources, or None while it is still starting (middleware sees requests then too)."""
    resources = app.state.get("resources")
    return resources if isinstance(resources, Resources) else None
