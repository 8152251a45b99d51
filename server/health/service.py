"""Liveness and readiness: whether this process can serve, and how each dependency is doing.

Readiness answers one question, the one a load balancer or Kubernetes asks: can *this instance* serve? Its own
dependencies (the database and its pools) decide it. Dependencies that every replica shares and none can fix —
the models, Redis when rate limits fail open, memory — are reported as ``degraded`` with what is wrong, and the
instance stays ready: taking every replica out of the service for a model provider's outage would take sign-in
and history down with the chat. A dependency named in the settings as required turns unreadiness on again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from loguru import logger

Status = Literal["ok", "degraded", "unavailable"]


@dataclass(frozen=True)
class CheckResult:
    """What a dependency check found: healthy or not, and what an operator should read about it."""

    healthy: bool = True
    detail: dict[str, object] = field(default_factory=dict)
    error: str | None = None


@dataclass(frozen=True)
class Dependency:
    """One thing readiness looks at. ``check`` raises or returns an unhealthy result when it is down;
    ``required`` decides whether that makes the instance unready (503) or only degraded (200)."""

    name: str
    check: Callable[[], Awaitable[CheckResult | None]]
    required: bool


@dataclass(frozen=True)
class ComponentHealth:
    name: str
    status: Status
    latency_ms: float
    error: str | None = None
    detail: dict[str, object] = field(default_factory=dict)

    @property
    def failing(self) -> bool:
        return self.status == "unavailable"

    def as_dict(self) -> dict[str, object]:
        report: dict[str, object] = {"status": self.status, "latency_ms": self.latency_ms, **self.detail}
        if self.error:
            report["error"] = self.error
        return report


@dataclass(frozen=True)
class Readiness:
    components: list[ComponentHealth]

    @property
    def failing(self) -> list[str]:
        return [component.name for component in self.components if component.failing]

    @property
    def status(self) -> Literal["ready", "degraded", "unavailable"]:
        if self.failing:
            return "unavailable"
        return "degraded" if any(component.status != "ok" for component in self.components) else "ready"

    def report(self) -> dict[str, object]:
        return {component.name: component.as_dict() for component in self.components}


class ReadinessProbe:
    """What /health/ready checks, handed to it when the worker starts; ``on_failing`` hears which required
    dependencies failed (the database renews its pools once it answers again)."""

    def __init__(
        self, dependencies: Sequence[Dependency], on_failing: Callable[[list[str]], None] | None = None
    ) -> None:
        self._dependencies = list(dependencies)
        self._on_failing = on_failing

    async def check(self) -> Readiness:
        readiness = await check_readiness(self._dependencies)
        if readiness.failing and self._on_failing is not None:
            self._on_failing(readiness.failing)
        return readiness


async def check_readiness(dependencies: Sequence[Dependency]) -> Readiness:
    """Every dependency checked concurrently; one slow dependency does not delay the others' verdicts."""
    return Readiness(list(await asyncio.gather(*(_timed_check(dependency) for dependency in dependencies))))


async def _timed_check(dependency: Dependency) -> ComponentHealth:
    started = time.perf_counter()
    down: Status = "unavailable" if dependency.required else "degraded"
    try:
        result = await dependency.check() or CheckResult()
    except Exception as error:
        logger.warning("readiness: {} {}: {}", dependency.name, down, error)
        return ComponentHealth(dependency.name, down, _elapsed_ms(started), str(error) or type(error).__name__)
    status: Status = "ok" if result.healthy else down
    return ComponentHealth(dependency.name, status, _elapsed_ms(started), result.error, result.detail)


def _elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)
