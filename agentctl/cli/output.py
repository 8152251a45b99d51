"""What the operator commands share: their usage errors, their tables' console, and the database they open."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console

from agentctl.config import Settings

if TYPE_CHECKING:
    from server.database.engine import Database


# A window of time, as server.evaluation.window reads it (`agentctl eval`, `agentctl usage`).
SinceOption = Annotated[
    str, typer.Option("--since", help="Start of the window: yesterday, today, 2h, 30m, 7d, 2026-11-01 (UTC).")
]
UntilOption = Annotated[
    str | None, typer.Option("--until", help="End of the window (same forms), exclusive; default now.")
]


def usage_error(message: str) -> NoReturn:
    """A usage problem (a bad value, a missing option): one plain line and exit 2."""
    typer.echo(f"agentctl: {message}", err=True)
    raise typer.Exit(2)


def stdout_console() -> Console:
    """Tables as wide as they need when stdout is a file or a CI log (rich would assume 80 columns)."""
    console = Console()
    return console if console.is_terminal else Console(width=160)


@asynccontextmanager
async def operator_database(settings: Settings) -> AsyncIterator[Database]:
    """The database the servers use (the embedded one started if there is no DATABASE_URL), its schema current."""
    from server.database.embedded import database_url
    from server.schema import open_database

    async with AsyncExitStack() as stack:
        # Starting the embedded PostgreSQL blocks: off the event loop.
        url = await asyncio.to_thread(stack.enter_context, database_url(settings))
        yield await stack.enter_async_context(open_database(url, settings, schema="require_current"))
