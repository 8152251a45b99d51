"""MCP servers as sources of tools: connected when a worker starts, supervised while it runs.

Each server has a task of its own that connects (starting the process of a stdio server), lists its tools
(converted by langchain-mcp-adapters) into the catalog, then pings it; when the server stops answering (its
process died, the network went) its tools leave the catalog and it is restarted with exponential backoff. A
server that cannot start is a warning and a degraded component of /health/ready: the agent runs without it.

The tools the model calls reach the server's *current* session through a stand-in session, so a restart needs no
new tools in the graph, and a call while the server is down answers with a readable error at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from langchain_core.tools import BaseTool
from langchain_mcp_adapters.sessions import Connection, create_session
from langchain_mcp_adapters.tools import convert_mcp_tool_to_langchain_tool
from loguru import logger
from mcp import ClientSession
from mcp.types import Tool as McpTool

from agentctl.config import AgentSettings, McpServerSettings
from server.health.service import CheckResult
from server.observability.metrics import ToolMetrics
from server.tools.catalog import ToolCatalog, qualified_name
from server.tools.runner import ServerUnavailableError, describe_error

ServerState = Literal["starting", "up", "down"]
_FIRST_RESTART_SECONDS = 0.5
_PING_TIMEOUT_SECONDS = 5.0


def connection_of(spec: McpServerSettings) -> Connection:
    """The adapters' connection settings for one server, secrets revealed (they go to the server, nowhere else)."""
    if spec.command is not None:
        return {
            "transport": "stdio",
            "command": spec.command,
            "args": list(spec.args),
            # The MCP SDK adds the safe defaults (PATH, HOME...) to what is given here.
            "env": {key: value.get_secret_value() for key, value in spec.env.items()},
            "cwd": str(spec.cwd) if spec.cwd is not None else None,
        }
    assert spec.url is not None
    return {
        "transport": "streamable_http",
        "url": spec.url,
        "headers": {key: value.get_secret_value() for key, value in spec.headers.items()},
        "timeout": spec.connect_timeout_seconds,
    }


@asynccontextmanager
async def connected(spec: McpServerSettings) -> AsyncIterator[tuple[ClientSession, list[McpTool]]]:
    """An initialized session to the server and its tools; the server's start and listing bounded by its connect
    timeout. Leaving it closes the session (and stops a stdio server's process)."""
    async with AsyncExitStack() as stack:
        async with asyncio.timeout(spec.connect_timeout_seconds):
            session = await stack.enter_async_context(create_session(connection_of(spec)))
            await session.initialize()
            tools = await _all_tools(session)
        yield session, tools


async def _all_tools(session: ClientSession) -> list[McpTool]:
    tools: list[McpTool] = []
    cursor: str | None = None
    for _page in range(100):  # a server that pages forever is not waited for
        listing = await session.list_tools(cursor=cursor) if cursor else await session.list_tools()
        tools.extend(listing.tools)
        cursor = listing.nextCursor
        if not cursor:
            break
    return tools


class _CurrentSession:
    """Stands in for the server's session in its tools: each call goes to the session of the moment."""

    def __init__(self, server: McpServer) -> None:
        self._server = server

    async def call_tool(self, name: str, arguments: dict[str, Any] | None = None, **options: Any) -> Any:
        session = self._server.session
        if session is None:
            raise ServerUnavailableError(
                f"the MCP server {self._server.name} is not available right now ({self._server.error or 'starting'})"
            )
        try:
            return await session.call_tool(name, arguments, **options)
        except Exception:
            self._server.check_soon()  # a broken connection is noticed now, not at the next ping
            raise


@dataclass
class McpServer:
    """One MCP server of this worker and how it is doing."""

    name: str
    spec: McpServerSettings
    catalog: ToolCatalog
    metrics: ToolMetrics | None
    restart_max_seconds: float
    ping_seconds: float
    state: ServerState = "starting"
    error: str | None = None
    session: ClientSession | None = None
    tool_names: list[str] = field(default_factory=list)
    restarts: int = 0
    first_attempt: asyncio.Event = field(default_factory=asyncio.Event)
    _check_now: asyncio.Event = field(default_factory=asyncio.Event)

    def check_soon(self) -> None:
        self._check_now.set()

    async def supervise(self) -> None:
        """Connect, serve, and reconnect with backoff, until cancelled."""
        delay = _FIRST_RESTART_SECONDS
        while True:
            try:
                async with connected(self.spec) as (session, tools):
                    self._up(session, tools)
                    delay = _FIRST_RESTART_SECONDS
                    await self._until_unresponsive(session)
            except asyncio.CancelledError:
                self._down("stopped with the worker")
                raise
            except Exception as error:
                if self.state != "down":  # the session failed while it was being closed, not before
                    self._down(_reason(error))
            self.first_attempt.set()
            logger.warning("MCP server {} is down ({}); restarting in {:g} s", self.name, self.error, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.restart_max_seconds)
            self.restarts += 1
            if self.metrics is not None:
                self.metrics.mcp_restarts.labels(self.name).inc()

    def _up(self, session: ClientSession, tools: list[McpTool]) -> None:
        stand_in = cast(ClientSession, _CurrentSession(self))
        converted: list[BaseTool] = []
        for tool in tools:
            lc_tool = convert_mcp_tool_to_langchain_tool(stand_in, tool, server_name=self.name)
            lc_tool.name = qualified_name(self.name, tool.name)
            converted.append(lc_tool)
        skipped = self.catalog.set_server_tools(self.name, converted)
        for name in skipped:
            logger.warning("MCP server {}: tool {} left out: its name is longer than 64 characters", self.name, name)
        self.session, self.state, self.error = session, "up", None
        self.tool_names = [tool.name for tool in converted if tool.name not in skipped]
        self.first_attempt.set()
        if self.metrics is not None:
            self.metrics.mcp_server_up.labels(self.name).set(1)
        logger.info("MCP server {} is up with {} tools", self.name, len(self.tool_names))

    def _down(self, error: str) -> None:
        self.catalog.drop_server_tools(self.name)
        self.session, self.state, self.error = None, "down", error
        if self.metrics is not None:
            self.metrics.mcp_server_up.labels(self.name).set(0)

    async def _until_unresponsive(self, session: ClientSession) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.ping_seconds):
                    await self._check_now.wait()
            self._check_now.clear()
            try:
                async with asyncio.timeout(_PING_TIMEOUT_SECONDS):
                    await session.send_ping()
            except Exception as error:
                # Down before the session closes (a stdio server may take seconds to stop): no call goes to it.
                self._down(f"stopped answering: {_reason(error)}")
                return

    def report(self) -> dict[str, object]:
        item: dict[str, object] = {"state": self.state, "transport": self.spec.transport, "tools": len(self.tool_names)}
        if self.error and self.state != "up":
            item["error"] = self.error
        if self.restarts:
            item["restarts"] = self.restarts
        return item


def _reason(error: BaseException) -> str:
    """The first real cause of a failure that the SDK wraps in exception groups."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    if isinstance(error, TimeoutError):
        return "no answer within its connect timeout"
    return describe_error(error)


class McpServers:
    """This worker's MCP servers."""

    def __init__(self, settings: AgentSettings, catalog: ToolCatalog, metrics: ToolMetrics | None) -> None:
        self._settings = settings
        self.servers = [
            McpServer(
                name,
                spec,
                catalog,
                metrics,
                restart_max_seconds=settings.mcp_restart_max_seconds,
                ping_seconds=settings.mcp_ping_seconds,
            )
            for name, spec in settings.mcp_servers.items()
            if spec.enabled
        ]

    @asynccontextmanager
    async def running(self) -> AsyncIterator[McpServers]:
        """Every server supervised for the worker's life; the start waits for each first attempt, at most
        ``mcp_start_timeout_seconds``."""
        tasks = [asyncio.create_task(server.supervise(), name=f"mcp-{server.name}") for server in self.servers]
        try:
            if self.servers:
                waits = [asyncio.ensure_future(server.first_attempt.wait()) for server in self.servers]
                started = time.perf_counter()
                _done, late = await asyncio.wait(waits, timeout=self._settings.mcp_start_timeout_seconds)
                for wait in late:
                    wait.cancel()
                for server in self.servers:
                    if server.state != "up":
                        logger.warning(
                            "MCP server {} did not start ({}); the agent runs without its tools meanwhile",
                            server.name,
                            server.error or f"still starting after {time.perf_counter() - started:.0f} s",
                        )
            yield self
        finally:
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=10)

    async def check(self) -> CheckResult | None:
        """Readiness: every server up, else which are not and why."""
        if not self.servers:
            return None
        down = [server for server in self.servers if server.state != "up"]
        detail: dict[str, object] = {"servers": {server.name: server.report() for server in self.servers}}
        if not down:
            return CheckResult(detail=detail)
        error = "; ".join(f"{server.name}: {server.error or server.state}" for server in down)
        return CheckResult(healthy=False, detail=detail, error=error)


@dataclass(frozen=True)
class ServerCheck:
    """What asking one server for its tools found (agentctl tools --check)."""

    name: str
    transport: str
    tools: list[McpTool]
    seconds: float
    error: str | None = None


async def check_server(name: str, spec: McpServerSettings) -> ServerCheck:
    """Connect to the server once, list its tools, and close."""
    started = time.perf_counter()
    try:
        async with connected(spec) as (_session, tools):
            return ServerCheck(name, spec.transport, tools, time.perf_counter() - started)
    except Exception as error:
        return ServerCheck(name, spec.transport, [], time.perf_counter() - started, _reason(error))
