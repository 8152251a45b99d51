"""`agentctl config`: what the effective settings are and where each came from."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Annotated

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from agentctl.cli.context import settings_of
from agentctl.cli.output import stdout_console
from agentctl.config import CONVENTIONAL_VARIABLES, Settings, SettingsError, iter_settings, variable_name

app = typer.Typer(help="Inspect the effective configuration.", no_args_is_help=True)


@app.command("show")
def show(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object instead of a table.")] = False,
) -> None:
    """Print every setting, secrets masked, with where its value came from."""
    settings = settings_of(ctx)
    rows = list(iter_settings(settings))
    if as_json:
        typer.echo(json.dumps({name: {"value": value, "source": source} for name, value, source, _ in rows}, indent=2))
        return
    table = Table(title=f"agentctl settings ({settings.env})", title_justify="left")
    table.add_column("setting", style="cyan", no_wrap=True)
    table.add_column("value", overflow="fold")
    table.add_column("source", style="dim")
    for name, value, source, _ in rows:
        table.add_row(name, value, source)
    Console(width=max(120, Console().width)).print(table)


@app.command("check")
def check(
    ctx: typer.Context,
    replicas: Annotated[int, typer.Option("--replicas", min=1, help="Replicas sharing the database.")] = 1,
    max_connections: Annotated[
        int | None,
        typer.Option(
            "--max-connections",
            min=1,
            help="The database's max_connections; unset: asked of DATABASE_URL's server (PostgreSQL's default, 100, "
            "for the embedded one).",
        ),
    ] = None,
) -> None:
    """Check the settings: production's rules, and that replicas x workers x pools fit the database's connections.
    Exit 1 when something does not hold."""
    from server.database.budget import DEFAULT_MAX_CONNECTIONS, DEFAULT_SUPERUSER_RESERVED, connection_budget

    settings = settings_of(ctx)
    limit, reserved, source = max_connections, DEFAULT_SUPERUSER_RESERVED, "--max-connections"
    if limit is None and settings.database.url is not None:
        limit, reserved = asyncio.run(_database_limits(settings.database.url.get_secret_value()))
        source = "the database"
    elif limit is None:
        limit, source = DEFAULT_MAX_CONNECTIONS, "the embedded PostgreSQL's default"
    budget = connection_budget(settings, replicas=replicas, max_connections=limit, superuser_reserved=reserved)
    table = Table(title=f"database connections (max_connections from {source})", title_justify="left")
    table.add_column("")
    table.add_column("connections", justify="right")
    for what, count in budget.lines():
        table.add_row(what, count)
    console = stdout_console()
    console.print(table)
    problems = settings.production_problems()
    if not budget.fits:
        problems.append(
            f"{budget.needed} connections needed, {budget.available} available: lower "
            f"{variable_name(('database', 'pool_max_size'))} to {budget.largest_pool_that_fits()} or less, run fewer "
            "replicas or workers, or raise the database's max_connections"
        )
    for problem in problems:
        typer.echo(f"agentctl: {problem}", err=True)
    if problems:
        raise typer.Exit(1)
    console.print(f"ok: {budget.needed} of {budget.available} connections with {replicas} replicas")


async def _database_limits(url: str) -> tuple[int, int]:
    import asyncpg

    try:
        connection = await asyncpg.connect(url, timeout=10)
    except (OSError, asyncpg.PostgresError) as error:
        raise SettingsError(
            [f"could not ask the database its max_connections ({type(error).__name__}); give --max-connections"]
        ) from None
    try:
        limit = int(await connection.fetchval("SHOW max_connections"))
        reserved = int(await connection.fetchval("SHOW superuser_reserved_connections"))
    finally:
        await connection.close()
    return limit, reserved


@app.command("reference")
def reference() -> None:
    """Print the configuration reference (Markdown) that the README carries."""
    typer.echo(configuration_reference())


def configuration_reference() -> str:
    """A Markdown table of every setting: its variable, default and help text, generated from Settings."""
    lines = ["| Variable | Default | Description |", "| --- | --- | --- |"]
    for path, default, description in _documented_fields(Settings, ()):
        conventional = [name for name, target in CONVENTIONAL_VARIABLES.items() if target == path]
        names = " / ".join(f"`{name}`" for name in [variable_name(path), *conventional])
        lines.append(f"| {names} | {default} | {description} |")
    return "\n".join(lines)


def _documented_fields(model: type[BaseModel], prefix: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], str, str]]:
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from _documented_fields(annotation, (*prefix, name))
            continue
        default = field.get_default(call_default_factory=True)
        shown = "(unset)" if default is None else ("(empty)" if default == [] else f"`{default}`")
        yield (*prefix, name), shown, field.description or ""
