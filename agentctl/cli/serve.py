"""`agentctl serve`: the API under uvicorn, on the embedded database unless DATABASE_URL says otherwise."""

from __future__ import annotations

import asyncio
import shutil
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

import agentctl
from agentctl import __version__
from agentctl.cli.context import CliState, settings_of, state_of
from agentctl.config import (
    Settings,
    SettingsError,
    export_for_child_processes,
    prepare_metrics_directory,
    redact_url,
)

if TYPE_CHECKING:
    from server.llm.registry import ModelRegistry

APP_FACTORY = "server.app:create_app_from_environment"


def serve(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option("--host", help="Bind address (AGENTCTL_SERVER__HOST).")] = None,
    port: Annotated[int | None, typer.Option("--port", help="Port (AGENTCTL_SERVER__PORT).")] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", help="Worker processes (AGENTCTL_SERVER__WORKERS).")
    ] = None,
    reload: Annotated[
        bool | None, typer.Option("--reload/--no-reload", help="Restart on code changes; one worker only.")
    ] = None,
) -> None:
    """Serve the API. SIGTERM drains in-flight requests, closes pools and exits 0."""
    state = state_of(ctx)
    for path, value, flag in (
        ("server.host", host, "--host"),
        ("server.port", port, "--port"),
        ("server.workers", workers, "--workers"),
        ("server.reload", reload, "--reload"),
    ):
        state.add_flag(path, value, flag)
    settings = settings_of(ctx)
    # First, before anything imports prometheus-client: one worker or many, /metrics speaks for all of them.
    metrics_directory = prepare_metrics_directory(settings)
    try:
        _serve(state, settings)
    finally:
        shutil.rmtree(metrics_directory, ignore_errors=True)


def _serve(state: CliState, settings: Settings) -> None:
    from server import serving
    from server.database.embedded import database_url
    from server.llm.registry import ModelRegistry
    from server.observability.logging import configure_logging

    problems = settings.production_problems()
    if settings.server.reload and settings.server.workers > 1:
        problems.append("--reload restarts a single process: use it without --workers")
    if problems:
        raise SettingsError(problems)
    configure_logging(settings)
    models = ModelRegistry.from_settings(settings.llm)  # no model at all: one line saying how to configure one

    with database_url(settings) as url:
        asyncio.run(_prepare_schema(url, settings))
        # Workers are fresh processes that resolve their settings again: hand them the flags given here and,
        # for the embedded database, the URL of the one server this process started for all of them.
        exported = dict(state.overrides)
        if settings.uses_embedded_database:
            exported["database"] = {"url": url}
        export_for_child_processes(exported)
        _print_banner(settings, url, models)
        _exit_normally_after_drain()
        serving.run(
            serving.uvicorn_config(
                settings,
                APP_FACTORY,
                reload=settings.server.reload,
                reload_dirs=_source_dirs() if settings.server.reload else None,
            )
        )


def _source_dirs() -> list[str]:
    """What --reload watches: agentctl's own code and prompts, wherever the command was started from."""
    import server
    from agentctl.resources import prompts_dir

    return [str(Path(agentctl.__file__).parent), str(Path(server.__file__).parent), str(prompts_dir())]


def _exit_normally_after_drain() -> None:
    """Uvicorn drains on SIGTERM/SIGINT, then re-raises the signal to the handler it found installed.

    By then the stop is complete, so the handler installed here lets `serve` return and exit 0 (after the
    embedded database stops) instead of dying by the signal.
    """
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop_signal, lambda signum, frame: None)


async def _prepare_schema(url: str, settings: Settings) -> None:
    """The embedded default migrates itself; an external database must already be migrated by the operator."""
    from server.schema import open_database, schema_action_for

    async with open_database(url, settings, schema=schema_action_for(settings)):
        pass


def _print_banner(settings: Settings, url: str, models: ModelRegistry) -> None:
    server = settings.server
    base = f"http://{server.host}:{server.port}"
    if settings.uses_embedded_database:
        database = f"embedded PostgreSQL 16 + pgvector in {settings.data_dir / 'postgres'}"
    else:
        database = redact_url(url)
    workers = f"{server.workers} worker{'s' if server.workers != 1 else ''}"
    if settings.effective_log_format == "json":  # collectors read every line as JSON: the banner is a log line
        from loguru import logger

        logger.bind(listening=base, workers=server.workers, database=database).info(
            "agentctl {} ({}) listening on {} ({}); model {}",
            __version__,
            settings.env,
            base,
            workers,
            models.describe_role("chat"),
        )
        return
    console = Console(highlight=False)
    console.print(f"[bold]agentctl {__version__}[/bold] ({settings.env})")
    console.print(f"  listening  {base}  ({workers}{', reload' if server.reload else ''})")
    console.print(f"  database   {database}")
    console.print(f"  model      {models.describe_role('chat')}")
    console.print(f"  API docs   {base}/schema")
