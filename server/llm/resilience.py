"""Retry, backoff and circuit breaking for model calls: which failures to retry, how long to wait,
and when to stop sending a model any traffic at all."""

from __future__ import annotations

import email.utils
import json
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


class CircuitBreaker:
    """Per model: opens after ``threshold`` failures within ``window`` seconds, skips the model while open,
    then lets exactly one probe through; the probe's outcome closes or re-opens it."""

    def __init__(
        self,
        *,
        threshold: int,
        window_seconds: float,
        open_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._threshold = threshold
        self._window = window_seconds
        self._open_for = open_seconds
        self._clock = clock
        self._failures: deque[float] = deque()
        self._opened_at: float | None = None
        self._probe_in_flight = False
        # Told of every state change it notices (metrics); open → half-open is noticed at the next call.
        self.on_change: Callable[[BreakerState], None] | None = None
        self._reported = BreakerState.CLOSED

    def notice_state(self) -> None:
        """Tell on_change if the state changed since last told (open turns half-open by time alone)."""
        state = self.state
        if state is not self._reported:
            self._reported = state
            if self.on_change is not None:
                self.on_change(state)

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self._clock() - self._opened_at >= self._open_for:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    def try_acquire(self) -> bool:
        """Whether a call may go to this model now. In half-open state only one caller gets through."""
        state = self.state
        self.notice_state()
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and not self._probe_in_flight:
            self._probe_in_flight = True
            return True
        return False

    def record_success(self) -> None:
        # Only the probe's success closes an open circuit: calls that left before it opened prove nothing.
        # In the closed state successes do not forgive failures: N failures within the window open it.
        if self._probe_in_flight:
            self._failures.clear()
            self._opened_at = None
            self._probe_in_flight = False
            self.notice_state()

    def record_failure(self) -> None:
        now = self._clock()
        if self._probe_in_flight or self.state is not BreakerState.CLOSED:
            self._opened_at = now  # the probe failed: open again for a full period
            self._probe_in_flight = False
            self.notice_state()
            return
        self._failures.append(now)
        while self._failures and now - self._failures[0] > self._window:
            self._failures.popleft()
        if len(self._failures) >= self._threshold:
            self._opened_at = now
            self.notice_state()
            self._failures.clear()

    def release_probe(self) -> None:
        """A probe that ended without a verdict (cancelled, say) lets the next caller probe."""
        self._probe_in_flight = False


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
    """Failures that say the model (or its endpoint) is unwell, as opposed to this request being bad."""
    if isinstance(error, openai.APIStatusError):
        return error.status_code in (401, 403, 404) or is_retryable(error)
    return is_retryable(error)


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
