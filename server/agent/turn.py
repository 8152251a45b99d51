"""What one turn did, as it runs: shared by the chat service, which creates it and records it when the turn ends,
and the agent's graph, which fills it (in the run's config) and sends the turn's events through it."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from langchain_core.runnables import RunnableConfig

from server.llm.service import CallReport


@dataclass
class TurnRecorder:
    """What one turn did, gathered as it runs: model calls, tool calls, the partial answer so far."""

    user_name: str | None = None
    streaming: bool = True  # a non-streamed turn asks the model for the whole answer at once
    instructions: str | None = None  # the user's own instructions for this turn, after the system prompt's
    model_options: dict[str, Any] = field(default_factory=dict)  # max_tokens, temperature: within the model's bounds
    finish_reason: str | None = None  # why the model's last answer ended (stop, length)
    start_checkpoint: str | None = None  # the checkpoint the turn started from (what an edit of it forks from)
    first_of_conversation: bool = False  # it read the conversation and found nothing before it
    parent_run: uuid.UUID | None = None  # the turn before it on its branch
    resumed: bool = False  # it answers the agent's question (ask_human) or approval rather than saying something new
    approvals: bool = True  # someone can answer a tool's approval (not so on the OpenAI-compatible API)
    memories: list[str] = field(default_factory=list)
    reports: list[CallReport] = field(default_factory=list)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    partial: str = ""
    steps: int = 0
    started: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    # Where token and tool events go as they happen: the turn's own event queue. Handing them over directly
    # rather than through LangGraph's custom stream saves a hop of its stream machinery per token.
    emit: Callable[[dict[str, Any]], None] = field(default=lambda _event: None)


def recorder_of(config: RunnableConfig) -> TurnRecorder:
    return config["configurable"]["turn"]
