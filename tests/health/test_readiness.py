"""Readiness decides on what this instance needs (required dependencies); what replicas share is reported as
degraded and keeps it ready. The checks run side by side; a failing one is told to whoever renews pools."""

from __future__ import annotations

import asyncio
import time

from server.health.service import CheckResult, Dependency, ReadinessProbe, check_readiness


async def healthy() -> None:
    return None


async def down() -> None:
    raise ConnectionRefusedError("nobody answers")


async def unwell() -> CheckResult:
    return CheckResult(healthy=False, detail={"models": {"primary": "open"}}, error="unavailable: primary")


async def test_a_required_dependency_down_makes_the_instance_unready() -> None:
    readiness = await check_readiness(
        [Dependency("database", down, required=True), Dependency("models", healthy, required=False)]
    )
    assert readiness.failing == ["database"]
    assert readiness.status == "unavailable"
    report = readiness.report()
    assert report["database"]["status"] == "unavailable"
    assert report["database"]["error"] == "nobody answers"
    assert report["models"]["status"] == "ok"


async def test_a_shared_dependency_down_is_degraded_and_the_instance_stays_ready() -> None:
    readiness = await check_readiness(
        [
            Dependency("database", healthy, required=True),
            Dependency("models", unwell, required=False),
            Dependency("redis", down, required=False),
        ]
    )
    assert readiness.failing == []
    assert readiness.status == "degraded"
    report = readiness.report()
    assert report["models"] == {
        "status": "degraded",
        "latency_ms": report["models"]["latency_ms"],
        "models": {"primary": "open"},
        "error": "unavailable: primary",
    }
    assert report["redis"]["status"] == "degraded"


async def test_checks_run_side_by_side() -> None:
    async def slow() -> None:
        await asyncio.sleep(0.3)

    started = time.perf_counter()
    readiness = await check_readiness([Dependency(name, slow, required=True) for name in ("a", "b", "c")])
    assert time.perf_counter() - started < 0.6
    assert readiness.status == "ready"


async def test_the_probe_tells_which_required_dependencies_failed() -> None:
    told: list[list[str]] = []
    probe = ReadinessProbe(
        [Dependency("database", down, required=True), Dependency("models", down, required=False)], told.append
    )
    assert (await probe.check()).failing == ["database"]
    assert told == [["database"]]
