"""Benchmark: the model layer against a simulator whose primary model fails 30% of the time.

1,000 chat calls go through LLMService (retries, circuit breaker, fallback to a healthy backup) and must
end with >= 99.9% success. Once the primary's circuit is open, calls go straight to the backup: their p99
latency must stay under 2x the simulator's own p99 (the same requests sent directly, without the layer).

    .venv/bin/python loadtests/bench_model_layer.py [--calls 1000 --concurrency 20 --ttft-ms 50]

Loopback only; bounded by the number of calls; the simulator stops with the script.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from langchain_core.messages import HumanMessage
from langchain_openai import ChatOpenAI

from agentctl.config import LLMSettings
from server.llm.registry import ModelRegistry
from server.llm.service import LLMService, ModelDeadlineError, ModelUnavailableError
from server.llm.simulator.process import RunningSimulator

RESULTS = Path(__file__).parent / "results"


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(share * len(ordered) + 0.5) - 1))]


async def run(calls: int, concurrency: int, ttft_ms: int) -> dict:
    with RunningSimulator(
        {"ttft_ms": ttft_ms, "answer_tokens": 24, "seed": 3, "faults": {"primary-model": {"rate_500": 0.3}}}
    ) as simulator:
        settings = LLMSettings(
            models={
                name: {
                    "model_id": f"{name}-model",
                    "base_url": simulator.base_url,
                    "api_key": "sim",
                    "timeout_seconds": 10,
                }
                for name in ("primary", "backup")
            },
            roles={"chat": ["primary", "backup"]},
            backoff_initial_seconds=0.05,
            backoff_max_seconds=0.5,
        )
        registry = ModelRegistry.from_settings(settings)
        service = LLMService(registry, settings, rng=random.Random(5))
        gate = asyncio.Semaphore(concurrency)
        outcomes: list[dict] = []

        async def one(index: int) -> None:
            async with gate:
                started = time.perf_counter()
                try:
                    completion = await service.complete("chat", [HumanMessage(f"question number {index}")])
                except (ModelUnavailableError, ModelDeadlineError) as error:
                    outcomes.append({"ok": False, "error": error.detail, "seconds": time.perf_counter() - started})
                    return
                report = completion.report
                outcomes.append(
                    {
                        "ok": True,
                        "seconds": time.perf_counter() - started,
                        "model": report.model,
                        "attempts": report.attempts,
                        "breaker_open": any(f.reason == "circuit open" for f in report.fallbacks),
                    }
                )

        wall = time.perf_counter()
        await asyncio.gather(*(one(index) for index in range(calls)))
        wall = time.perf_counter() - wall
        stats = simulator.stats()

        # The simulator's own latency: the same kind of request straight to the healthy model, no layer.
        direct = ChatOpenAI(model="backup-model", base_url=simulator.base_url, api_key="sim", max_retries=0)
        direct_seconds: list[float] = []

        async def direct_one(index: int) -> None:
            async with gate:
                started = time.perf_counter()
                await direct.ainvoke([HumanMessage(f"question number {index}")])
                direct_seconds.append(time.perf_counter() - started)

        await asyncio.gather(*(direct_one(index) for index in range(min(calls, 500))))
        await registry.aclose()

    succeeded = [o for o in outcomes if o["ok"]]
    while_open = [o["seconds"] for o in succeeded if o["breaker_open"]]
    report = {
        "benchmark": "model layer: 30% failures on the primary",
        "date": datetime.now(tz=UTC).isoformat(timespec="seconds"),
        "calls": calls,
        "concurrency": concurrency,
        "simulator_ttft_ms": ttft_ms,
        "success_rate": len(succeeded) / calls,
        "failures": [o["error"] for o in outcomes if not o["ok"]][:5],
        "answered_by": {m: sum(1 for o in succeeded if o["model"] == m) for m in ("primary", "backup")},
        "calls_with_retries": sum(1 for o in succeeded if o["attempts"] > 1 and not o["breaker_open"]),
        "calls_while_breaker_open": len(while_open),
        "simulator_outcomes": stats["outcomes"],
        "layer_ms": _summary([o["seconds"] for o in succeeded]),
        "layer_ms_while_breaker_open": _summary(while_open),
        "direct_simulator_ms": _summary(direct_seconds),
        "wall_seconds": round(wall, 2),
    }
    ratio = percentile(while_open, 0.99) / percentile(direct_seconds, 0.99) if while_open and direct_seconds else None
    report["p99_ratio_while_open_vs_direct"] = round(ratio, 3) if ratio else None
    report["pass"] = report["success_rate"] >= 0.999 and ratio is not None and ratio < 2
    return report


def _summary(seconds: list[float]) -> dict:
    if not seconds:
        return {}
    return {
        "n": len(seconds),
        "p50": round(1000 * statistics.median(seconds), 1),
        "p95": round(1000 * percentile(seconds, 0.95), 1),
        "p99": round(1000 * percentile(seconds, 0.99), 1),
        "max": round(1000 * max(seconds), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--ttft-ms", type=int, default=50)
    arguments = parser.parse_args()
    report = asyncio.run(run(arguments.calls, arguments.concurrency, arguments.ttft_ms))
    print(json.dumps(report, indent=2))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"model-layer-{datetime.now(tz=UTC):%Y%m%dT%H%M%SZ}.json").write_text(json.dumps(report, indent=2))
    print("PASS" if report["pass"] else "FAIL")
    sys.exit(0 if report["pass"] else 1)


if __name__ == "__main__":
    main()
