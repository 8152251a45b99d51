"""What a dependency that fails again and again does to the next call and to the log.

When Redis (say) stops answering, every request would otherwise wait to find out again, each up to its socket
timeout: one failure is enough to go straight to the fallback for the next few seconds, then try again (Outage).
And a failure that every request meets is written to the log once a minute, not once per request
(RateLimitedLog).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from loguru import logger

_REPEAT_SECONDS = 60.0


class Outage:
    def __init__(self, retry_after_seconds: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._retry_after = retry_after_seconds
        self._clock = clock
        self._down_until = 0.0

    @property
    def ongoing(self) -> bool:
        """Whether the dependency failed within the last few seconds: use the fallback without asking it."""
        return self._clock() < self._down_until

    def began(self) -> None:
        self._down_until = self._clock() + self._retry_after

    def ended(self) -> None:
        self._down_until = 0.0


class RateLimitedLog:
    """A recurring problem's warning, at most once per ``every_seconds`` per kind, saying how many were left out
    since: a dependency failing for every request must not write a line for every request (its counter in
    /metrics says how often)."""

    def __init__(self, every_seconds: float = _REPEAT_SECONDS, clock: Any = time.monotonic) -> None:
        self._every = every_seconds
        self._clock = clock
        self._last: dict[str, float] = {}
        self._left_out: dict[str, int] = {}
        self._lock = threading.Lock()  # library loggers call from their worker threads too

    def allows(self, kind: str) -> int | None:
        """None when a line of this kind was written recently (counted); else how many were left out before."""
        now = self._clock()
        with self._lock:
            last = self._last.get(kind)
            if last is not None and now - last < self._every:
                self._left_out[kind] = self._left_out.get(kind, 0) + 1
                return None
            self._last[kind] = now
            return self._left_out.pop(kind, 0)

    def warning(self, kind: str, message: str, *args: Any) -> None:
        left_out = self.allows(kind)
        if left_out is None:
            return
        suffix = f" ({left_out} more like it in the last {self._every:g} s)" if left_out else ""
        logger.opt(depth=1).warning(message + suffix, *args)
