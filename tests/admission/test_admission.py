"""Admission control: the bound on turns a worker runs at once, the wait for a slot, the adaptive limit, the
password-hashing backlog; and, through a real `agentctl serve`, the 503 a client gets."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from agentctl.config import AdmissionSettings, AuthSettings
from agentctl.simulator.process import RunningSimulator
from server.admission.service import OverloadedError, TurnAdmission
from server.auth.passwords import PasswordHashing
from tests.chat.conftest import Conversation, serve_with_model
from tests.support import ApiClient


def admission(**settings: object) -> TurnAdmission:
    return TurnAdmission(AdmissionSettings(**settings))  # type: ignore[arg-type]


async def test_turns_beyond_the_bound_are_refused_at_once_when_no_slot_is_expected_in_time() -> None:
    gate = admission(max_turns=2, max_wait_seconds=0.25)
    first, second = await gate.take(), await gate.take()
    began = time.perf_counter()
    with pytest.raises(OverloadedError) as refused:
        await gate.take()  # a slot is expected in ~1 s (a turn's first guessed duration over the bound)
    assert time.perf_counter() - began < 0.01
    assert refused.value.status == 503
    assert refused.value.code == "overloaded"
    assert refused.value.headers["Retry-After"] in ("1", "2")  # the expected wait, spread up to twice it
    first.release()
    third = await gate.take()
    assert gate.running == 2
    for slot in (second, third, third):  # releasing twice counts once
        slot.release()
    assert gate.running == 0


async def test_a_turn_waits_for_a_slot_expected_in_time_and_gets_the_one_freed() -> None:
    gate = admission(max_turns=1, max_wait_seconds=3)
    held = await gate.take()
    asyncio.get_running_loop().call_later(0.1, held.release)
    began = time.perf_counter()
    waited = await gate.take()
    assert 0.09 < time.perf_counter() - began < 1
    assert gate.running == 1
    waited.release()


async def test_a_wait_that_runs_out_is_refused_and_a_cancelled_wait_leaks_no_slot() -> None:
    gate = admission(max_turns=1, max_wait_seconds=3)
    held = await gate.take()
    gate._settings = AdmissionSettings(max_turns=1, max_wait_seconds=0.1)  # the wait runs out before the slot frees
    gate._turn_seconds = 0.05
    with pytest.raises(OverloadedError):
        await gate.take()
    gate._settings = AdmissionSettings(max_turns=1, max_wait_seconds=3)
    waiting = asyncio.ensure_future(gate.take())
    await asyncio.sleep(0.01)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    held.release()
    assert gate.running == 0
    assert not gate._waiting


async def test_the_bound_follows_the_event_loops_lag() -> None:
    gate = admission(initial_turns=20, min_turns=4, max_turns_ceiling=24, target_loop_lag_ms=30)
    slots = [await gate.take() for _ in range(20)]  # the bound is in use
    gate.observe_lag(0.001, now=100)  # lag low and the bound in use: a tenth more
    assert gate.limit == 22
    gate.observe_lag(0.001, now=101)  # the bound no longer in use: it stays
    assert gate.limit == 22
    for step in range(3):  # in use again: up to the ceiling, not beyond
        slots.extend([await gate.take() for _ in range(int(gate.limit) - gate.running)])
        gate.observe_lag(0.001, now=102 + step)
    assert gate.limit == 24
    for sample in range(10):  # just past the target (the lag's moving average gets there): a tenth less, once
        gate.observe_lag(0.033, now=110 + sample / 100)
    assert 21 < gate.limit < 24
    for step in range(40):  # far past it: half a step, down to the floor
        gate.observe_lag(0.5, now=200 + step)
    assert gate.limit == 4
    gate.observe_lag(0.5, now=300)
    gate.observe_lag(0.5, now=300.1)  # at most one change per half second
    assert gate.limit == 4
    for slot in slots:
        slot.release()
    fixed = admission(max_turns=5)
    fixed.observe_lag(1.0, now=1)
    assert fixed.limit == 5  # a fixed bound does not adapt


async def test_sign_ins_are_refused_when_the_hashing_backlog_passes_its_bound() -> None:
    hashing = PasswordHashing(AuthSettings(), threads=1, backlog_max_seconds=0.12)
    try:
        outcomes = await asyncio.gather(*(hashing.hash("a password 1") for _ in range(5)), return_exceptions=True)
    finally:
        hashing.close()
    # The first guess is 50 ms a call: the first two fit within 120 ms of backlog, the others are refused at once.
    assert [isinstance(outcome, str) for outcome in outcomes] == [True, True, False, False, False]
    assert all(isinstance(outcome, OverloadedError) for outcome in outcomes[2:])


@pytest.fixture(scope="module")
def busy_api(
    tmp_path_factory: pytest.TempPathFactory, migrated_database_url: str, simulator: RunningSimulator
) -> Iterator[ApiClient]:
    server = serve_with_model(
        tmp_path_factory.mktemp("admission"),
        migrated_database_url,
        simulator,
        "--workers",
        "1",
        AGENTCTL_ADMISSION__MAX_TURNS="1",
        AGENTCTL_ADMISSION__MAX_WAIT_SECONDS="0.2",
    )
    try:
        server.wait_until_healthy()
        yield ApiClient(server)
    finally:
        server.terminate()


@pytest.mark.slow
def test_a_busy_worker_answers_503_overloaded_at_once_with_retry_after(
    busy_api: ApiClient, simulator: RunningSimulator
) -> None:
    """Through a real `agentctl serve` whose worker runs one turn at a time."""
    simulator.configure({"tokens_per_second": 30, "answer_tokens": 90})  # a 3-second answer
    first, second = Conversation(busy_api), Conversation(busy_api)
    events: list[tuple[str, dict]] = []
    answering = threading.Thread(target=lambda: events.extend(first.stream("a long answer please")))
    answering.start()
    deadline = time.monotonic() + 10
    while "agentctl_admission_turns_running 1.0" not in busy_api.request("GET", "/../../metrics").text:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    began = time.perf_counter()
    refused = second.send("me too")
    elapsed = time.perf_counter() - began
    assert refused.status_code == 503, refused.text
    assert refused.json()["type"].endswith("overloaded")
    assert int(refused.headers["Retry-After"]) >= 1
    assert elapsed < 0.5
    key = busy_api.request(
        "POST", "/auth/api-keys", token=second.user_token, json={"name": "k", "scopes": ["chat"]}
    ).json()["key"]
    openai_refused = httpx.post(
        f"{busy_api.server.base_url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": "Agent", "messages": [{"role": "user", "content": "and me"}]},
        timeout=10,
    )
    assert openai_refused.status_code == 503
    assert openai_refused.json()["error"]["code"] == "overloaded"
    assert "Retry-After" in openai_refused.headers
    answering.join(timeout=30)
    assert events[-1][0] == "done"
    assert second.send("now?").status_code == 200  # the slot is free again
    metrics = busy_api.request("GET", "/../../metrics").text
    assert 'agentctl_admission_shed_total{what="turn"} 2.0' in metrics
    assert "agentctl_admission_turn_limit 1.0" in metrics
