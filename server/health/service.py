"""Liveness and readiness: whether this process can serve, and whether each dependency answers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from loguru import logger

from server.llm.registry import ModelRegistry
from server.llm.resilience import BreakerState


@dataclass(frozen=True)
class ComponentHealth:
    name: str
    healthy: bool
    latency_ms: float
    error: str | None = None

    def as_dict(self) -> dict[str, object]:
        report: dict[str, object] = {"status": "ok" if self.healthy else "unavailable", "latency_ms": self.latency_ms}
        if self.error:
            report["error"] = self.error
        return report


async def check_components(checks: Mapping[str, Callable[[], Awaitable[object]]]) -> list[ComponentHealth]:
    """Run every dependency check concurrently; one slow dependency does not delay the others' verdicts."""
    return list(await asyncio.gather(*(_timed_check(name, check) for name, check in checks.items())))


async def _timed_check(name: str, check: Callable[[], Awaitable[object]]) -> ComponentHealth:
    started = time.perf_counter()
    try:
        await check()
    except Exception as error:
        logger.warning("readiness: {} unavailable: {}", name, error)
        return ComponentHealth(name, False, _elapsed_ms(started), str(error) or type(error).__name__)
    return ComponentHealth(name, True, _elapsed_ms(started))


def _elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)


async def chat_models_reachable(models: ModelRegistry) -> None:
    """Ready while at least one model of the chat chain accepts calls; an open circuit elsewhere is degradation."""
    chain = models.chain("chat")
    if all(model.breaker.state is BreakerState.OPEN for model in chain):
        raise RuntimeError(f"every chat model's circuit is open: {', '.join(model.name for model in chain)}")
