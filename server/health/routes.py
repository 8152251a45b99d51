from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from functools import partial

from litestar import Controller, get
from litestar.datastructures import State

from server.errors import ServiceUnavailableError, problem_responses
from server.health.service import chat_models_reachable, check_components
from server.lifespan import Resources


class HealthController(Controller):
    path = "/health"
    tags = ["health"]
    opt = {"rate_limit": None}  # probes are never rate limited

    @get("/", summary="Liveness", description="Answers while the process runs; touches nothing else.")
    async def liveness(self) -> dict[str, str]:
        """Liveness: the process is up and its event loop answers."""
        return {"status": "ok"}

    @get(
        "/ready",
        summary="Readiness",
        description="200 when every configured dependency answers; 503 naming the ones that do not.",
        responses=problem_responses(503),
    )
    async def readiness(self, state: State) -> dict[str, object]:
        """Readiness: a database round trip and a check of every configured dependency."""
        resources: Resources = state.resources
        checks: dict[str, Callable[[], Awaitable[object]]] = {
            "database": resources.database.ping,
            "models": partial(chat_models_reachable, resources.llm.registry),
        }
        if resources.redis is not None:
            redis, timeout = resources.redis, resources.settings.redis.timeout_seconds
            checks["redis"] = lambda: asyncio.wait_for(redis.ping(), timeout)
        components = await check_components(checks)
        report = {component.name: component.as_dict() for component in components}
        breakers = {name: model.breaker.state.value for name, model in resources.llm.registry.models.items()}
        failing = [component.name for component in components if not component.healthy]
        if failing:
            raise ServiceUnavailableError(
                f"not ready: {', '.join(failing)} unavailable",
                extra={"failing": failing, "checks": report, "circuit_breakers": breakers},
            )
        return {"status": "ready", "checks": report, "circuit_breakers": breakers}
