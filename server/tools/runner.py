"""Running the tool calls of one model step, within each tool's bounds.

A tool never fails the turn: an unknown or denied tool, a tool that raises, one that outlasts its timeout and one
whose server is down all answer with a short "<tool> failed: ..." text the model reads (status error), and the
turn goes on. Results longer than the tool's cap are cut, saying so. The one exception that leaves a tool on
purpose is LangGraph's interrupt (``ask_human``), which pauses the graph until the user answers.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Literal

from langchain_core.messages import ToolCall, ToolMessage
from langgraph.errors import GraphBubbleUp
from loguru import logger

from server.observability.metrics import ToolMetrics
from server.tools.catalog import ToolCatalog, ToolEntry

ERROR_MAX_CHARS = 300
Outcome = Literal["ok", "error", "timeout", "rejected", "unavailable"]


async def run_tool_calls(
    tool_calls: list[ToolCall], catalog: ToolCatalog, metrics: ToolMetrics | None = None
) -> list[ToolMessage]:
    """Run the tool calls of one step; one ToolMessage per call, in the order of the calls.

    Calls run concurrently, except those of tools that may interrupt the graph (``ask_human``): those run
    first, one after the other, and the rest only once they have all returned. An interrupt ends the node
    and LangGraph re-runs it from the start on resume, so anything that ran before the interrupt would run
    again; asking first means every other tool of the step runs exactly once, after the human has answered.
    One after the other also keeps the order of several questions fixed, which is how LangGraph matches
    resume values to interrupts. Should an unmarked tool interrupt, its siblings are still awaited before
    the interrupt propagates (none is left running), and they run again on resume.
    """
    results: list[ToolMessage | BaseException | None] = [None] * len(tool_calls)
    asking = {index for index, call in enumerate(tool_calls) if _interrupts(catalog.entry(call["name"]))}
    for index in sorted(asking):
        results[index] = await run_tool_call(tool_calls[index], catalog, metrics)
    others = [index for index in range(len(tool_calls)) if index not in asking]
    outcomes = await asyncio.gather(
        *(run_tool_call(tool_calls[index], catalog, metrics) for index in others), return_exceptions=True
    )
    for index, outcome in zip(others, outcomes, strict=True):
        results[index] = outcome
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return [result for result in results if isinstance(result, ToolMessage)]


def asking_calls(tool_calls: list[ToolCall], catalog: ToolCatalog) -> list[ToolCall]:
    """The calls of tools that ask the user themselves (``ask_human``)."""
    return [call for call in tool_calls if _interrupts(catalog.entry(call["name"]))]


def _interrupts(entry: ToolEntry | None) -> bool:
    return entry is not None and entry.interrupts


async def run_tool_call(call: ToolCall, catalog: ToolCatalog, metrics: ToolMetrics | None = None) -> ToolMessage:
    """One call, bounded by its tool's timeout and output cap."""
    name, call_id = call["name"], call.get("id") or ""
    entry = catalog.entry(name)
    if entry is None and (server := catalog.server_down_for(name)) is not None:
        _count(metrics, name, "unavailable")
        return failed_call(call, f"its MCP server {server} is not available right now; try again later")
    if entry is None or entry.policy == "deny":
        available = ", ".join(sorted(tool.name for tool in catalog.offered(approvals=True))) or "none"
        _count(metrics, name, "unavailable")
        return failed_call(call, f"no such tool (available: {available})")
    started = time.perf_counter()
    outcome: Outcome = "ok"
    try:
        if entry.interrupts:  # it waits for the user, not for work: no timeout
            result = await entry.tool.ainvoke({**call, "type": "tool_call"})
        else:
            async with asyncio.timeout(entry.timeout_seconds):
                result = await entry.tool.ainvoke({**call, "type": "tool_call"})
    except GraphBubbleUp:
        raise
    except TimeoutError:
        logger.warning("tool {} gave no result within {:g} s", name, entry.timeout_seconds)
        _count(metrics, name, "timeout", time.perf_counter() - started)
        return failed_call(call, f"no result within {entry.timeout_seconds:g} s")
    except Exception as error:
        logger.warning("tool {} failed: {}", name, describe_error(error))
        outcome = "unavailable" if isinstance(error, ServerUnavailableError) else "error"
        _count(metrics, name, outcome, time.perf_counter() - started)
        return failed_call(call, describe_error(error) if outcome == "error" else str(error))
    message = result if isinstance(result, ToolMessage) else ToolMessage(content=str(result), tool_call_id=call_id)
    text = capped(text_of(message.content), entry.max_output_chars)
    # A built-in tool reports its failures as text; they count (and read) as errors all the same.
    failed = message.status == "error" or text.startswith(f"{name} failed:")
    outcome = "error" if failed else "ok"
    _count(metrics, name, outcome, time.perf_counter() - started)
    return ToolMessage(
        content=text, tool_call_id=call_id, name=name, status="error" if failed else "success", id=message.id
    )


class ServerUnavailableError(Exception):
    """The tool's MCP server is down (restarting); its message is what the model reads."""


def failed_call(call: ToolCall, reason: str, *, prefix: bool = True) -> ToolMessage:
    """The result of a call that did not run, or failed: what the model reads instead."""
    name = call["name"]
    return ToolMessage(
        content=f"{name} failed: {reason}" if prefix else reason,
        tool_call_id=call.get("id") or "",
        name=name,
        status="error",
    )


def _count(metrics: ToolMetrics | None, name: str, outcome: Outcome, seconds: float | None = None) -> None:
    if metrics is None:
        return
    metrics.calls.labels(name, outcome).inc()
    if seconds is not None:
        metrics.duration.labels(name).observe(seconds)


def text_of(content: Any) -> str:
    """A tool result as text: MCP tools answer with content blocks (text, images, resources)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return str(content)
    parts = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, dict) and isinstance(block.get("text"), str):
            parts.append(block["text"])
        elif isinstance(block, dict):
            kind = block.get("mime_type") or block.get("type") or "content"
            parts.append(f"[{kind} not shown]")
    return "\n".join(parts)


def capped(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    note = f"\n[cut: {len(text) - limit} more characters; the tool's result is limited to {limit}]"
    return text[:limit] + note


def describe_error(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    return text if len(text) <= ERROR_MAX_CHARS else text[: ERROR_MAX_CHARS - 1] + "…"
