"""Admission control: a worker takes only the turns it can answer in time, and says "busy, retry in N s" at once
for the rest, rather than queueing work it cannot do (measured: 1,500 users streaming at once on two cores got
every answer, but waited 5 s at p50 and 23 s at p99 for the first token).

**Turns.** At most ``limit`` turns run at once in a worker. One more waits for a slot, first come first served, but
only if the slot is expected within ``max_wait_seconds`` (its place in the line, times the recent turn duration, over
the limit); otherwise, or if the wait runs out, it is refused at once: 503, problem ``overloaded``, ``Retry-After``.

**The limit adapts** to the event loop's lag, sampled every 100 ms: lag is the one resource a worker can run out of
made visible — every token relayed, every request parsed waits on the loop — and it rises before time to first
token does. It starts high (a burst on an idle worker is taken); while the lag stays under half its target and the
limit is in use, the limit grows by a tenth a step; when the lag passes the target, it shrinks by target/lag
(between a tenth and a half), at most once per half-second step. A fixed capacity would be wrong in both
directions: what a worker can hold depends on the model's speed, answer lengths, tools and memory, none known in
advance. ``AGENTCTL_ADMISSION__MAX_TURNS`` fixes it instead.

**Passwords.** Sign-up and sign-in hash on a small pool of their own; when its backlog (calls waiting times the recent
time of one) passes ``hashing_backlog_max_seconds``, they are refused the same way, before queueing.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections import deque
from dataclasses import dataclass

from agentctl.config import AdmissionSettings
from server.errors import ServiceUnavailableError
from server.observability.metrics import AdmissionMetrics

_LAG_SAMPLE_SECONDS = 0.1
_ADAPT_EVERY_SECONDS = 0.5
_LAG_SMOOTHING = 0.3  # weight of the newest lag sample in the moving average
_DURATION_SMOOTHING = 0.1
_MAX_RETRY_AFTER_SECONDS = 30


class OverloadedError(ServiceUnavailableError):
    code = "overloaded"

    def __init__(self, detail: str, retry_after: float) -> None:
        # Spread over up to twice the expected wait: clients refused together must not all come back together.
        spread = retry_after * (1 + random.random())
        seconds = max(1, min(_MAX_RETRY_AFTER_SECONDS, math.ceil(spread)))
        super().__init__(f"{detail}; retry in {seconds} s", headers={"Retry-After": str(seconds)})


@dataclass
class TurnSlot:
    """A place among the turns a worker runs at once; released exactly once."""

    admission: TurnAdmission
    taken_at: float
    released: bool = False
    handed_over: bool = False  # a run holds it now, and releases it when it ends

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.admission._release(time.perf_counter() - self.taken_at)


class TurnAdmission:
    """How many turns this worker runs at once, and who waits for the next slot."""

    def __init__(self, settings: AdmissionSettings, metrics: AdmissionMetrics | None = None) -> None:
        self._settings = settings
        self._metrics = metrics
        self.limit = float(settings.max_turns or settings.initial_turns)
        self.running = 0
        self.lag_seconds = 0.0
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._turn_seconds = 2.0  # a first guess at a turn's duration, replaced by measurements
        self._last_change = 0.0
        self._publish()

    @property
    def adaptive(self) -> bool:
        return self._settings.max_turns is None

    def _expected_wait(self) -> float | None:
        """How long a turn asking now would wait for a slot (None: it gets one at once)."""
        if not self._settings.enabled or (self.running < int(self.limit) and not self._waiting):
            return None
        return (len(self._waiting) + 1) * self._turn_seconds / max(1.0, self.limit)

    def refuse_if_saturated(self) -> None:
        """OverloadedError when a turn asking now would be refused: said before its request is even read."""
        expected = self._expected_wait()
        if expected is not None and expected > self._settings.max_wait_seconds:
            raise self._shed(expected)

    async def take(self) -> TurnSlot:
        """A slot for one turn, now or within ``max_wait_seconds``; OverloadedError (503) when none is expected
        in time."""
        expected = self._expected_wait()
        if expected is None:
            return self.take_now()
        if expected > self._settings.max_wait_seconds:
            raise self._shed(expected)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        self._publish()
        try:
            async with asyncio.timeout(self._settings.max_wait_seconds):
                await waiter  # resolved by _wake, which counts the slot as this turn's
        except TimeoutError:
            if not (waiter.done() and not waiter.cancelled()):  # else a slot came just as the wait ran out: take it
                raise self._shed(self._turn_seconds / max(1.0, self.limit)) from None
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():  # handed a slot just as the request went away
                self._release(0.0, measured=False)
            raise
        finally:
            with contextlib.suppress(ValueError):
                self._waiting.remove(waiter)
            self._publish()
        return TurnSlot(self, time.perf_counter())

    def take_now(self) -> TurnSlot:
        """A slot at once, whatever the limit: a turn admitted earlier (a queued run starting), or admission off."""
        self.running += 1
        self._publish()
        return TurnSlot(self, time.perf_counter())

    def _release(self, seconds: float, *, measured: bool = True) -> None:
        self.running -= 1
        if measured:
            self._turn_seconds += _DURATION_SMOOTHING * (seconds - self._turn_seconds)
        self._wake()
        self._publish()

    def _wake(self) -> None:
        """Hand free slots to the turns waiting, oldest first."""
        while self._waiting and self.running < int(self.limit):
            waiter = self._waiting.popleft()
            if not waiter.done():
                self.running += 1
                waiter.set_result(None)

    def _shed(self, retry_after: float) -> OverloadedError:
        if self._metrics is not None:
            self._metrics.shed.labels("turn").inc()
        return OverloadedError("this server is answering as many messages as it can", retry_after)

    def observe_lag(self, lag_seconds: float, now: float | None = None) -> None:
        """One sample of the event loop's lag: the limit follows it (adaptive mode)."""
        self.lag_seconds += _LAG_SMOOTHING * (lag_seconds - self.lag_seconds)
        now = time.monotonic() if now is None else now
        if not self.adaptive or now - self._last_change < _ADAPT_EVERY_SECONDS:
            self._publish()
            return
        settings = self._settings
        target = settings.target_loop_lag_ms / 1000
        limit = self.limit
        if self.lag_seconds > target:
            # The further past the target, the harder the cut: a loop 10x late sheds half its turns at once.
            factor = max(0.5, min(0.9, target / self.lag_seconds))
            limit = max(float(settings.min_turns), self.limit * factor)
        elif self.lag_seconds < target / 2 and (self.running >= int(self.limit) or self._waiting):
            limit = min(float(settings.max_turns_ceiling), self.limit + max(1.0, self.limit * 0.1))
        if limit != self.limit:  # a step counts only when it moved the bound (not one held at its floor or ceiling)
            self.limit, self._last_change = limit, now
            self._wake()
        self._publish()

    def _publish(self) -> None:
        if self._metrics is not None:
            self._metrics.turn_limit.set(int(self.limit))
            self._metrics.turns_running.set(self.running)
            self._metrics.turns_waiting.set(len(self._waiting))
            self._metrics.loop_lag.set(self.lag_seconds)

    async def watch_the_loop(self) -> None:
        """Sample the event loop's lag for the worker's life: how late a timer of 100 ms fires."""
        loop = asyncio.get_running_loop()
        while True:
            asked = loop.time()
            await asyncio.sleep(_LAG_SAMPLE_SECONDS)
            self.observe_lag(max(0.0, loop.time() - asked - _LAG_SAMPLE_SECONDS))
