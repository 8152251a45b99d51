"""The agent: a LangGraph loop of a chat node (the model, through the model layer) and a tool node.

Everything a turn needs beyond the graph's state (the user's name, memories, the turn's recorder) travels in
the run's config, so one compiled graph serves every request.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Annotated, Literal, TypedDict

from langchain_core.messages import AIMessage, AnyMessage, BaseMessage, SystemMessage, ToolCall, ToolMessage
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import interrupt

from agentctl.config import AgentSettings
from server.agent.context import input_budget, token_counter_for, trim_history
from server.agent.prompts import PromptLibrary
from server.agent.turn import TurnRecorder, recorder_of
from server.llm.resilience import Lane
from server.llm.service import LLMService, StreamEnd, StreamToken
from server.observability.metrics import ToolMetrics
from server.tools.approvals import DECISION_RECORDS, approval_request, decisions_of, rejection_text
from server.tools.catalog import ToolCatalog
from server.tools.runner import asking_calls, failed_call, run_tool_calls


class AgentState(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]


def _pending_tool_calls(state: AgentState) -> list[ToolCall]:
    """The tool calls the model's last message asks for (none when it answered)."""
    messages = state["messages"]
    return messages[-1].tool_calls if messages and isinstance(messages[-1], AIMessage) else []


def _record_tool_calls(
    turn: TurnRecorder, calls: list[ToolCall], results: list[ToolMessage], approvals: dict[str, dict[str, object]]
) -> None:
    for call, result in zip(calls, results, strict=True):
        summary = str(result.content)[:300]
        status = getattr(result, "status", "success")
        entry: dict[str, object] = {
            "name": call["name"],
            "arguments": call["args"],
            "status": status,
            "result": summary,
        }
        if (approval := approvals.get(call["id"] or "")) is not None:
            entry["approval"] = approval
        turn.tool_calls.append(entry)
        turn.emit({"type": "tool", **entry})


def build_agent(
    *,
    llm: LLMService,
    catalog: ToolCatalog,
    prompts: PromptLibrary,
    settings: AgentSettings,
    checkpointer: BaseCheckpointSaver | None,
    tool_metrics: ToolMetrics | None = None,
) -> CompiledStateGraph:
    """Compile the graph once per worker."""
    chain = llm.registry.chain("chat")
    # Trim to what every model of the chain can read, so that a fallback never gets a context too long for it.
    budget = min(input_budget(model.spec) for model in chain)
    # Small local models cannot call tools; they get none rather than a prompt they would garble.
    tools_callable = all(model.spec.provider != "local" for model in chain)
    count_tokens: Callable[[list[BaseMessage]], int] = token_counter_for(
        chain[0].chat_model(Lane.FOREGROUND),
        chain[0].spec,
        tools=catalog.offered(approvals=True) if tools_callable else [],
    )

    async def chat(state: AgentState, config: RunnableConfig) -> dict[str, Sequence[BaseMessage]]:
        turn = recorder_of(config)
        turn.steps += 1
        system = SystemMessage(
            await prompts.system_prompt(
                user_name=turn.user_name, memories=turn.memories, instructions=turn.instructions
            )
        )
        history = trim_history([system, *state["messages"]], max_tokens=budget, count_tokens=count_tokens)
        offered_tools = catalog.offered(approvals=turn.approvals) if tools_callable else []
        write = turn.emit
        turn.partial = ""
        message: AIMessage | None = None
        if not turn.streaming:
            completion = await llm.complete(
                "chat", history, tools=offered_tools or None, options=turn.model_options or None
            )
            message = completion.message
            turn.finish_reason = message.response_metadata.get("finish_reason")
            turn.reports.append(completion.report)
            turn.first_token_at = turn.first_token_at or time.perf_counter()
            turn.partial = message.text
            if turn.partial:
                write({"type": "token", "content": turn.partial})
            return {"messages": [message]}
        async for event in llm.stream("chat", history, tools=offered_tools or None, options=turn.model_options or None):
            if isinstance(event, StreamToken):
                if turn.first_token_at is None:
                    turn.first_token_at = time.perf_counter()
                turn.partial += event.text
                write({"type": "token", "content": event.text})
            elif isinstance(event, StreamEnd):
                message = event.message
                turn.reports.append(event.report)
                turn.finish_reason = message.response_metadata.get("finish_reason")
        assert message is not None
        return {"messages": [message]}

    async def use_tools(state: AgentState, config: RunnableConfig) -> dict[str, Sequence[BaseMessage]]:
        """Run the step's tool calls: those that ask the user (ask_human) first, then, if any call needs the user's
        approval, pause for it (nothing else of the step has run: LangGraph re-runs this node on resume), then the
        rest side by side. Rejected calls answer with the user's reason; edited ones run with the new arguments,
        which the conversation then shows."""
        turn = recorder_of(config)
        asked = state["messages"][-1]
        calls = _pending_tool_calls(state)
        results: dict[str, ToolMessage] = {}
        asking = asking_calls(calls, catalog)
        for call in asking:
            turn.emit({"type": "tool", "name": call["name"], "arguments": call["args"], "status": "started"})
        if asking:
            for call, result in zip(asking, await run_tool_calls(asking, catalog, tool_metrics), strict=True):
                results[call["id"] or ""] = result
        waiting = [call for call in calls if (entry := catalog.entry(call["name"])) and entry.policy == "approve"]
        approvals: dict[str, dict[str, object]] = {}
        if waiting and not turn.approvals:  # offered none, as nobody here can answer: the model made it up
            for call in waiting:
                results[call["id"] or ""] = failed_call(call, "it needs the user's approval, which this API cannot ask")
        elif waiting:
            decided = decisions_of(interrupt(approval_request(waiting, catalog)), waiting)
            edited_calls = []
            for call in waiting:
                decision = decided[call["id"] or ""]
                record: dict[str, object] = {"decision": DECISION_RECORDS[decision.decision]}
                if decision.decision == "reject":
                    results[call["id"] or ""] = failed_call(call, rejection_text(decision), prefix=False)
                    if decision.reason:
                        record["reason"] = decision.reason
                elif decision.decision == "edit" and decision.arguments is not None:
                    record["arguments_asked"] = call["args"]
                    edited_calls.append(call["id"])
                    call["args"] = decision.arguments  # the state's copy: the edited call is what the history keeps
                approvals[call["id"] or ""] = record
                if tool_metrics is not None:
                    tool_metrics.approvals.labels(call["name"], record["decision"]).inc()
        rest = [call for call in calls if (call["id"] or "") not in results]
        for call in rest:
            turn.emit({"type": "tool", "name": call["name"], "arguments": call["args"], "status": "started"})
        for call, result in zip(rest, await run_tool_calls(rest, catalog, tool_metrics), strict=True):
            results[call["id"] or ""] = result
        ordered = [results[call["id"] or ""] for call in calls]
        _record_tool_calls(turn, calls, ordered, approvals)
        updates: list[BaseMessage] = list(ordered)
        if approvals and any(record["decision"] == "edited" for record in approvals.values()):
            assert isinstance(asked, AIMessage)
            updates.insert(0, asked.model_copy(update={"tool_calls": calls}))  # same id: replaces it
        return {"messages": updates}

    async def stop_at_step_limit(state: AgentState) -> dict[str, Sequence[BaseMessage]]:
        # Every tool call needs its result before the model is called again; these say why there is none.
        calls = _pending_tool_calls(state)
        return {
            "messages": [
                ToolMessage(
                    content=f"not run: the turn reached its limit of {settings.max_steps} steps",
                    tool_call_id=call["id"],
                    name=call["name"],
                    status="error",
                )
                for call in calls
            ]
        }

    def after_chat(state: AgentState, config: RunnableConfig) -> Literal["tools", "stop", "__end__"]:
        if not _pending_tool_calls(state):
            return "__end__"  # END
        return "tools" if recorder_of(config).steps < settings.max_steps else "stop"

    graph = StateGraph(AgentState)
    graph.add_node("chat", chat)
    graph.add_node("tools", use_tools)
    graph.add_node("stop", stop_at_step_limit)
    graph.add_edge(START, "chat")
    graph.add_conditional_edges("chat", after_chat, {"tools": "tools", "stop": "stop", END: END})
    graph.add_edge("stop", END)
    graph.add_edge("tools", "chat")
    return graph.compile(checkpointer=checkpointer)
