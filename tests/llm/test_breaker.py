"""The circuit breaker decides on a failure *rate*, with confidence, over a time window: a partial failure at any
volume stays closed; an outage opens it within a few calls; half-open lets a few probes decide."""

from __future__ import annotations

import random

import pytest

from server.llm.resilience import BreakerState, CircuitBreaker, failure_rate_lower_bound


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def breaker(clock: Clock, **overrides: float) -> CircuitBreaker:
    settings: dict = {
        "failure_rate": 0.5,
        "minimum_calls": 5,
        "window_seconds": 30.0,
        "open_seconds": 15.0,
        "half_open_calls": 3,
    }
    settings.update(overrides)
    return CircuitBreaker(clock=clock, **settings)


def attempt(circuit: CircuitBreaker, *, fails: bool) -> bool:
    """One attempt through the breaker; False if it was not let through."""
    permit = circuit.try_acquire()
    if permit is None:
        return False
    if fails:
        permit.failed()
    else:
        permit.succeeded()
    return True


@pytest.mark.parametrize("calls_per_second", [1, 20, 300])
def test_a_model_failing_30_percent_never_opens_at_any_volume(calls_per_second: int) -> None:
    """Counting failures opened the circuit at any real volume: a 30% error rate became a 93.5% outage."""
    clock, rng = Clock(), random.Random(7)
    circuit = breaker(clock)
    for _ in range(60 * calls_per_second):  # a minute of traffic
        clock.now += 1 / calls_per_second
        assert attempt(circuit, fails=rng.random() < 0.3)
    assert circuit.state is BreakerState.CLOSED


def test_an_outage_opens_it_after_a_few_failures_in_a_row() -> None:
    clock = Clock()
    circuit = breaker(clock)
    failures = 0
    while circuit.state is BreakerState.CLOSED:
        attempt(circuit, fails=True)
        failures += 1
    assert failures == 6  # at low volume, six in a row are sure enough
    assert circuit.state is BreakerState.OPEN
    assert not attempt(circuit, fails=False)  # skipped while open
    assert circuit.seconds_until_half_open() == pytest.approx(15.0)


def test_at_volume_a_rate_clearly_above_the_threshold_opens_it() -> None:
    clock, rng = Clock(), random.Random(3)
    circuit = breaker(clock)
    for _ in range(2000):
        clock.now += 0.01
        if not attempt(circuit, fails=rng.random() < 0.7):
            break
    assert circuit.state is BreakerState.OPEN


def test_failures_older_than_the_window_are_forgotten() -> None:
    clock = Clock()
    circuit = breaker(clock)
    for _ in range(5):
        attempt(circuit, fails=True)
    clock.now += 31  # the five failures leave the window
    attempt(circuit, fails=True)
    assert circuit.state is BreakerState.CLOSED


def test_successes_in_the_window_keep_occasional_failures_from_opening_it() -> None:
    clock = Clock()
    circuit = breaker(clock)
    for _ in range(20):
        attempt(circuit, fails=False)
    for _ in range(6):
        attempt(circuit, fails=True)
    assert circuit.state is BreakerState.CLOSED  # 6 of 26 fail: far from sure that half of them do


def test_half_open_lets_a_few_probes_through_and_their_outcome_closes_it() -> None:
    clock = Clock()
    circuit = breaker(clock)
    while circuit.state is BreakerState.CLOSED:
        attempt(circuit, fails=True)
    clock.now += 15
    assert circuit.state is BreakerState.HALF_OPEN
    probes = [circuit.try_acquire() for _ in range(4)]
    assert [probe is not None for probe in probes] == [True, True, True, False]  # three probes at most
    probes[0].succeeded()  # type: ignore[union-attr]
    probes[1].failed()  # type: ignore[union-attr]
    assert circuit.state is BreakerState.HALF_OPEN  # one failure of three is below the rate
    probes[2].succeeded()  # type: ignore[union-attr]
    assert circuit.state is BreakerState.CLOSED


def test_half_open_opens_again_as_soon_as_the_probes_cannot_close_it() -> None:
    clock = Clock()
    circuit = breaker(clock)
    while circuit.state is BreakerState.CLOSED:
        attempt(circuit, fails=True)
    clock.now += 15
    first, second = circuit.try_acquire(), circuit.try_acquire()
    assert first is not None
    assert second is not None
    first.failed()
    second.failed()
    assert circuit.state is BreakerState.OPEN
    assert circuit.seconds_until_half_open() == pytest.approx(15.0)  # a full period again


def test_a_probe_without_a_verdict_frees_its_place() -> None:
    clock = Clock()
    circuit = breaker(clock, half_open_calls=1)
    while circuit.state is BreakerState.CLOSED:
        attempt(circuit, fails=True)
    clock.now += 15
    probe = circuit.try_acquire()
    assert probe is not None
    assert circuit.try_acquire() is None
    probe.released()  # cancelled, say: it proved nothing
    assert attempt(circuit, fails=False)
    assert circuit.state is BreakerState.CLOSED


def test_calls_admitted_before_it_opened_prove_nothing_after() -> None:
    clock = Clock()
    circuit = breaker(clock, half_open_calls=1)
    late = [circuit.try_acquire() for _ in range(3)]  # left before the outage was noticed
    while circuit.state is BreakerState.CLOSED:
        attempt(circuit, fails=True)
    clock.now += 15
    for permit in late:
        permit.succeeded()  # type: ignore[union-attr]
    assert circuit.state is BreakerState.HALF_OPEN  # still waiting for a probe of its own


def test_state_changes_are_told() -> None:
    clock = Clock()
    circuit = breaker(clock, half_open_calls=1)
    told: list[BreakerState] = []
    circuit.on_change = told.append
    while circuit.state is BreakerState.CLOSED:
        attempt(circuit, fails=True)
    clock.now += 15
    attempt(circuit, fails=False)
    assert told == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED]


def test_the_lower_bound_of_the_failure_rate() -> None:
    assert failure_rate_lower_bound(0, 0) == 0.0
    assert failure_rate_lower_bound(6, 6) > 0.5 > failure_rate_lower_bound(5, 5)
    assert failure_rate_lower_bound(300, 1000) < 0.34
    assert failure_rate_lower_bound(550, 1000) > 0.5
