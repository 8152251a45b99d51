"""Answering recorded cases again, as a candidate configuration would: in this process (the agent's own graph, built
from the candidate's settings) or through a running server's OpenAI-compatible API.

In process, nothing of the users' is touched: each case runs on a conversation of its own in memory (no checkpoint is
written), with no long-term memory (a case carries none) and no turn record; model calls go to the candidate's
models. Tools run as the agent runs them, except that:

* a tool named in the stubs file answers from the file (a fixed result, an error, or the result the case recorded
  for it) and never runs, so tools with side effects can be replayed safely;
* a tool that needs a person's approval and has no stub is not run: nobody is there to approve it, so the replay
  answers the approval as a rejection saying why, and the model goes on as it would after a "no";
* a question of the agent to the user (ask_human) ends the case: the question is the candidate's answer.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import time
import tomllib
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

import httpx
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool, StructuredTool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Command
from loguru import logger
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from agentctl.config import Settings
from server.agent.turn import TurnRecorder
from server.errors import AppError
from server.evaluation.cases import CaseMessage, RecordedToolCall, ReplayCase, ReplayedAnswer, ReplayStatus
from server.llm.service import ModelStreamError
from server.tools.approvals import is_approval
from server.tools.catalog import ToolCatalog, ToolEntry
from server.tools.runner import describe_error

_REPLAY_REJECTION = (
    "not run: this is a replay of a recorded conversation and nobody is here to approve the call; answer without it"
)
_SERVER_ATTEMPTS = 5  # tries per case when the server sheds load (429, 503 with Retry-After)
_SERVER_RETRY_CAP_SECONDS = 10.0


def recorded_answer(case: ReplayCase) -> ReplayedAnswer:
    """The case's recorded answer, as the baseline when none is replayed."""
    usage = case.usage
    return ReplayedAnswer(
        answer=case.output or "",
        status="done",
        model=case.model,
        input_tokens=usage.input_tokens if usage else 0,
        output_tokens=usage.output_tokens if usage else 0,
        cost_usd=usage.cost_usd if usage else None,
        latency_ms=case.latency_ms,
        tool_calls=[call.model_dump() for call in case.tool_calls],
    )


class Replayer(Protocol):
    async def answer(self, case: ReplayCase) -> ReplayedAnswer: ...


# -- tool stubs ---------------------------------------------------------------------------------------------------


class StubFileError(AppError):
    status = 400
    code = "tool-stubs-invalid"
    title = "Invalid tool stubs file"


class ToolStub(BaseModel):
    """What a stubbed tool answers: the result the case recorded for it (``recorded``), falling back to ``result`` or
    ``error``; or always ``result``; or always ``error`` (the call fails with that text)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    recorded: bool = False
    result: str | None = None
    error: str | None = None

    @model_validator(mode="after")
    def _says_something(self) -> ToolStub:
        if self.result is not None and self.error is not None:
            raise ValueError("give result or error, not both")
        if not self.recorded and self.result is None and self.error is None:
            raise ValueError("give recorded = true, a result or an error")
        return self


class _StubsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tools: dict[str, ToolStub]


_current_case: contextvars.ContextVar[ReplayCase | None] = contextvars.ContextVar("replay_case", default=None)


class ToolStubs:
    """Tools that answer from a file instead of running (``[tools.<name>]`` in TOML, or ``{"tools": {...}}`` JSON)."""

    def __init__(self, stubs: dict[str, ToolStub]) -> None:
        self.stubs = stubs

    @classmethod
    def read(cls, path: Path) -> ToolStubs:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise StubFileError(f"{path}: cannot be read: {error}") from None
        try:
            data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
        except (ValueError, tomllib.TOMLDecodeError) as error:
            kind = "JSON" if path.suffix == ".json" else "TOML"
            raise StubFileError(f"{path}: not {kind}: {error}") from None
        try:
            return cls(_StubsFile.model_validate(data).tools)
        except ValidationError as error:
            first = error.errors()[0]
            raise StubFileError(f"{path}: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None

    def adapt(self, entry: ToolEntry) -> ToolEntry:
        """The catalog's entry for the tool, its stub in place of the tool when the file names it. A stub has no side
        effect, so it needs nobody's approval."""
        stub = self.stubs.get(entry.name)
        if stub is None:
            return entry
        return replace(entry, tool=_stub_tool(entry.tool, stub), policy="allow")

    def unknown(self, catalog: ToolCatalog) -> list[str]:
        """Stubbed names the agent has no tool for (a typo, or an MCP server that is not up)."""
        return sorted(name for name in self.stubs if catalog.entry(name) is None)


def _stub_tool(tool: BaseTool, stub: ToolStub) -> BaseTool:
    async def answer(**arguments: Any) -> str:
        case = _current_case.get()
        if stub.recorded and case is not None:
            recorded = _recorded_result(case.tool_calls, tool.name, arguments)
            if recorded is not None:
                if recorded.status == "error":
                    raise ToolStubError(recorded.result)
                return recorded.result
        if stub.error is not None:
            raise ToolStubError(stub.error)
        if stub.result is not None:
            return stub.result
        raise ToolStubError("the recorded conversation has no result of this tool to replay")

    return StructuredTool(
        name=tool.name,
        description=tool.description,
        args_schema=tool.args_schema,
        coroutine=answer,
        metadata=tool.metadata,
    )


class ToolStubError(Exception):
    """A stub's error: the runner tells the model the call failed, with this text."""


def _recorded_result(calls: list[RecordedToolCall], name: str, arguments: dict[str, Any]) -> RecordedToolCall | None:
    """The recorded call of the tool with the same arguments, else its first recorded call."""
    same_tool = [call for call in calls if call.name == name]
    exact = next((call for call in same_tool if call.arguments == arguments), None)
    return exact or (same_tool[0] if same_tool else None)


# -- in process ---------------------------------------------------------------------------------------------------


def case_messages(case: ReplayCase) -> list[BaseMessage]:
    """The case's conversation before its turn, then its message, as the agent's state holds them."""
    messages: list[BaseMessage] = []
    for message in case.context:
        messages.append(_langchain_message(message))
    messages.append(HumanMessage(case.input, id=str(uuid.uuid4())))
    return messages


def _langchain_message(message: CaseMessage) -> BaseMessage:
    if message.role == "user":
        return HumanMessage(message.content)
    if message.role == "assistant":
        return AIMessage(
            content=message.content,
            tool_calls=[
                {"id": call.id, "name": call.name, "args": call.arguments, "type": "tool_call"}
                for call in message.tool_calls
            ],
        )
    return ToolMessage(content=message.content, tool_call_id=message.tool_call_id or "", name=message.name)


class InProcessReplayer:
    """The candidate's agent in this process: its prompts, models and tools, on conversations held in memory."""

    def __init__(self, agent: CompiledStateGraph, checkpointer: InMemorySaver, max_steps: int) -> None:
        self._agent = agent
        self._checkpointer = checkpointer
        self._max_steps = max_steps

    @classmethod
    @asynccontextmanager
    async def open(
        cls, settings: Settings, stubs: ToolStubs | None
    ) -> AsyncIterator[tuple[InProcessReplayer, list[str]]]:
        """The replayer and the stubbed names it has no tool for; models, MCP servers and pools closed on exit."""
        from server.agent.graph import build_agent
        from server.agent.prompts import PromptLibrary
        from server.agent.tools import build_tools
        from server.llm.registry import ModelRegistry
        from server.llm.service import LLMService

        async with AsyncExitStack() as stack:
            registry = ModelRegistry.from_settings(settings.llm)
            stack.push_async_callback(registry.aclose)
            llm = LLMService(registry, settings.llm)
            prompts = PromptLibrary(settings.agent)
            await prompts.load()
            catalog = ToolCatalog(
                settings.agent, build_tools(settings.agent), adapt=stubs.adapt if stubs is not None else None
            )
            if any(server.enabled for server in settings.agent.mcp_servers.values()):
                from server.tools.mcp import McpServers

                await stack.enter_async_context(McpServers(settings.agent, catalog, None).running())
            checkpointer = InMemorySaver()
            agent = await asyncio.to_thread(
                build_agent,
                llm=llm,
                catalog=catalog,
                prompts=prompts,
                settings=settings.agent,
                checkpointer=checkpointer,
            )
            unknown = stubs.unknown(catalog) if stubs is not None else []
            yield cls(agent, checkpointer, settings.agent.max_steps), unknown

    async def answer(self, case: ReplayCase) -> ReplayedAnswer:
        recorder = TurnRecorder(instructions=case.instructions)
        thread_id = f"replay-{uuid.uuid4()}"
        config: RunnableConfig = {
            "configurable": {"thread_id": thread_id, "turn": recorder},
            "recursion_limit": 2 * self._max_steps + 4,
        }
        token = _current_case.set(case)
        graph_input: Command[Any] | dict[str, Any] = {"messages": case_messages(case)}
        status: ReplayStatus = "done"
        error: str | None = None
        try:
            while True:
                asked: Any = None
                interrupt_id = ""
                async for chunk in self._agent.astream(graph_input, config, stream_mode="updates"):
                    if "__interrupt__" in chunk:
                        pending = chunk["__interrupt__"][0]
                        asked, interrupt_id = pending.value, pending.id
                if asked is None:
                    break
                if not is_approval(asked):  # the agent asks the user: the question is where the case ends
                    status = "asked"
                    recorder.partial = asked.get("question", "") if isinstance(asked, dict) else str(asked)
                    break
                decisions = {call["id"]: {"decision": "reject", "reason": _REPLAY_REJECTION} for call in asked["calls"]}
                graph_input = Command(resume={interrupt_id: {"decisions": decisions}})
        except (ModelStreamError, AppError) as failure:
            status = "error"
            error = failure.detail if isinstance(failure, AppError) else str(failure)
        except Exception as failure:  # one case that breaks the agent must not end a replay of hundreds
            logger.opt(exception=failure).warning("replaying case {} failed", case.id)
            status, error = "error", describe_error(failure)
        finally:
            _current_case.reset(token)
            await self._checkpointer.adelete_thread(thread_id)
        reports = recorder.reports
        return ReplayedAnswer(
            answer=recorder.partial if status != "error" else "",
            status=status,
            error=error,
            model=reports[-1].model if reports else None,
            input_tokens=sum(report.usage.input_tokens for report in reports),
            output_tokens=sum(report.usage.output_tokens for report in reports),
            cost_usd=sum(report.usage.cost_usd for report in reports),
            latency_ms=(time.perf_counter() - recorder.started) * 1000,
            tool_calls=recorder.tool_calls,
        )


# -- through a server ---------------------------------------------------------------------------------------------


class ServerReplayer:
    """A running agentctl server's /v1/chat/completions, acting as the API key's account: the server records those
    turns as that account's (use an account of its own for replays), never in a user's session."""

    def __init__(self, client: httpx.AsyncClient, model: str) -> None:
        self._client = client
        self._model = model

    @classmethod
    @asynccontextmanager
    async def open(cls, base_url: str, api_key: str, timeout_seconds: float) -> AsyncIterator[ServerReplayer]:
        """Connected, and the key checked: GET /v1/models says the agent's model name (a ServerUnusableError if not)."""
        async with httpx.AsyncClient(
            base_url=base_url.rstrip("/") + "/v1",
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=timeout_seconds,
        ) as client:
            try:
                response = await client.get("/models")
            except httpx.HTTPError as error:
                raise ServerUnusableError(f"{base_url} does not answer: {type(error).__name__}: {error}") from None
            if response.status_code != 200:
                raise ServerUnusableError(f"{base_url}/v1/models: {_server_error(response)}")
            models = response.json().get("data") or [{}]
            yield cls(client, str(models[0].get("id", "")))

    async def answer(self, case: ReplayCase) -> ReplayedAnswer:
        body = {"model": self._model, "messages": openai_messages(case), "stream": False}
        started = time.perf_counter()
        response: httpx.Response | None = None
        try:
            for attempt in range(_SERVER_ATTEMPTS):
                response = await self._client.post("/chat/completions", json=body)
                if response.status_code not in (429, 503) or attempt == _SERVER_ATTEMPTS - 1:
                    break
                await asyncio.sleep(_retry_after(response, attempt))
        except httpx.HTTPError as failure:
            return ReplayedAnswer("", "error", error=f"the server did not answer: {type(failure).__name__}: {failure}")
        assert response is not None
        latency_ms = (time.perf_counter() - started) * 1000
        if response.status_code != 200:
            return ReplayedAnswer("", "error", error=_server_error(response), latency_ms=latency_ms)
        data = response.json()
        usage = data.get("usage") or {}
        message = (data.get("choices") or [{}])[0].get("message") or {}
        return ReplayedAnswer(
            answer=message.get("content") or "",
            status="done",
            model=data.get("model"),
            input_tokens=int(usage.get("prompt_tokens", 0)),
            output_tokens=int(usage.get("completion_tokens", 0)),
            cost_usd=None,  # the API does not say what a turn cost
            latency_ms=latency_ms,
        )


class ServerUnusableError(AppError):
    status = 400
    code = "replay-server-unusable"
    title = "The server cannot be replayed on"


def openai_messages(case: ReplayCase) -> list[dict[str, Any]]:
    """The case as an OpenAI chat request's messages: the user's instructions, the conversation, the message."""
    messages: list[dict[str, Any]] = []
    if case.instructions:
        messages.append({"role": "system", "content": case.instructions})
    for message in case.context:
        if message.role == "tool":
            messages.append({"role": "tool", "content": message.content, "tool_call_id": message.tool_call_id})
        elif message.tool_calls:
            calls = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": json.dumps(call.arguments)},
                }
                for call in message.tool_calls
            ]
            messages.append({"role": "assistant", "content": message.content or None, "tool_calls": calls})
        else:
            messages.append({"role": message.role, "content": message.content})
    messages.append({"role": "user", "content": case.input})
    return messages


def _retry_after(response: httpx.Response, attempt: int) -> float:
    try:
        seconds = float(response.headers.get("retry-after", ""))
    except ValueError:
        seconds = 2.0**attempt
    return min(max(seconds, 0.1), _SERVER_RETRY_CAP_SECONDS)


def _server_error(response: httpx.Response) -> str:
    try:
        detail = response.json().get("error", {}).get("message")
    except ValueError:
        detail = None
    return f"HTTP {response.status_code}: {detail or response.reason_phrase}"
