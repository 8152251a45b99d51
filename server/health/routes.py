from __future__ import annotations

from litestar import Controller, get

from server.errors import ServiceUnavailableError, problem_responses
from server.health.service import ReadinessProbe


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
        description="200 while this instance can serve: its database and pools answer. Shared dependencies "
        "(models, Redis when rate limits fail open, memory) that fail are reported as degraded, still 200, unless "
        "AGENTCTL_SERVER__READINESS_REQUIRES names them; 503 names what is unavailable.",
        responses=problem_responses(503),
    )
    async def readiness(self, readiness_probe: ReadinessProbe) -> dict[str, object]:
        """Readiness: can this instance serve, and how is each dependency doing."""
        readiness = await readiness_probe.check()
        if readiness.failing:
            raise ServiceUnavailableError(
                f"not ready: {', '.join(readiness.failing)} unavailable",
                extra={"failing": readiness.failing, "checks": readiness.report()},
            )
        return {"status": readiness.status, "checks": readiness.report()}
