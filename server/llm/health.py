"""What readiness says about the models: each circuit's state, and whether the endpoint answers at all.

The circuit alone cannot tell that a model went down while nobody called it, so each endpoint is also probed,
cheaply (``GET /models``, which OpenAI-compatible servers answer without running a model), at most once per
``cache_seconds`` per worker however often readiness is asked, and never while another probe is under way.
"""

from __future__ import annotations

import asyncio
import functools
import time
from dataclasses import dataclass

import httpx

from agentctl.config import Role
from server.health.service import CheckResult
from server.llm.registry import ModelRegistry, RegisteredModel
from server.llm.resilience import BreakerState, Lane

_OPENAI_BASE_URL = "https://api.openai.com/v1"


@dataclass(frozen=True)
class ProbeResult:
    reachable: bool
    at: float
    error: str | None = None


class ModelProbes:
    def __init__(self, registry: ModelRegistry, *, cache_seconds: float, timeout_seconds: float) -> None:
        self._registry = registry
        self._cache_seconds = cache_seconds
        self._timeout = timeout_seconds
        self._results: dict[str, ProbeResult] = {}
        self._running: dict[str, asyncio.Task[ProbeResult]] = {}

    async def check_role(self, role: Role = "chat") -> CheckResult:
        """Healthy when every model of the role's chain answers its probe and has its chat circuit closed;
        the detail names each model's state, so an operator sees which one is down and why."""
        chain = self._registry.chain(role)
        results = await asyncio.gather(*(self._probe(model) for model in chain))
        models: dict[str, object] = {}
        unwell = []
        for model, probe in zip(chain, results, strict=True):
            circuit = model.breakers[Lane.FOREGROUND].state
            entry: dict[str, object] = {
                "status": "ok" if probe.reachable and circuit is BreakerState.CLOSED else "unavailable",
                "circuit": circuit.value,
                "background_circuit": model.breakers[Lane.BACKGROUND].state.value,
                "endpoint": "reachable" if probe.reachable else "unreachable",
                "checked_seconds_ago": round(time.monotonic() - probe.at, 1),
            }
            if probe.error:
                entry["error"] = probe.error
            models[model.name] = entry
            if entry["status"] != "ok":
                unwell.append(model.name)
        active, idle, waiting = self._registry.connections()
        detail: dict[str, object] = {
            "models": models,
            "connections": {
                "active": active,
                "idle": idle,
                "waiting": waiting,
                "max": self._registry.settings.max_connections,
            },
        }
        if not unwell:
            return CheckResult(detail=detail)
        serving = [model.name for model in chain if model.name not in unwell]
        error = f"unavailable: {', '.join(unwell)}" + (f"; {', '.join(serving)} serving" if serving else "")
        return CheckResult(healthy=False, detail=detail, error=error)

    async def _probe(self, model: RegisteredModel) -> ProbeResult:
        cached = self._results.get(model.name)
        if cached is not None and time.monotonic() - cached.at < self._cache_seconds:
            return cached
        running = self._running.get(model.name)
        if running is None:
            running = self._running[model.name] = asyncio.ensure_future(self._ask(model))
            running.add_done_callback(functools.partial(self._forget_running, model.name))
        result = await asyncio.shield(running)
        self._results[model.name] = result
        return result

    def _forget_running(self, name: str, _done: asyncio.Future[ProbeResult]) -> None:
        self._running.pop(name, None)

    async def _ask(self, model: RegisteredModel) -> ProbeResult:
        spec = model.spec
        if spec.provider == "local":
            return ProbeResult(reachable=True, at=time.monotonic())  # in this process: there while we are
        url = f"{(spec.base_url or _OPENAI_BASE_URL).rstrip('/')}/models"
        key = self._registry.api_key_of(spec)
        try:
            response = await self._registry.background_http.get(
                url, headers={"Authorization": f"Bearer {key}"}, timeout=self._timeout
            )
        except httpx.HTTPError as error:
            return ProbeResult(reachable=False, at=time.monotonic(), error=f"{type(error).__name__}: {error}".strip())
        if response.status_code >= 500 or response.status_code in (401, 403):
            reason = "refused our key" if response.status_code in (401, 403) else "failed"
            return ProbeResult(
                reachable=False, at=time.monotonic(), error=f"GET /models {reason} with {response.status_code}"
            )
        return ProbeResult(reachable=True, at=time.monotonic())
