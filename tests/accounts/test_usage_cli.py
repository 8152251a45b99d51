"""`agentctl usage` through Typer's CliRunner on the test database: turn records of a window of their own, long ago,
grouped by user, model and day."""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from typer.testing import CliRunner, Result

from agentctl.cli import app

_DAYS = itertools.count()


def _usage(database_url: str, data_dir: Path, *args: str) -> Result:
    return CliRunner().invoke(app, ["--data-dir", str(data_dir), "usage", *args], env={"DATABASE_URL": database_url})


async def _record_turns(database_url: str, start: datetime) -> list[str]:
    """Two users' turns over two days from ``start``: (user, model, day, tokens in, tokens out, cost, status)."""
    connection = await asyncpg.connect(database_url)
    try:
        users = [uuid.uuid4(), uuid.uuid4()]
        emails = [f"usage-{user.hex[:10]}@example.com" for user in users]
        for user, email in zip(users, emails, strict=True):
            await connection.execute(
                "INSERT INTO users (id, email, password_hash, created_at) VALUES ($1, $2, 'x', now())", user, email
            )
        turns = [
            (users[0], "big-model", 0, 100, 10, 0.5, "done"),
            (users[0], "big-model", 0, 200, 20, 1.0, "error"),
            (users[0], "small-model", 1, 50, 5, 0.01, "done"),
            (users[1], "small-model", 1, 10, 1, 0.002, "done"),
            (users[1], None, 1, 0, 0, 0.0, "error"),  # failed before any model answered
        ]
        await connection.executemany(
            "INSERT INTO chat_turns (id, owner, input, output, status, model, input_tokens, output_tokens, cost_usd, "
            "created_at, tool_calls, fallbacks) VALUES ($1, $2, 'q', 'a', $3, $4, $5, $6, $7, $8, '[]', '[]')",
            [
                (uuid.uuid4(), user, status, model, tokens_in, tokens_out, cost, start + timedelta(days=day, hours=1))
                for user, model, day, tokens_in, tokens_out, cost, status in turns
            ],
        )
        return emails
    finally:
        await connection.close()


@pytest.fixture
def window(migrated_database_url: str) -> tuple[datetime, list[str]]:
    """A window of two days, years ago, that only this test writes turns into; the two users' emails."""
    start = datetime(1999, 1, 1, tzinfo=UTC) + timedelta(days=3 * next(_DAYS) + uuid.uuid4().int % 3000 * 3)
    return start, asyncio.run(_record_turns(migrated_database_url, start))


def _rows(result: Result) -> dict[str, list]:
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    return {
        row["key"]: [row["turns"], row["input_tokens"], row["output_tokens"], round(row["cost_usd"], 6), row["errors"]]
        for row in [*document["rows"], document["total"]]
    }


def test_usage_by_user_model_and_day(
    window: tuple[datetime, list[str]], migrated_database_url: str, tmp_path: Path, workdir: Path
) -> None:
    start, (first, second) = window
    span = ["--since", start.date().isoformat(), "--until", (start + timedelta(days=2)).date().isoformat(), "--json"]

    by_user = _rows(_usage(migrated_database_url, tmp_path, *span, "--by", "user"))
    assert by_user == {
        first: [3, 350, 35, 1.51, 1],
        second: [2, 10, 1, 0.002, 1],
        "total": [5, 360, 36, 1.512, 2],
    }
    by_model = _rows(_usage(migrated_database_url, tmp_path, *span, "--by", "model"))
    assert by_model == {
        "big-model": [2, 300, 30, 1.5, 1],
        "small-model": [2, 60, 6, 0.012, 0],
        "(none)": [1, 0, 0, 0.0, 1],
        "total": [5, 360, 36, 1.512, 2],
    }
    days = [start.date().isoformat(), (start + timedelta(days=1)).date().isoformat()]
    by_day = _rows(_usage(migrated_database_url, tmp_path, *span, "--by", "day"))
    assert list(by_day) == [*days, "total"]
    assert by_day[days[0]] == [2, 300, 30, 1.5, 1]

    # The window is half-open: only the first day.
    first_day = _rows(
        _usage(migrated_database_url, tmp_path, "--since", days[0], "--until", days[1], "--by", "user", "--json")
    )
    assert first_day == {first: [2, 300, 30, 1.5, 1], "total": [2, 300, 30, 1.5, 1]}

    table = _usage(migrated_database_url, tmp_path, *span[:-1], "--by", "model")
    assert table.exit_code == 0, table.output
    for text in ("Usage by model", "input tokens", "output tokens", "cost (USD)", "errors", "big-model", "total"):
        assert text in table.stdout
    empty = _usage(migrated_database_url, tmp_path, "--since", "1990-01-01", "--until", "1990-01-02")
    assert empty.exit_code == 0, empty.output
    assert "no turns in this window" in empty.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "last tuesday"], "'last tuesday' is not a time"),
        (["--since", "2h", "--until", "3h"], "the window is empty"),
        (["--by", "week"], "--by must be one of user, model, day, not 'week'"),
        (["--top", "3"], "No such option: --top"),
    ],
)
def test_bad_options_are_one_line_and_exit_2(
    migrated_database_url: str, tmp_path: Path, workdir: Path, args: list[str], message: str
) -> None:
    result = _usage(migrated_database_url, tmp_path, *args)
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"agentctl: {message}")
    assert result.output.count("\n") == 1
