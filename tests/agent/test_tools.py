"""The agent's built-in tools and the runner of one step's tool calls (with its bounds), with a real LangGraph graph
for ask_human."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from datetime import datetime, timedelta
from typing import Annotated, Any, TypedDict

import pytest
from langchain_core.messages import AIMessage, AnyMessage, ToolMessage
from langchain_core.messages.tool import tool_call
from langchain_core.tools import BaseTool, tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Command, interrupt

from agentctl.config import AgentSettings, ToolRule
from server.agent.tools import build_tools, calculate
from server.tools import runner
from server.tools.catalog import ToolCatalog


async def run_tool_calls(calls: list[Any], tools: dict[str, BaseTool], **rules: ToolRule) -> list[ToolMessage]:
    """The runner, over a catalog of just these tools (with these rules by tool name)."""
    return await runner.run_tool_calls(calls, ToolCatalog(AgentSettings(tools=rules), tools.values()))


@pytest.fixture
def tools() -> dict[str, BaseTool]:
    return {tool.name: tool for tool in build_tools(AgentSettings(web_search_timeout_seconds=3))}


async def call(tools: dict[str, BaseTool], name: str, **args: Any) -> str:
    [message] = await run_tool_calls([tool_call(name=name, args=args, id="call-1")], tools)
    assert isinstance(message.content, str)
    return message.content


def test_the_model_is_offered_the_four_tools(tools: dict[str, BaseTool]) -> None:
    assert list(tools) == ["web_search", "current_datetime", "calculator", "ask_human"]
    assert all(tool.description for tool in tools.values())


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("1 + 2 * 3", "7"),
        ("(1 + 2) * 3", "9"),
        ("2 ** 10 / 4", "256"),
        ("7 / 2", "3.5"),
        ("7 // 2", "3"),
        ("-7 % 3", "2"),
        ("-(-3) + +2", "5"),
        ("2 ** -2", "0.25"),
        ("2 ** 0.5", "1.4142135623730951"),
        ("sqrt(16) + abs(-3)", "7"),
        ("round(2.567, 2)", "2.57"),
        ("round(2.5)", "2"),
        ("floor(-1.5) + ceil(1.2)", "0"),
        ("log(e) + log10(1000) + log(8, 2)", "7"),
        ("exp(0) + cos(0) + sin(0) + tan(0)", "2"),
        ("round(sin(pi / 6), 10)", "0.5"),
        ("2 ** 1000 // 2 ** 999", "2"),
        ("1.5e3", "1500"),
        ("0.1 + 0.2", "0.30000000000000004"),
    ],
)
def test_calculator_evaluates_arithmetic(expression: str, expected: str) -> None:
    assert calculate(expression) == expected


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("__import__('os')", "unknown function '__import__'"),
        ("__import__('os').system('true')", "attribute access"),
        ("().__class__.__bases__[0].__subclasses__()", "attribute access"),
        ("math.sqrt(4)", "attribute access"),
        ("open('/etc/passwd')", "unknown function 'open'"),
        ("(lambda: 1)()", "unknown function"),
        ("lambda: 1", "Lambda is not allowed"),
        ("[x for x in (1, 2)]", "ListComp is not allowed"),
        ("(1, 2)[0]", "Subscript is not allowed"),
        ("x + 1", "unknown name 'x'"),
        ("'a' * 10", "only numbers"),
        ("True + 1", "only numbers"),
        ("1j * 1j", "only numbers"),
        ("1 << 10", "operator LShift is not allowed"),
        ("~1", "operator Invert is not allowed"),
        ("1 < 2", "Compare is not allowed"),
        ("sqrt(x=4)", "positional arguments only"),
        ("sqrt(*[4])", "positional arguments only"),
        ("1 +", "not an arithmetic expression"),
        ("1 / 0", "division by zero"),
        ("5 % 0", "division by zero"),
        ("0 ** -1", "division by zero"),
        ("sqrt(-1)", "math domain error"),
        ("(-8) ** (1 / 3)", "not a real number"),
        ("9 ** 9 ** 9", "too large"),
        ("10 ** 100000", "too large"),
        ("2 ** 2 ** 100", "too large"),
        ("(2 ** 1000) * (2 ** 1000) * (2 ** 1000)", "too large"),
        ("1" * 400, "too large"),
        ("1e308 * 10", "too large"),
        ("exp(1000)", "too large"),
        ("10.0 ** 400", "too large"),
        ("round(10, -10 ** 9)", "round() takes a whole number of digits"),
        ("-" * 500 + "1", "nested deeper"),
        ("1 + " * 400 + "1", "longer than"),
        ("(" * 5000 + "1" + ")" * 5000, "longer than"),
    ],
)
def test_calculator_refuses_what_is_not_bounded_arithmetic(expression: str, reason: str) -> None:
    started = time.perf_counter()
    answer = calculate(expression)
    assert time.perf_counter() - started < 0.1
    assert answer.startswith("calculator failed:")
    assert reason in answer


async def test_calculator_as_a_tool(tools: dict[str, BaseTool]) -> None:
    assert await call(tools, "calculator", expression="6 * 7") == "42"
    assert (await call(tools, "calculator", expression="__import__('os')")).startswith("calculator failed:")


async def test_current_datetime_defaults_to_utc(tools: dict[str, BaseTool]) -> None:
    answer = await call(tools, "current_datetime")
    match = re.fullmatch(r"(\S+) \((\w+), UTC\)", answer)
    assert match is not None, answer
    moment = datetime.fromisoformat(match[1])
    assert moment.utcoffset() == timedelta(0)
    assert abs(moment - datetime.now(moment.tzinfo)) < timedelta(seconds=5)
    assert match[2] == moment.strftime("%A")


async def test_current_datetime_in_a_named_zone(tools: dict[str, BaseTool]) -> None:
    answer = await call(tools, "current_datetime", timezone="Asia/Kolkata")
    match = re.fullmatch(r"(\S+) \((\w+), Asia/Kolkata\)", answer)
    assert match is not None, answer
    moment = datetime.fromisoformat(match[1])
    assert moment.utcoffset() == timedelta(hours=5, minutes=30)
    assert match[2] == moment.strftime("%A")


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "America", "../../etc/passwd", "/etc/localtime"])
async def test_current_datetime_names_an_unknown_zone(tools: dict[str, BaseTool], zone: str) -> None:
    answer = await call(tools, "current_datetime", timezone=zone)
    assert answer.startswith("current_datetime failed: unknown time zone")
    assert repr(zone) in answer


async def test_web_search_failure_is_an_answer_the_model_reads(tools: dict[str, BaseTool]) -> None:
    # This machine reaches no search engine: the real client fails (DNS, refused or timeout, whichever).
    started = time.perf_counter()
    [message] = await run_tool_calls([tool_call(name="web_search", args={"query": "agentctl"}, id="s1")], tools)
    assert time.perf_counter() - started < 3 + 1
    assert message.status == "error"  # a readable answer, counted as the tool's error
    assert message.tool_call_id == "s1"
    assert isinstance(message.content, str)
    assert message.content.startswith("web_search failed: ")
    assert len(message.content) < 400


async def test_web_search_gives_up_at_its_timeout() -> None:
    [web_search] = [
        tool for tool in build_tools(AgentSettings(web_search_timeout_seconds=0.001)) if tool.name == "web_search"
    ]
    started = time.perf_counter()
    answer = await web_search.ainvoke({"query": "agentctl"})
    assert time.perf_counter() - started < 1
    assert answer.startswith("web_search failed: ")


def slow_tools(started: list[str]) -> dict[str, BaseTool]:
    @tool
    async def slow_echo(text: str, seconds: float) -> str:
        """Echo after a while."""
        started.append(text)
        await asyncio.sleep(seconds)
        return text

    @tool
    async def broken(text: str) -> str:
        """Always fails."""
        raise RuntimeError(f"cannot handle {text}")

    return {"slow_echo": slow_echo, "broken": broken}


async def test_run_tool_calls_runs_the_calls_of_a_step_concurrently_in_order() -> None:
    started: list[str] = []
    calls = [
        tool_call(name="slow_echo", args={"text": "first", "seconds": 0.5}, id="a"),
        tool_call(name="slow_echo", args={"text": "second", "seconds": 0.3}, id="b"),
        tool_call(name="slow_echo", args={"text": "third", "seconds": 0.4}, id="c"),
    ]
    began = time.perf_counter()
    messages = await run_tool_calls(calls, slow_tools(started))
    elapsed = time.perf_counter() - began
    assert 0.5 <= elapsed < 0.9  # one after the other: 1.2 s
    assert [(m.tool_call_id, m.name, m.content, m.status) for m in messages] == [
        ("a", "slow_echo", "first", "success"),
        ("b", "slow_echo", "second", "success"),
        ("c", "slow_echo", "third", "success"),
    ]


async def test_run_tool_calls_turns_failures_into_error_messages() -> None:
    calls = [
        tool_call(name="broken", args={"text": "this"}, id="a"),
        tool_call(name="no_such_tool", args={}, id="b"),
        tool_call(name="slow_echo", args={"text": "missing seconds"}, id="c"),
        tool_call(name="slow_echo", args={"text": "fine", "seconds": 0}, id="d"),
    ]
    broken, unknown, invalid, fine = await run_tool_calls(calls, slow_tools([]))
    assert (broken.tool_call_id, broken.name, broken.status) == ("a", "broken", "error")
    assert broken.content == "broken failed: RuntimeError: cannot handle this"
    assert (unknown.tool_call_id, unknown.name, unknown.status) == ("b", "no_such_tool", "error")
    assert unknown.content == "no_such_tool failed: no such tool (available: broken, slow_echo)"
    assert (invalid.tool_call_id, invalid.status) == ("c", "error")
    assert isinstance(invalid.content, str)
    assert invalid.content.startswith("slow_echo failed: ValidationError")
    assert (fine.tool_call_id, fine.content, fine.status) == ("d", "fine", "success")


async def test_a_call_past_its_timeout_or_its_output_cap_is_told_to_the_model() -> None:
    calls = [
        tool_call(name="slow_echo", args={"text": "late", "seconds": 5}, id="a"),
        tool_call(name="slow_echo", args={"text": "y" * 500, "seconds": 0}, id="b"),
    ]
    began = time.perf_counter()
    late, long = await run_tool_calls(
        calls, slow_tools([]), slow_echo=ToolRule(timeout_seconds=0.2, max_output_chars=100)
    )
    assert time.perf_counter() - began < 2
    assert (late.content, late.status) == ("slow_echo failed: no result within 0.2 s", "error")
    assert long.content == "y" * 100 + "\n[cut: 400 more characters; the tool's result is limited to 100]"


async def test_a_denied_tool_is_neither_offered_nor_run() -> None:
    tools = slow_tools([])
    catalog = ToolCatalog(AgentSettings(tools={"broken": ToolRule(policy="deny")}), tools.values())
    assert [tool.name for tool in catalog.offered(approvals=True)] == ["slow_echo"]
    [refused] = await runner.run_tool_calls([tool_call(name="broken", args={"text": "x"}, id="a")], catalog)
    assert refused.content == "broken failed: no such tool (available: slow_echo)"


def test_tools_that_need_approval_are_offered_only_where_someone_can_give_it() -> None:
    catalog = ToolCatalog(
        AgentSettings(tools={"web_search": ToolRule(policy="approve"), "ask_human": ToolRule(policy="approve")}),
        build_tools(AgentSettings()),
    )
    assert [tool.name for tool in catalog.offered(approvals=True)] == [
        "web_search",
        "current_datetime",
        "calculator",
        "ask_human",
    ]
    # ask_human asks the user itself: approving it first would ask twice.
    assert [tool.name for tool in catalog.offered(approvals=False)] == ["current_datetime", "calculator", "ask_human"]


async def test_ask_human_outside_a_graph_is_an_error_message(tools: dict[str, BaseTool]) -> None:
    [message] = await run_tool_calls([tool_call(name="ask_human", args={"question": "?"}, id="q")], tools)
    assert message.status == "error"
    assert isinstance(message.content, str)
    assert message.content.startswith("ask_human failed:")


class State(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]


def graph_running(tools_by_name: dict[str, BaseTool]) -> CompiledStateGraph:
    """The smallest graph with a tool node like the agent's: it runs the tool calls of the last message."""

    async def use_tools(state: State) -> dict[str, list[ToolMessage]]:
        return {"messages": await run_tool_calls(state["messages"][-1].tool_calls, tools_by_name)}  # type: ignore[union-attr]

    builder = StateGraph(State)
    builder.add_node("tools", use_tools)
    builder.add_edge(START, "tools")
    builder.add_edge("tools", END)
    return builder.compile(checkpointer=InMemorySaver())


def step(*calls: Any) -> dict[str, list[AIMessage]]:
    return {"messages": [AIMessage(content="", tool_calls=list(calls))]}


def interrupted_with(result: dict[str, Any]) -> list[Any]:
    return [pending.value for pending in result.get("__interrupt__", [])]


async def test_ask_human_pauses_the_graph_and_the_answer_resumes_it(tools: dict[str, BaseTool]) -> None:
    graph = graph_running(tools)
    config = {"configurable": {"thread_id": str(uuid.uuid4())}}
    question = tool_call(name="ask_human", args={"question": "Which city?"}, id="q1")

    paused = await graph.ainvoke(step(question), config)
    assert interrupted_with(paused) == [{"question": "Which city?"}]
    assert not isinstance(paused["messages"][-1], ToolMessage)

    resumed = await graph.ainvoke(Command(resume="Lyon"), config)
    assert interrupted_with(resumed) == []
    answer = resumed["messages"][-1]
    assert isinstance(answer, ToolMessage)
    assert (answer.tool_call_id, answer.name, answer.content, answer.status) == ("q1", "ask_human", "Lyon", "success")


async def test_the_other_calls_of_an_asking_step_run_once_after_the_answer(tools: dict[str, BaseTool]) -> None:
    started: list[str] = []
    graph = graph_running({**tools, **slow_tools(started)})
    config = {"configurable": {"thread_id": str(uuid.uuid4())}}
    calls = [
        tool_call(name="slow_echo", args={"text": "before", "seconds": 0}, id="e1"),
        tool_call(name="ask_human", args={"question": "First?"}, id="q1"),
        tool_call(name="ask_human", args={"question": "Second?"}, id="q2"),
        tool_call(name="slow_echo", args={"text": "after", "seconds": 0}, id="e2"),
    ]

    assert interrupted_with(await graph.ainvoke(step(*calls), config)) == [{"question": "First?"}]
    assert started == []
    assert interrupted_with(await graph.ainvoke(Command(resume="one"), config)) == [{"question": "Second?"}]
    assert started == []
    finished = await graph.ainvoke(Command(resume="two"), config)

    assert interrupted_with(finished) == []
    assert started == ["before", "after"]
    results = finished["messages"][-4:]
    assert [(m.tool_call_id, m.content) for m in results] == [
        ("e1", "before"),
        ("q1", "one"),
        ("q2", "two"),
        ("e2", "after"),
    ]


async def test_an_unmarked_interrupting_tool_still_pauses_the_graph() -> None:
    started: list[str] = []

    @tool
    async def confirm(action: str) -> str:
        """Ask before acting, without the mark that makes the runner ask first."""
        return "yes" if interrupt({"confirm": action}) == "ok" else "no"

    graph = graph_running({"confirm": confirm, **slow_tools(started)})
    config = {"configurable": {"thread_id": str(uuid.uuid4())}}
    calls = [
        tool_call(name="confirm", args={"action": "delete"}, id="c1"),
        tool_call(name="slow_echo", args={"text": "sibling", "seconds": 0.05}, id="e1"),
    ]

    assert interrupted_with(await graph.ainvoke(step(*calls), config)) == [{"confirm": "delete"}]
    assert started == ["sibling"]
    finished = await graph.ainvoke(Command(resume="ok"), config)
    assert started == ["sibling", "sibling"]
    assert [(m.tool_call_id, m.content) for m in finished["messages"][-2:]] == [("c1", "yes"), ("e1", "sibling")]
