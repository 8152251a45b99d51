"""`agentctl usage`: turns, tokens, cost and errors over a window, by user, model or day, from the turn records (on
the database directly, no HTTP)."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from agentctl.cli.context import settings_of
from agentctl.cli.output import SinceOption, UntilOption, operator_database, stdout_console, usage_error
from agentctl.config import Settings

if TYPE_CHECKING:
    from server.chat.records import UsageGrouping, UsageLine
    from server.evaluation.window import Window

_GROUPINGS = ("user", "model", "day")


def usage(
    ctx: typer.Context,
    since: SinceOption = "7d",
    until: UntilOption = None,
    by: Annotated[str, typer.Option("--by", help="Group by user, model or day.")] = "user",
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of a table.")] = False,
) -> None:
    """Turns, input and output tokens, cost and errors of the window's turns, by user, model or day (UTC)."""
    from server.evaluation.window import WindowError, parse_window
    from server.observability.logging import configure_logging

    if by not in _GROUPINGS:
        usage_error(f"--by must be one of {', '.join(_GROUPINGS)}, not {by!r}")
    try:
        window = parse_window(since, until)
    except WindowError as error:
        usage_error(str(error))
    settings = settings_of(ctx)
    configure_logging(settings)
    grouping: UsageGrouping = "user" if by == "user" else "model" if by == "model" else "day"
    lines = asyncio.run(_report(settings, window, grouping))
    if as_json:
        document = {
            "since": window.since.isoformat(),
            "until": window.until.isoformat(),
            "by": by,
            "rows": [line.as_dict() for line in lines],
            "total": _total(lines).as_dict(),
        }
        typer.echo(json.dumps(document, indent=2))
        return
    stdout_console().print(_table(lines, by, window))


async def _report(settings: Settings, window: Window, by: UsageGrouping) -> list[UsageLine]:
    from server.chat.records import usage_report

    async with operator_database(settings):
        return await usage_report(since=window.since, until=window.until, by=by)


def _total(lines: list[UsageLine]) -> UsageLine:
    from server.chat.records import UsageLine

    return UsageLine(
        key="total",
        turns=sum(line.turns for line in lines),
        input_tokens=sum(line.input_tokens for line in lines),
        output_tokens=sum(line.output_tokens for line in lines),
        cost_usd=sum(line.cost_usd for line in lines),
        errors=sum(line.errors for line in lines),
    )


def _table(lines: list[UsageLine], by: str, window: Window) -> Table:
    table = Table(title=f"Usage by {by}, {window.describe()}", title_justify="left")
    table.add_column(by)
    for header in ("turns", "input tokens", "output tokens", "cost (USD)", "errors"):
        table.add_column(header, justify="right")
    if not lines:
        table.caption = "no turns in this window"
        return table
    for line in lines:
        table.add_row(*_cells(line))
    table.add_section()
    table.add_row(*_cells(_total(lines)), style="bold")
    return table


def _cells(line: UsageLine) -> list[str]:
    return [
        line.key,
        f"{line.turns:,}",
        f"{line.input_tokens:,}",
        f"{line.output_tokens:,}",
        f"{line.cost_usd:.4f}",
        f"{line.errors:,}",
    ]
