"""The time window of an evaluation: `--since yesterday`, `--since 2h`, `--since 2026-11-01`, `--until ...`.

All in UTC, like the timestamps of the turns: ``today`` and ``yesterday`` are midnights UTC, a bare date is its
midnight UTC, a date-time without an offset is UTC, and a duration counts back from now.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|min|h|d|w)$")
_UNIT_SECONDS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}


class WindowError(ValueError):
    """A --since/--until value that cannot be read, or a window that ends before it starts."""


@dataclass(frozen=True)
class Window:
    since: datetime
    until: datetime

    def describe(self) -> str:
        return f"{self.since:%Y-%m-%d %H:%M:%S} to {self.until:%Y-%m-%d %H:%M:%S} UTC"


def parse_moment(text: str, *, now: datetime) -> datetime:
    """A point in time from ``now``, ``today``, ``yesterday``, a duration ago (``2h``, ``30m``, ``7d``, ``1w``),
    an ISO date or an ISO date-time."""
    value = text.strip().lower()
    midnight = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if value == "now":
        return now
    if value == "today":
        return midnight
    if value == "yesterday":
        return midnight - timedelta(days=1)
    duration = _DURATION.match(value)
    if duration is not None:
        return now - timedelta(seconds=float(duration.group(1)) * _UNIT_SECONDS[duration.group(2)])
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise WindowError(
            f"{text!r} is not a time: write now, today, yesterday, a duration such as 2h, 30m or 7d, "
            "or a date such as 2026-11-01 (UTC)"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def parse_window(since: str, until: str | None, *, now: datetime | None = None) -> Window:
    """The window from ``since`` (inclusive) to ``until`` (exclusive; default now)."""
    now = now or datetime.now(UTC)
    start = parse_moment(since, now=now)
    end = parse_moment(until, now=now) if until is not None else now
    if start >= end:
        raise WindowError(
            f"the window is empty: --since ({start:%Y-%m-%d %H:%M:%S}) is not before --until ({end:%Y-%m-%d %H:%M:%S})"
        )
    return Window(start, end)
