"""`agentctl migrate`: bring the database schema up to date, or say what is pending."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from agentctl.cli.context import settings_of
from agentctl.config import Settings


def migrate(
    ctx: typer.Context,
    check: Annotated[
        bool, typer.Option("--check", help="Change nothing; list pending steps and exit 1 if there are any.")
    ] = False,
) -> None:
    """Create the vector extension, apply migrations and set up the agent's checkpoint tables (idempotent)."""
    from server.database.embedded import database_url
    from server.observability.logging import configure_logging

    settings = settings_of(ctx)
    configure_logging(settings)
    with database_url(settings) as url:
        steps = asyncio.run(_pending(url, settings) if check else _apply(url, settings))
    if check:
        if steps:
            typer.echo(f"{len(steps)} pending:")
            for step in steps:
                typer.echo(f"  {step}")
            raise typer.Exit(1)
        typer.echo("schema is current")
        return
    for step in steps:
        typer.echo(f"applied {step}")
    typer.echo("schema is current" + ("" if steps else " (nothing to do)"))


async def _pending(url: str, settings: Settings) -> list[str]:
    from server.memory.collection import memory_dimensions
    from server.schema import open_database, pending_work

    async with open_database(url, settings, schema="as_is") as database:
        return (await pending_work(database, memory_dimensions(settings))).describe()


async def _apply(url: str, settings: Settings) -> list[str]:
    from server.schema import open_database

    async with open_database(url, settings, schema="migrate") as database:
        return database.schema_changes
