"""`agentctl tools`: every tool the agent may be offered, where it comes from, its policy and bounds; --check
asks each MCP server for its tools."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from agentctl.cli.context import settings_of

if TYPE_CHECKING:
    from agentctl.config import AgentSettings
    from server.tools.mcp import ServerCheck


def tools(
    ctx: typer.Context,
    check: Annotated[
        bool,
        typer.Option("--check", help="Start or call each MCP server and list its tools; exit 1 if one fails."),
    ] = False,
) -> None:
    """List the agent's tools: built-in ones and those of the MCP servers, with policy, timeout and health."""
    from server.agent.tools import build_tools
    from server.tools.catalog import BUILT_IN, NAMESPACE_SEPARATOR, qualified_name, rules_for

    settings = settings_of(ctx).agent
    table = Table(title="tools", title_justify="left")
    for column in ("tool", "source", "policy", "timeout", "max output", "health"):
        table.add_column(column)

    def add(name: str, source: str, server: str | None, health: str, *, interrupts: bool = False) -> None:
        rules = rules_for(settings, name, server, interrupts=interrupts)
        row = [name, source, rules.policy, f"{rules.timeout_seconds:g} s", f"{rules.max_output_chars:,}", health]
        table.add_row(*(Text(cell) for cell in row))  # names and errors come from servers: never markup

    for tool in build_tools(settings):
        interrupts = bool((tool.metadata or {}).get("interrupts"))
        add(tool.name, BUILT_IN, None, "-" if interrupts else "ok", interrupts=interrupts)
    checks = asyncio.run(_check_servers(settings)) if check else {}
    failed = False
    seen: set[str] = {tool.name for tool in build_tools(settings)}
    for server, spec in settings.mcp_servers.items():
        source = f"mcp {server} ({'stdio' if spec.transport == 'stdio' else 'http'})"
        if not spec.enabled:
            add(qualified_name(server, "*"), source, server, "disabled")
            continue
        found = checks.get(server)
        if found is None:
            add(qualified_name(server, "*"), source, server, "not checked (--check lists its tools)")
            for name in settings.tools:
                if name.startswith(server + NAMESPACE_SEPARATOR):
                    add(name, source, server, "not checked")
            continue
        if found.error is not None:
            failed = True
            add(qualified_name(server, "*"), source, server, f"FAIL {found.error}")
            continue
        for mcp_tool in found.tools:
            name = qualified_name(server, mcp_tool.name)
            seen.add(name)
            add(name, source, server, f"ok {1000 * found.seconds:.0f} ms")
    Console(width=max(120, Console().width)).print(table)
    if check:
        for name in sorted(set(settings.tools) - seen):
            owner = name.split(NAMESPACE_SEPARATOR, 1)[0] if NAMESPACE_SEPARATOR in name else None
            if owner is None or owner not in checks or checks[owner].error is None:
                typer.echo(f"warning: the rule for tool {name} matches no tool", err=True)
    if failed:
        raise typer.Exit(1)


async def _check_servers(settings: AgentSettings) -> dict[str, ServerCheck]:
    from server.tools.mcp import check_server

    enabled = {name: spec for name, spec in settings.mcp_servers.items() if spec.enabled}
    results = await asyncio.gather(*(check_server(name, spec) for name, spec in enabled.items()))
    return dict(zip(enabled, results, strict=True))
