"""Remembering, for a moment, that a shared dependency is down.

When Redis (say) stops answering, every request would otherwise wait to find out again, each up to its socket
timeout: one failure is enough to go straight to the fallback for the next few seconds, then try again.
"""

from __future__ import annotations

import time
from collections.abc import Callable


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
