from datetime import UTC, datetime, timedelta

import pytest

from server.evaluation.window import WindowError, parse_moment, parse_window

NOW = datetime(2026, 11, 24, 15, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("now", NOW),
        ("today", datetime(2026, 11, 24, tzinfo=UTC)),
        ("yesterday", datetime(2026, 11, 23, tzinfo=UTC)),
        ("Yesterday", datetime(2026, 11, 23, tzinfo=UTC)),
        ("2h", NOW - timedelta(hours=2)),
        ("30m", NOW - timedelta(minutes=30)),
        ("90s", NOW - timedelta(seconds=90)),
        ("1.5h", NOW - timedelta(minutes=90)),
        ("7d", NOW - timedelta(days=7)),
        ("1w", NOW - timedelta(weeks=1)),
        ("2026-11-01", datetime(2026, 11, 1, tzinfo=UTC)),
        ("2026-11-01T06:00", datetime(2026, 11, 1, 6, tzinfo=UTC)),
        ("2026-11-01T06:00+02:00", datetime(2026, 11, 1, 4, tzinfo=UTC)),
    ],
)
def test_moments(text: str, expected: datetime) -> None:
    assert parse_moment(text, now=NOW) == expected


@pytest.mark.parametrize("text", ["soon", "2 hours", "-2h", "2026-13-01", ""])
def test_unreadable_moments_say_what_is_accepted(text: str) -> None:
    with pytest.raises(WindowError, match="yesterday, a duration such as 2h"):
        parse_moment(text, now=NOW)


def test_window_defaults_to_now_and_must_not_be_empty() -> None:
    window = parse_window("yesterday", None, now=NOW)
    assert (window.since, window.until) == (datetime(2026, 11, 23, tzinfo=UTC), NOW)
    assert parse_window("2026-11-01", "2026-11-02", now=NOW).until == datetime(2026, 11, 2, tzinfo=UTC)
    with pytest.raises(WindowError, match="window is empty"):
        parse_window("2h", "3h", now=NOW)
    with pytest.raises(WindowError, match="window is empty"):
        parse_window("today", "today", now=NOW)
