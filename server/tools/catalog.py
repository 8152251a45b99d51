"""Every tool the agent has, wherever it comes from (built in, or an MCP server), with the rules it runs under:
its policy (allow, approve, deny), its timeout and the size of result the model reads.

The model is offered the tools whose policy is not ``deny``; on a surface where nobody can answer an approval
(the OpenAI-compatible API), only those that run without one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Literal

from langchain_core.tools import BaseTool
from loguru import logger

from agentctl.config import AgentSettings, ToolPolicy

# Marks a tool that may pause the graph to ask the user (ask_human); it runs before the others of its step.
INTERRUPTS_METADATA_KEY = "interrupts"
# The model sees an MCP tool as <server>__<tool>; no built-in name has a double underscore, so none is shadowed.
NAMESPACE_SEPARATOR = "__"
# OpenAI's rule for function names, which every OpenAI-compatible endpoint enforces.
MAX_TOOL_NAME_CHARS = 64
BUILT_IN = "built-in"


@dataclass(frozen=True)
class ToolEntry:
    """One tool as the agent runs it."""

    tool: BaseTool  # named as the model sees it
    source: Literal["built-in", "mcp"]
    server: str | None
    policy: ToolPolicy
    timeout_seconds: float
    max_output_chars: int

    @property
    def name(self) -> str:
        return self.tool.name

    @property
    def interrupts(self) -> bool:
        return bool((self.tool.metadata or {}).get(INTERRUPTS_METADATA_KEY))


def qualified_name(server: str, tool: str) -> str:
    return f"{server}{NAMESPACE_SEPARATOR}{tool}"


@dataclass(frozen=True)
class ToolRules:
    policy: ToolPolicy
    timeout_seconds: float
    max_output_chars: int


def rules_for(settings: AgentSettings, name: str, server: str | None, *, interrupts: bool = False) -> ToolRules:
    """A tool's rules: its own (agent.tools.<name>) over its server's, over the built-ins' defaults (allow)."""
    rule = settings.tools.get(name)
    spec = settings.mcp_servers.get(server) if server is not None else None
    policy: ToolPolicy = (rule.policy if rule else None) or (spec.policy if spec else "allow")
    if policy == "approve" and interrupts:
        logger.warning("tool {}: it asks the user itself; its policy approve is taken as allow", name)
        policy = "allow"
    return ToolRules(
        policy=policy,
        timeout_seconds=(rule.timeout_seconds if rule else None)
        or (spec.timeout_seconds if spec else settings.tool_timeout_seconds),
        max_output_chars=(rule.max_output_chars if rule else None)
        or (spec.max_output_chars if spec else settings.tool_max_output_chars),
    )


class ToolCatalog:
    """The tools of one worker: the built-ins, and each connected MCP server's (replaced when it reconnects, gone
    while it is down)."""

    def __init__(
        self,
        settings: AgentSettings,
        built_ins: Iterable[BaseTool],
        *,
        adapt: Callable[[ToolEntry], ToolEntry] | None = None,
    ) -> None:
        self._settings = settings
        self._adapt = adapt  # a replay swaps tools with side effects for stubs here, wherever they come from
        self._built_ins = [self._entry(tool, source="built-in", server=None) for tool in built_ins]
        self._servers: dict[str, list[ToolEntry]] = {}
        self._entries: dict[str, ToolEntry] = {}
        self._offered: dict[bool, list[BaseTool]] = {}
        self._rebuild()

    def _entry(self, tool: BaseTool, *, source: Literal["built-in", "mcp"], server: str | None) -> ToolEntry:
        interrupts = bool((tool.metadata or {}).get(INTERRUPTS_METADATA_KEY))
        rules = rules_for(self._settings, tool.name, server, interrupts=interrupts)
        entry = ToolEntry(tool=tool, source=source, server=server, **asdict(rules))
        return self._adapt(entry) if self._adapt is not None else entry

    def set_server_tools(self, server: str, tools: Iterable[BaseTool]) -> list[str]:
        """Make ``tools`` (already named <server>__<tool>) the server's; returns the names of those left out (a
        name too long for the model's API)."""
        kept, skipped = [], []
        for tool in tools:
            if len(tool.name) > MAX_TOOL_NAME_CHARS:
                skipped.append(tool.name)
                continue
            kept.append(self._entry(tool, source="mcp", server=server))
        self._servers[server] = kept
        self._rebuild()
        return skipped

    def drop_server_tools(self, server: str) -> None:
        """The server is down: its tools are not offered until it is back."""
        if self._servers.pop(server, None) is not None:
            self._rebuild()

    def _rebuild(self) -> None:
        entries = [*self._built_ins, *(entry for server in sorted(self._servers) for entry in self._servers[server])]
        self._entries = {entry.name: entry for entry in entries}
        # New lists on every change (the model binding caches per tool set), none per turn.
        self._offered = {
            True: [entry.tool for entry in entries if entry.policy != "deny"],
            False: [entry.tool for entry in entries if entry.policy == "allow"],
        }

    def entry(self, name: str) -> ToolEntry | None:
        """The tool the model may call by that name (a denied one included: the runner refuses it)."""
        return self._entries.get(name)

    def server_down_for(self, name: str) -> str | None:
        """The configured MCP server a tool name belongs to, when that server's tools are out (it is down)."""
        server = name.split(NAMESPACE_SEPARATOR, 1)[0] if NAMESPACE_SEPARATOR in name else None
        if server is None or server not in self._settings.mcp_servers or server in self._servers:
            return None
        return server

    def offered(self, *, approvals: bool) -> list[BaseTool]:
        """What the model is offered: every tool not denied, or with ``approvals`` false (nobody can answer one),
        only those that need no approval."""
        return self._offered[approvals]
