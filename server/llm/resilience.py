"""Retry, backoff and circuit breaking for model calls: which failures to retry, how long to wait,
and when to stop sending a model any traffic at all."""

from __future__ import annotations

import email.utils
import json
import math
import random
import time
from collections import deque
from collections.abc import Callable
from enum import StrEnum

import httpx
import openai


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Lane(StrEnum):
    """Who a model call serves: a person waiting (chat) or background work (memory, judge). Each lane has
    breakers of its own, so background trouble never opens the circuit that chat turns go through."""

    FOREGROUND = "foreground"
    BACKGROUND = "background"


# How sure the breaker must be that a model fails at least ``failure_rate`` of its calls before it opens: the
# lower bound of the observed rate's 98% Wilson interval (one-sided 99%). At low volume it takes six failures in
# a row; at high volume a rate a few points above the threshold. A model failing 30% of calls against a 50%
# threshold opens about once in a thousand runs of 300 calls (a Monte Carlo of the rule), and never at volume.
_CONFIDENCE_Z = 2.33
_BUCKET_SECONDS = 1.0


def failure_rate_lower_bound(failures: int, calls: int, z: float = _CONFIDENCE_Z) -> float:
    """The Wilson score interval's lower bound of the failure rate seen in ``calls`` calls."""
    if calls == 0:
        return 0.0
    rate = failures / calls
    spread = z * math.sqrt(rate * (1 - rate) / calls + z * z / (4 * calls * calls))
    return (rate + z * z / (2 * calls) - spread) / (1 + z * z / calls)


class _Window:
    """Calls and failures of the last ``seconds``, in one-second buckets (constant work per call)."""

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._buckets: deque[list[float]] = deque()  # [bucket start, calls, failures]
        self.calls = 0
        self.failures = 0

    def add(self, now: float, failed: bool) -> None:
        self._drop_older_than(now - self._seconds)
        start = now - now % _BUCKET_SECONDS
        if not self._buckets or self._buckets[-1][0] != start:
            self._buckets.append([start, 0, 0])
        bucket = self._buckets[-1]
        bucket[1] += 1
        self.calls += 1
        if failed:
            bucket[2] += 1
            self.failures += 1

    def _drop_older_than(self, cutoff: float) -> None:
        while self._buckets and self._buckets[0][0] + _BUCKET_SECONDS <= cutoff:
            _, calls, failures = self._buckets.popleft()
            self.calls -= int(calls)
            self.failures -= int(failures)

    def clear(self) -> None:
        self._buckets.clear()
        self.calls = self.failures = 0


class Permit:
    """Leave to send one attempt to a model. Report how it went: ``succeeded``, ``failed``, or ``released``
    when the attempt says nothing about the model (cancelled, or stuck in our own queue)."""

    __slots__ = ("_breaker", "_epoch", "_settled", "probe")

    def __init__(self, breaker: CircuitBreaker, epoch: int, *, probe: bool) -> None:
        self._breaker = breaker
        self._epoch = epoch
        self._settled = False
        self.probe = probe

    def succeeded(self) -> None:
        self._settle(failed=False)

    def failed(self) -> None:
        self._settle(failed=True)

    def released(self) -> None:
        if not self._settled:
            self._settled = True
            self._breaker._released(self)

    def _settle(self, *, failed: bool) -> None:
        if not self._settled:
            self._settled = True
            self._breaker._settled(self, self._epoch, failed=failed)


class CircuitBreaker:
    """One model's circuit in one lane, deciding on the failure *rate*, as resilience4j and Envoy's outlier
    detection do: it opens when the calls of the last ``window_seconds`` (at least ``minimum_calls`` of them)
    show, with 99% confidence, that ``failure_rate`` or more of them fail. Counting failures instead opened it at
    any real volume, whatever the rate: a 30% error rate became a 93% outage.

    Open, it skips the model for ``open_seconds``; then ``half_open_calls`` probes go through, and their outcome
    closes the circuit (failures below the rate) or opens it again for a full period. Only attempts admitted in
    the current state count: a call that left before the circuit opened proves nothing about the model now."""

    def __init__(
        self,
        *,
        failure_rate: float,
        minimum_calls: int,
        window_seconds: float,
        open_seconds: float,
        half_open_calls: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._failure_rate = failure_rate
        self._minimum_calls = minimum_calls
        self._open_for = open_seconds
        self._half_open_calls = half_open_calls
        self._clock = clock
        self._window = _Window(window_seconds)
        self._opened_at: float | None = None
        self._epoch = 0  # moves on at every state change; permits of an older epoch count for nothing
        self._probes_granted = 0
        self._probes_failed = 0
        self._probes_succeeded = 0
        # Told of every state change it notices (metrics); open → half-open is noticed at the next call.
        self.on_change: Callable[[BreakerState], None] | None = None
        self._reported = BreakerState.CLOSED

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self._clock() - self._opened_at >= self._open_for:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    def seconds_until_half_open(self) -> float:
        """How long an open circuit stays open (0 when it is not open)."""
        if self._opened_at is None:
            return 0.0
        return max(0.0, self._open_for - (self._clock() - self._opened_at))

    def notice_state(self) -> None:
        """Tell on_change if the state changed since last told (open turns half-open by time alone)."""
        state = self.state
        if state is not self._reported:
            self._reported = state
            if self.on_change is not None:
                self.on_change(state)

    def try_acquire(self) -> Permit | None:
        """Leave for one attempt now, or None while the circuit is open (or its probes are all out)."""
        state = self.state
        self.notice_state()
        if state is BreakerState.CLOSED:
            return Permit(self, self._epoch, probe=False)
        if state is BreakerState.HALF_OPEN and self._probes_granted < self._half_open_calls:
            self._probes_granted += 1
            return Permit(self, self._epoch, probe=True)
        return None

    def _settled(self, permit: Permit, epoch: int, *, failed: bool) -> None:
        if epoch != self._epoch:
            return
        if permit.probe:
            self._probe_settled(failed=failed)
            return
        now = self._clock()
        self._window.add(now, failed)
        if (
            failed
            and self._window.calls >= self._minimum_calls
            and failure_rate_lower_bound(self._window.failures, self._window.calls) >= self._failure_rate
        ):
            self._open(now)

    def _probe_settled(self, *, failed: bool) -> None:
        if failed:
            self._probes_failed += 1
        else:
            self._probes_succeeded += 1
        if self._probes_failed >= max(1, math.ceil(self._failure_rate * self._half_open_calls)):
            self._open(self._clock())  # too many probes failed for the rest to close it
        elif self._probes_succeeded + self._probes_failed >= self._half_open_calls:
            self._close()

    def _released(self, permit: Permit) -> None:
        if permit.probe and permit._epoch == self._epoch and self._opened_at is not None:
            self._probes_granted -= 1  # a probe without a verdict lets the next caller probe

    def _open(self, now: float) -> None:
        self._opened_at = now
        self._reset()

    def _close(self) -> None:
        self._opened_at = None
        self._reset()

    def _reset(self) -> None:
        self._epoch += 1
        self._window.clear()
        self._probes_granted = self._probes_failed = self._probes_succeeded = 0
        self.notice_state()


def is_retryable(error: BaseException) -> bool:
    """Rate limits, server errors, timeouts, broken connections and garbled answers are worth another try;
    a request the provider rejected as such (400, 401, 403, 404, 422) is not."""
    if isinstance(error, openai.APIStatusError):
        return error.status_code == 429 or error.status_code >= 500 or error.status_code == 408
    return isinstance(
        error,
        openai.APIConnectionError  # includes APITimeoutError
        | openai.APIResponseValidationError
        | httpx.TransportError
        | TimeoutError
        | json.JSONDecodeError
        | StreamEndedEarlyError,
    )


def counts_against_the_model(error: BaseException) -> bool:
    """Failures that say the model (or its endpoint) is unwell, as opposed to this request being bad, or to
    the wait having been ours: a request that timed out waiting for one of our own pooled connections never
    reached the model."""
    if waited_for_our_own_connection(error):
        return False
    if isinstance(error, openai.APIStatusError):
        return error.status_code in (401, 403, 404) or is_retryable(error)
    return is_retryable(error)


def waited_for_our_own_connection(error: BaseException) -> bool:
    """Whether the failure was a timeout waiting for a free connection of our pool (the openai SDK wraps it)."""
    seen: BaseException | None = error
    for _ in range(8):  # a chain of causes is short; a cycle must not hang the check
        if seen is None:
            return False
        if isinstance(seen, httpx.PoolTimeout):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def retry_after_seconds(error: BaseException) -> float | None:
    """The wait a 429/503 asked for (seconds or an HTTP date), if any."""
    response = getattr(error, "response", None)
    if response is None:
        return None
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


def backoff_seconds(attempt: int, *, initial: float, maximum: float, rng: random.Random) -> float:
    """Exponential backoff with full jitter: retries of many callers spread out instead of arriving together."""
    return rng.uniform(0, min(maximum, initial * 2**attempt))


class StreamEndedEarlyError(Exception):
    """The provider's stream stopped without saying it was finished (no finish reason)."""
