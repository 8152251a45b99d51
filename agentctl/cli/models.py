"""`agentctl models`: the model registry as configured, and whether each endpoint answers."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from agentctl.cli.context import settings_of

if TYPE_CHECKING:
    from server.llm.registry import ModelRegistry, RegisteredModel


def models(
    ctx: typer.Context,
    check: Annotated[
        bool, typer.Option("--check", help="Send each model a one-token request; exit 1 if any fails.")
    ] = False,
) -> None:
    """List the declared models, their roles and prices; --check calls each endpoint."""
    from server.llm.registry import ModelRegistry

    settings = settings_of(ctx)
    registry = ModelRegistry.from_settings(settings.llm)
    roles_of: dict[str, list[str]] = {}
    for role, chain in registry.roles.items():
        for position, name in enumerate(chain):
            roles_of.setdefault(name, []).append(role if position == 0 else f"{role} (fallback {position})")
    results = asyncio.run(_check_all(registry)) if check else {}

    table = Table(title="models", title_justify="left")
    for column in ("name", "provider", "model", "endpoint", "roles", "context", "$/M in", "$/M out"):
        table.add_column(column)
    if check:
        table.add_column("check")
    for name, model in registry.models.items():
        spec = model.spec
        row = [
            name,
            spec.provider,
            spec.model_id,
            spec.base_url or ("in-process" if spec.provider == "local" else "OpenAI"),
            ", ".join(roles_of.get(name, [])) or "-",
            str(spec.context_window),
            f"{spec.price_input_per_million:g}",
            f"{spec.price_output_per_million:g}",
        ]
        if check:
            row.append(results[name])
        table.add_row(*row)
    Console(width=max(140, Console().width)).print(table)
    if check and any(not result.startswith("ok") for result in results.values()):
        raise typer.Exit(1)


async def _check_all(registry: ModelRegistry) -> dict[str, str]:
    names = list(registry.models)
    try:
        outcomes = await asyncio.gather(*(_check_one(registry.models[name]) for name in names))
    finally:
        await registry.aclose()
    return dict(zip(names, outcomes, strict=True))


async def _check_one(model: RegisteredModel) -> str:
    from langchain_core.messages import HumanMessage

    started = time.perf_counter()
    try:
        async with asyncio.timeout(model.spec.timeout_seconds):
            if model.embeddings is not None:
                await model.embeddings.aembed_query("ping")
            elif model.chat is not None:
                chat = model.chat.bind(max_tokens=1) if model.spec.provider == "openai" else model.chat
                await chat.ainvoke([HumanMessage("ping")])
    except Exception as error:  # every failure is an answer here: print it and go on with the others
        return f"FAIL {type(error).__name__}: {str(error)[:80]}"
    return f"ok {1000 * (time.perf_counter() - started):.0f} ms"
