"""The model layer against the simulator over real HTTP: retries, Retry-After, breaker, fallback, deadline,
streaming failures, usage and cost."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time

import pytest
from langchain_core.messages import HumanMessage

from agentctl.config import LLMSettings
from agentctl.simulator.process import RunningSimulator
from server.llm.registry import ModelRegistry
from server.llm.resilience import BreakerState, Lane
from server.llm.service import (
    LLMService,
    ModelDeadlineError,
    ModelStreamError,
    ModelUnavailableError,
    StreamEnd,
    StreamToken,
)

HEALTHY: dict = {"faults": {}, "ttft_ms": 0, "tokens_per_second": 0, "answer_tokens": 24, "seed": 7}


@pytest.fixture(autouse=True)
def _healthy_simulator(simulator: RunningSimulator) -> None:
    simulator.configure(HEALTHY)
    simulator.reset()


def faults(**per_model: dict) -> dict:
    return {**HEALTHY, "faults": per_model}


def settings_for(simulator: RunningSimulator, *chain: str, **overrides: object) -> LLMSettings:
    models = {
        name: {
            "model_id": f"{name}-model",
            "base_url": simulator.base_url,
            "api_key": "sim",
            "timeout_seconds": 5,
            "price_input_per_million": 2.0,
            "price_output_per_million": 8.0,
        }
        for name in chain
    }
    values: dict = {
        "models": models,
        "roles": {"chat": list(chain)},
        "max_attempts": 3,
        "backoff_initial_seconds": 0.01,
        "backoff_max_seconds": 0.05,
        "breaker_window_seconds": 30,
        "breaker_open_seconds": 0.5,
        "breaker_half_open_calls": 1,
        "call_deadline_seconds": 10,
    }
    values.update(overrides)
    return LLMSettings(**values)


def service_for(settings: LLMSettings, sleep=asyncio.sleep) -> LLMService:  # type: ignore[no-untyped-def]
    return LLMService(ModelRegistry.from_settings(settings), settings, rng=random.Random(1), sleep=sleep)


def ask(text: str = "What is the capital of France?") -> list:
    return [HumanMessage(text)]


async def test_plain_answer_with_usage_and_cost(simulator: RunningSimulator) -> None:
    completion = await service_for(settings_for(simulator, "primary")).complete("chat", ask())
    report = completion.report
    assert completion.message.text
    assert (report.model, report.model_id, report.attempts, report.fallbacks) == ("primary", "primary-model", 1, [])
    usage = report.usage
    assert usage.input_tokens > 0
    assert usage.output_tokens > 0
    assert usage.cost_usd == pytest.approx((usage.input_tokens * 2.0 + usage.output_tokens * 8.0) / 1_000_000)


async def test_retry_then_success(simulator: RunningSimulator) -> None:
    simulator.configure(faults(**{"primary-model": {"rate_500": 1.0}}))
    waits: list[float] = []

    async def heal_while_waiting(seconds: float) -> None:
        waits.append(seconds)
        simulator.configure(HEALTHY)

    completion = await service_for(settings_for(simulator, "primary"), sleep=heal_while_waiting).complete("chat", ask())
    assert completion.report.model == "primary"
    assert completion.report.attempts == 2
    assert completion.report.retries == 1
    assert waits
    assert waits[0] <= 0.05


async def test_429_waits_as_long_as_retry_after_says(simulator: RunningSimulator) -> None:
    simulator.configure(faults(**{"primary-model": {"rate_429": 1.0, "retry_after_seconds": 2}}))
    waits: list[float] = []

    async def heal_while_waiting(seconds: float) -> None:
        waits.append(seconds)
        simulator.configure(HEALTHY)

    completion = await service_for(settings_for(simulator, "primary"), sleep=heal_while_waiting).complete("chat", ask())
    assert completion.report.model == "primary"
    assert waits == [pytest.approx(2.0)]  # not the 0.05 s backoff


async def test_non_retryable_error_is_not_retried(simulator: RunningSimulator) -> None:
    settings = settings_for(simulator, "primary", "backup")
    settings.models["primary"].base_url = simulator.base_url + "/no-such-path"  # answers 404
    completion = await service_for(settings).complete("chat", ask())
    assert completion.report.model == "backup"
    assert completion.report.attempts == 2  # one try on the primary, none repeated
    assert completion.report.fallbacks[0].reason.endswith("404")


async def test_fallback_follows_the_chain_in_order(simulator: RunningSimulator) -> None:
    simulator.configure(faults(**{"primary-model": {"rate_500": 1.0}, "backup-model": {"rate_500": 1.0}}))
    completion = await service_for(settings_for(simulator, "primary", "backup", "third")).complete("chat", ask())
    assert completion.report.model == "third"
    assert [fallback.model for fallback in completion.report.fallbacks] == ["primary", "backup"]
    assert completion.report.attempts == 7  # 3 + 3 + 1


async def test_breaker_opens_skips_the_model_then_a_probe_closes_it(simulator: RunningSimulator) -> None:
    settings = settings_for(simulator, "primary", "backup", max_attempts=1)
    service = service_for(settings)
    breaker = service.registry.models["primary"].breaker
    simulator.configure(faults(**{"primary-model": {"rate_500": 1.0}}))
    for _ in range(6):  # six failures in a row: sure enough at this volume that the model fails
        assert (await service.complete("chat", ask())).report.model == "backup"
    assert breaker.state is BreakerState.OPEN
    primary_requests = simulator.stats()["models"]["primary-model"]["requests"]

    skipped = await service.complete("chat", ask())
    assert skipped.report.fallbacks[0].reason == "circuit open"
    assert simulator.stats()["models"]["primary-model"]["requests"] == primary_requests  # not even tried

    simulator.configure(HEALTHY)
    await asyncio.sleep(0.6)
    assert breaker.state is BreakerState.HALF_OPEN
    probe = await service.complete("chat", ask())
    assert probe.report.model == "primary"
    assert breaker.state is BreakerState.CLOSED


async def test_failed_probe_opens_the_circuit_again(simulator: RunningSimulator) -> None:
    service = service_for(settings_for(simulator, "primary", "backup", max_attempts=1))
    breaker = service.registry.models["primary"].breaker
    simulator.configure(faults(**{"primary-model": {"rate_500": 1.0}}))
    for _ in range(6):
        await service.complete("chat", ask())
    await asyncio.sleep(0.6)
    assert (await service.complete("chat", ask())).report.model == "backup"  # the probe failed
    assert breaker.state is BreakerState.OPEN


async def test_one_requests_fallback_does_not_change_another_requests_route(simulator: RunningSimulator) -> None:
    simulator.configure(faults(**{"primary-model": {"rate_500": 0.5}}))
    service = service_for(settings_for(simulator, "primary", "backup", max_attempts=1, breaker_failure_rate=1.0))
    completions = await asyncio.gather(*(service.complete("chat", ask(f"question {n}")) for n in range(24)))
    fell_back = [c for c in completions if c.report.fallbacks]
    stayed = [c for c in completions if not c.report.fallbacks]
    assert fell_back
    assert stayed
    # Every request tried the primary first, whatever the others had to do.
    assert all(c.report.model == "backup" and c.report.fallbacks[0].model == "primary" for c in fell_back)
    assert all(c.report.model == "primary" and c.report.attempts == 1 for c in stayed)


async def test_the_deadline_bounds_the_whole_call(simulator: RunningSimulator) -> None:
    simulator.configure({**HEALTHY, "ttft_ms": 3000})
    service = service_for(settings_for(simulator, "primary", "backup"))
    started = time.perf_counter()
    with pytest.raises(ModelDeadlineError):
        await service.complete("chat", ask(), deadline_seconds=0.5)
    assert time.perf_counter() - started < 1.5


async def test_stream_yields_tokens_then_the_whole_message(simulator: RunningSimulator) -> None:
    service = service_for(settings_for(simulator, "primary"))
    events = [event async for event in service.stream("chat", ask())]
    tokens = [event.text for event in events if isinstance(event, StreamToken)]
    end = events[-1]
    assert isinstance(end, StreamEnd)
    assert len(tokens) > 3
    assert "".join(tokens) == end.message.text
    assert end.report.usage.output_tokens > 0
    assert end.report.time_to_first_token_seconds is not None
    complete = await service.complete("chat", ask())
    assert complete.message.text == end.message.text


async def test_stream_failure_before_the_first_token_falls_back(simulator: RunningSimulator) -> None:
    simulator.configure(faults(**{"primary-model": {"rate_500": 1.0}}))
    service = service_for(settings_for(simulator, "primary", "backup", max_attempts=1))
    events = [event async for event in service.stream("chat", ask())]
    end = events[-1]
    assert isinstance(end, StreamEnd)
    assert end.report.model == "backup"
    assert [fallback.model for fallback in end.report.fallbacks] == ["primary"]


async def test_stream_failure_after_the_first_token_is_an_error_not_a_fallback(simulator: RunningSimulator) -> None:
    simulator.configure(faults(**{"primary-model": {"rate_stream_cut": 1.0}}))
    service = service_for(settings_for(simulator, "primary", "backup"))
    received: list[str] = []

    async def consume() -> None:
        async for event in service.stream("chat", ask()):
            if isinstance(event, StreamToken):
                received.append(event.text)

    with pytest.raises(ModelStreamError) as failure:
        await consume()
    assert received
    assert failure.value.model == "primary"
    assert failure.value.partial == "".join(received)
    assert simulator.stats()["models"].get("backup-model", {}).get("requests", 0) == 0


async def test_the_deadline_cuts_a_slow_stream_mid_answer_and_spares_the_consumers_own_waits(
    simulator: RunningSimulator,
) -> None:
    """One deadline for the whole answer: a stream still trickling when it passes ends as a stream error with
    what came so far; time the consumer spends between tokens counts, but its own awaits are never cut."""
    simulator.configure({**HEALTHY, "tokens_per_second": 10, "answer_tokens": 100})
    service = service_for(settings_for(simulator, "primary"))
    received: list[str] = []
    started = time.perf_counter()

    async def consume() -> None:
        async for event in service.stream("chat", ask(), deadline_seconds=1.0):
            if isinstance(event, StreamToken):
                received.append(event.text)
                await asyncio.sleep(0.02)  # the consumer's own work between tokens: not interrupted

    with pytest.raises(ModelStreamError) as failure:
        await consume()
    assert 0.9 < time.perf_counter() - started < 1.6
    assert received
    assert failure.value.partial == "".join(received)
    assert isinstance(failure.value.__cause__, TimeoutError)


async def test_an_abandoned_stream_hands_its_connection_back_at_once(simulator: RunningSimulator) -> None:
    """A consumer cancelled after the first token (a client gone): the model's response is closed and its
    connection is back in the pool at once, not left in CLOSE-WAIT."""
    simulator.configure({**HEALTHY, "tokens_per_second": 20, "answer_tokens": 200})
    service = service_for(settings_for(simulator, "primary"))
    first_token = asyncio.Event()

    async def consume() -> None:
        async for _event in service.stream("chat", ask()):
            first_token.set()

    try:
        for _ in range(3):
            first_token.clear()
            reading = asyncio.create_task(consume())
            await asyncio.wait_for(first_token.wait(), 10)
            assert service.registry.connections()[0] == 1
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading
            active, _idle, waiting = service.registry.connections()
            assert (active, waiting) == (0, 0)
        assert service.registry.models["primary"].breaker.state is BreakerState.CLOSED  # a cancel is no failure
    finally:
        await service.registry.aclose()


async def test_background_failures_never_open_the_chat_circuit(simulator: RunningSimulator) -> None:
    simulator.configure(faults(**{"primary-model": {"rate_500": 1.0}}))
    service = service_for(settings_for(simulator, "primary", max_attempts=1))
    model = service.registry.models["primary"]
    for _ in range(8):
        with pytest.raises(ModelUnavailableError):
            await service.complete("memory", ask("extract the facts"))
    assert model.breakers[Lane.BACKGROUND].state is BreakerState.OPEN
    assert model.breakers[Lane.FOREGROUND].state is BreakerState.CLOSED
    simulator.configure(HEALTHY)
    assert (await service.complete("chat", ask())).report.model == "primary"


async def test_background_work_is_shed_while_the_chat_circuit_is_not_closed(simulator: RunningSimulator) -> None:
    service = service_for(settings_for(simulator, "primary", max_attempts=1))
    breaker = service.registry.models["primary"].breakers[Lane.FOREGROUND]
    for _ in range(6):
        permit = breaker.try_acquire()
        assert permit is not None
        permit.failed()
    requests = simulator.stats()["requests"]
    with pytest.raises(ModelUnavailableError) as refused:
        await service.complete("memory", ask("extract the facts"))
    assert "shed" in refused.value.detail
    assert simulator.stats()["requests"] == requests  # the struggling model got none of it


async def test_waiting_for_our_own_connection_is_not_held_against_the_model(simulator: RunningSimulator) -> None:
    """One connection, held by a slow stream; eleven more streams wait for it past their timeout (our queue, not
    the model's fault). Counted as the model's failures, they would open its circuit."""
    simulator.configure({**HEALTHY, "tokens_per_second": 5, "answer_tokens": 15})
    models = settings_for(simulator, "primary").models
    models["primary"].timeout_seconds = 1.0
    service = service_for(settings_for(simulator, "primary", max_attempts=1, max_connections=1, models=models))

    async def stream() -> str:
        async for event in service.stream("chat", ask()):
            if isinstance(event, StreamEnd):
                return event.message.text
        return ""

    try:
        outcomes = await asyncio.gather(*(stream() for _ in range(12)), return_exceptions=True)
    finally:
        await service.registry.aclose()
    assert [type(outcome) for outcome in outcomes].count(ModelUnavailableError) >= 10
    assert any(isinstance(outcome, str) and outcome for outcome in outcomes)
    assert service.registry.models["primary"].breaker.state is BreakerState.CLOSED


async def test_an_attempt_cut_short_by_the_calls_deadline_is_not_held_against_the_model(
    simulator: RunningSimulator,
) -> None:
    simulator.configure({**HEALTHY, "ttft_ms": 1000})
    service = service_for(settings_for(simulator, "primary", max_attempts=1))
    for _ in range(8):
        with pytest.raises((ModelDeadlineError, ModelUnavailableError)):
            await service.complete("chat", ask(), deadline_seconds=0.2)
    assert service.registry.models["primary"].breaker.state is BreakerState.CLOSED
