"""`agentctl retention run`: the server's retention sweep, now, from the command line (on the database directly)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Annotated

import typer

from agentctl.cli.context import settings_of

if TYPE_CHECKING:
    from agentctl.config import Settings
    from server.retention.service import SweepReport

app = typer.Typer(help="What the database keeps (AGENTCTL_RETENTION__*).", no_args_is_help=True)


@app.command("run")
def run(
    ctx: typer.Context,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count what would be removed; remove nothing.")] = False,
) -> None:
    """Remove what the retention settings no longer keep (idle sessions, checkpoints beyond what branches and
    recent edits need, old turn records, expired run events, old memories) and print how many rows of each."""
    from rich.table import Table

    from agentctl.cli.output import stdout_console

    settings = settings_of(ctx)
    report = asyncio.run(_sweep(settings, dry_run=dry_run))
    if report.skipped:
        typer.echo("agentctl: another replica is sweeping now; try again when it is done", err=True)
        raise typer.Exit(1)
    table = Table(title="would remove (dry run)" if dry_run else "removed", title_justify="left")
    table.add_column("rows")
    table.add_column("count", justify="right")
    for kind, count in report.removed.items():
        table.add_row(kind.replace("_", " "), f"{count:,}")
    stdout_console().print(table)
    typer.echo(
        f"{report.threads_pruned} conversation(s) pruned of old checkpoints" if not dry_run else "nothing removed"
    )


async def _sweep(settings: Settings, *, dry_run: bool) -> SweepReport:
    from agentctl.cli.output import operator_database
    from server.memory.service import history_file
    from server.retention.service import RetentionSweeper

    async with operator_database(settings) as database:
        sweeper = RetentionSweeper(
            database,
            settings.retention,
            events_ttl_seconds=settings.chat.run_events_ttl_seconds,
            history_path=history_file(settings),
        )
        return await sweeper.sweep(dry_run=dry_run, every_thread=True)
