"""Benchmark: the model layer (retries, circuit breakers, fallback, lanes) against a simulator that fails.

Three scenarios, each 1,000 calls through LLMService, ``--concurrency`` at a time, loopback only:

- ``single``: the only chat model fails 30% of its requests. Target: >= 97% of calls answered, the circuit never
  opens (a breaker that counted failures opened at any volume and turned this into a 93.5% outage).
- ``fallback``: the primary fails 30% of its requests, a healthy backup follows it. Target: >= 99.9% answered;
  once the primary's circuit is open (if it opens), calls that skip it have a p99 under 2x the simulator's own.
- ``background``: slow answers; the memory role's whole-answer calls time out while chat streams (first token in
  time) go on. Target: >= 99.9% of chat streams answered, and chat's circuit never opens.

    .venv/bin/python loadtests/bench_model_layer.py [--scenario all|single|fallback|background] [--calls 1000]

Bounded by the number of calls; the simulator stops with the script.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from langchain_core.messages import HumanMessage
from langchain_openai import ChatOpenAI

from agentctl.config import LLMSettings
from agentctl.simulator.process import RunningSimulator
from server.llm.registry import ModelRegistry
from server.llm.resilience import BreakerState, Lane
from server.llm.service import LLMService, ModelDeadlineError, ModelUnavailableError, StreamEnd

RESULTS = Path(__file__).parent / "results"


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(share * len(ordered) + 0.5) - 1))]


def _settings(simulator: RunningSimulator, chain: list[str], **overrides: Any) -> LLMSettings:
    timeout = overrides.pop("timeout_seconds", 10)
    return LLMSettings(
        models={
            name: {
                "model_id": f"{name}-model",
                "base_url": simulator.base_url,
                "api_key": "sim",
                "timeout_seconds": timeout,
            }
            for name in chain
        },
        roles={"chat": chain},
        backoff_initial_seconds=0.05,
        backoff_max_seconds=0.5,
        **overrides,
    )


async def _run_calls(
    calls: int, concurrency: int, call: Callable[[int], Awaitable[dict[str, Any]]]
) -> tuple[list[dict[str, Any]], float]:
    gate = asyncio.Semaphore(concurrency)
    outcomes: list[dict[str, Any]] = []

    async def one(index: int) -> None:
        async with gate:
            started = time.perf_counter()
            try:
                outcome = await call(index)
            except (ModelUnavailableError, ModelDeadlineError) as error:
                outcome = {"ok": False, "error": error.detail}
            outcome["seconds"] = time.perf_counter() - started
            outcomes.append(outcome)

    wall = time.perf_counter()
    await asyncio.gather(*(one(index) for index in range(calls)))
    return outcomes, time.perf_counter() - wall


async def _completion(service: LLMService, index: int) -> dict[str, Any]:
    completion = await service.complete("chat", [HumanMessage(f"question number {index}")])
    report = completion.report
    return {
        "ok": True,
        "model": report.model,
        "attempts": report.attempts,
        "breaker_open": any(f.reason == "circuit open" for f in report.fallbacks),
    }


async def single(calls: int, concurrency: int, ttft_ms: int) -> dict[str, Any]:
    with RunningSimulator(
        {"ttft_ms": ttft_ms, "answer_tokens": 24, "seed": 3, "faults": {"primary-model": {"rate_500": 0.3}}}
    ) as simulator:
        settings = _settings(simulator, ["primary"])
        registry = ModelRegistry.from_settings(settings)
        service = LLMService(registry, settings, rng=random.Random(5))
        states: set[BreakerState] = set()
        registry.models["primary"].breaker.on_change = states.add
        outcomes, wall = await _run_calls(calls, concurrency, lambda index: _completion(service, index))
        stats = simulator.stats()
        await registry.aclose()
    answered = [o for o in outcomes if o["ok"]]
    report = {
        "scenario": "single: the only model fails 30%",
        "success_rate": len(answered) / calls,
        "breaker_states_seen": sorted(state.value for state in states) or ["closed"],
        "attempts_per_call": round(sum(o["attempts"] for o in answered) / max(1, len(answered)), 2),
        "failures": [o["error"] for o in outcomes if not o["ok"]][:5],
        "simulator_outcomes": stats["outcomes"],
        "layer_ms": _summary([o["seconds"] for o in answered]),
        "wall_seconds": round(wall, 2),
    }
    report["pass"] = report["success_rate"] >= 0.97 and BreakerState.OPEN not in states
    return report


async def fallback(calls: int, concurrency: int, ttft_ms: int) -> dict[str, Any]:
    with RunningSimulator(
        {"ttft_ms": ttft_ms, "answer_tokens": 24, "seed": 3, "faults": {"primary-model": {"rate_500": 0.3}}}
    ) as simulator:
        settings = _settings(simulator, ["primary", "backup"])
        registry = ModelRegistry.from_settings(settings)
        service = LLMService(registry, settings, rng=random.Random(5))
        outcomes, wall = await _run_calls(calls, concurrency, lambda index: _completion(service, index))
        stats = simulator.stats()

        # The simulator's own latency: the same kind of request straight to the healthy model, no layer.
        direct = ChatOpenAI(model="backup-model", base_url=simulator.base_url, api_key="sim", max_retries=0)

        async def direct_one(index: int) -> dict[str, Any]:
            await direct.ainvoke([HumanMessage(f"question number {index}")])
            return {"ok": True}

        direct_outcomes, _ = await _run_calls(min(calls, 500), concurrency, direct_one)
        await registry.aclose()
    answered = [o for o in outcomes if o["ok"]]
    while_open = [o["seconds"] for o in answered if o["breaker_open"]]
    direct_seconds = [o["seconds"] for o in direct_outcomes]
    report: dict[str, Any] = {
        "scenario": "fallback: the primary fails 30%, a healthy backup follows",
        "success_rate": len(answered) / calls,
        "failures": [o["error"] for o in outcomes if not o["ok"]][:5],
        "answered_by": {m: sum(1 for o in answered if o["model"] == m) for m in ("primary", "backup")},
        "calls_while_breaker_open": len(while_open),
        "simulator_outcomes": stats["outcomes"],
        "layer_ms": _summary([o["seconds"] for o in answered]),
        "layer_ms_while_breaker_open": _summary(while_open),
        "direct_simulator_ms": _summary(direct_seconds),
        "wall_seconds": round(wall, 2),
    }
    ratio = percentile(while_open, 0.99) / percentile(direct_seconds, 0.99) if while_open and direct_seconds else None
    report["p99_ratio_while_open_vs_direct"] = round(ratio, 3) if ratio else None
    # With a rate-based breaker a 30% failure rate rarely opens the circuit at all: then there is nothing to time.
    report["pass"] = report["success_rate"] >= 0.999 and (ratio is None or ratio < 2)
    return report


async def background(calls: int, concurrency: int, ttft_ms: int) -> dict[str, Any]:
    """Memory extraction (whole answers, non-streamed) times out on slow answers; chat streams do not."""
    with RunningSimulator({"ttft_ms": max(ttft_ms, 100), "tokens_per_second": 40, "answer_tokens": 40}) as simulator:
        settings = _settings(simulator, ["primary"], timeout_seconds=0.5, max_attempts=1)
        registry = ModelRegistry.from_settings(settings)
        service = LLMService(registry, settings, rng=random.Random(5))
        foreground_states: set[BreakerState] = set()
        registry.models["primary"].breakers[Lane.FOREGROUND].on_change = foreground_states.add

        async def memory_call(index: int) -> dict[str, Any]:
            await service.complete("memory", [HumanMessage(f"extract facts from message {index}")])
            return {"ok": True}

        async def chat_stream(index: int) -> dict[str, Any]:
            async for event in service.stream("chat", [HumanMessage(f"question number {index}")]):
                if isinstance(event, StreamEnd):
                    return {"ok": True}
            return {"ok": False, "error": "no end"}

        (chat, wall), (memory, _) = await asyncio.gather(
            _run_calls(calls, concurrency, chat_stream), _run_calls(calls // 4, 4, memory_call)
        )
        background_state = registry.models["primary"].breakers[Lane.BACKGROUND].state
        await registry.aclose()
    chat_answered = [o for o in chat if o["ok"]]
    report = {
        "scenario": "background: memory calls time out while chat streams",
        "chat_success_rate": len(chat_answered) / calls,
        "memory_success_rate": sum(1 for o in memory if o["ok"]) / max(1, len(memory)),
        "chat_breaker_states_seen": sorted(state.value for state in foreground_states) or ["closed"],
        "background_breaker_state": background_state.value,
        "chat_ms": _summary([o["seconds"] for o in chat_answered]),
        "chat_failures": [o["error"] for o in chat if not o["ok"]][:5],
        "wall_seconds": round(wall, 2),
    }
    report["pass"] = report["chat_success_rate"] >= 0.999 and BreakerState.OPEN not in foreground_states
    return report


def _summary(seconds: list[float]) -> dict[str, Any]:
    if not seconds:
        return {}
    return {
        "n": len(seconds),
        "p50": round(1000 * statistics.median(seconds), 1),
        "p95": round(1000 * percentile(seconds, 0.95), 1),
        "p99": round(1000 * percentile(seconds, 0.99), 1),
        "max": round(1000 * max(seconds), 1),
    }


SCENARIOS = {"single": single, "fallback": fallback, "background": background}


async def run(scenarios: list[str], calls: int, concurrency: int, ttft_ms: int) -> dict[str, Any]:
    reports = [await SCENARIOS[name](calls, concurrency, ttft_ms) for name in scenarios]
    return {
        "benchmark": "model layer under faults",
        "date": datetime.now(tz=UTC).isoformat(timespec="seconds"),
        "calls": calls,
        "concurrency": concurrency,
        "simulator_ttft_ms": ttft_ms,
        "scenarios": reports,
        "pass": all(report["pass"] for report in reports),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--scenario", choices=["all", *SCENARIOS], default="all")
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--ttft-ms", type=int, default=50)
    arguments = parser.parse_args()
    scenarios = list(SCENARIOS) if arguments.scenario == "all" else [arguments.scenario]
    report = asyncio.run(run(scenarios, arguments.calls, arguments.concurrency, arguments.ttft_ms))
    print(json.dumps(report, indent=2))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"model-layer-{datetime.now(tz=UTC):%Y%m%dT%H%M%SZ}.json").write_text(json.dumps(report, indent=2))
    print("PASS" if report["pass"] else "FAIL")
    sys.exit(0 if report["pass"] else 1)


if __name__ == "__main__":
    main()
