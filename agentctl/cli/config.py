"""`agentctl config`: what the effective settings are and where each came from."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Annotated

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from agentctl.cli.context import settings_of
from agentctl.config import CONVENTIONAL_VARIABLES, Settings, iter_settings, variable_name

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
