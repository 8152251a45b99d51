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
from langchain_core.tools import BaseTool
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.graph.state import CompiledStateGraph

from agentctl.config import AgentSettings
from server.agent.context import input_budget, token_counter_for, trim_history
from server.agent.prompts import PromptLibrary
from server.agent.tools import run_tool_calls
from server.agent.turn import recorder_of
from server.llm.resilience import Lane
from server.llm.service import LLMService, StreamEnd, StreamToken


class AgentState(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]


def _pending_tool_calls(state: AgentState) -> list[ToolCall]:
    """The tool calls the model's last message asks for (none when it answered)."""
    messages = state["messages"]
    return messages[-1].tool_calls if messages and isinstance(messages[-1], AIMessage) else []


def build_agent(
    *,
    llm: LLMService,
    tools: list[BaseTool],
    prompts: PromptLibrary,
    settings: AgentSettings,
    checkpointer: BaseCheckpointSaver | None,
) -> CompiledStateGraph:
    """Compile the graph once per worker."""
    tools_by_name = {tool.name: tool for tool in tools}
    chain = llm.registry.chain("chat")
    # Trim to what every model of the chain can read, so that a fallback never gets a context too long for it.
    budget = min(input_budget(model.spec) for model in chain)
    # Small local models cannot call tools; they get none rather than a prompt they would garble.
    offered_tools = tools if all(model.spec.provider != "local" for model in chain) else []
    count_tokens: Callable[[list[BaseMessage]], int] = token_counter_for(
        chain[0].chat_model(Lane.FOREGROUND),
        chain[0].spec,
        tools=offered_tools,
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
        turn = recorder_of(config)
        calls = _pending_tool_calls(state)
        write = turn.emit
        for call in calls:
            write({"type": "tool", "name": call["name"], "arguments": call["args"], "status": "started"})
        results = await run_tool_calls(calls, tools_by_name)
        for call, result in zip(calls, results, strict=True):
            summary = str(result.content)[:300]
            status = getattr(result, "status", "success")
            turn.tool_calls.append(
                {"name": call["name"], "arguments": call["args"], "status": status, "result": summary}
            )
            write(
                {"type": "tool", "name": call["name"], "arguments": call["args"], "status": status, "result": summary}
            )
        return {"messages": results}

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
