"""`agentctl eval dataset`: recorded turns as replay cases, each with the conversation before it and what the agent
answered then (its tool calls with their results, the model, cost and latency).

Only turns the database still holds are exported: a deleted user's or session's turns went with them, and turns
the retention sweeper is about to delete are left out even before it runs. The conversation before a turn comes
from LangGraph's checkpoints while they are kept (the newest turns of a conversation keep theirs); once retention
pruned them, it is rebuilt from the session's earlier turn records, which hold each message and its answer but not
the tool calls in between.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage, trim_messages
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from psycopg import AsyncConnection
from psycopg.rows import dict_row

from server.agent.context import paired_tool_calls
from server.chat.records import RecordedTurn, earlier_exchanges, resumed_runs_between, turns_for_dataset
from server.evaluation.cases import CaseMessage, CaseToolCall, RecordedToolCall, RecordedUsage, ReplayCase
from server.evaluation.service import drawn_in_order


@dataclass
class DatasetExport:
    """The cases, and what explains the ones that are not there or were built from less."""

    cases: list[ReplayCase] = field(default_factory=list)
    clamped_since: datetime | None = None  # the window started before what retention keeps: it starts here instead
    skipped_resumed: int = 0  # runs that resumed a paused turn: their input is no message of the user's
    context_from_checkpoint: int = 0
    context_from_records: int = 0  # the checkpoints were pruned: messages and answers only, no tool calls


@asynccontextmanager
async def checkpoint_reader(url: str) -> AsyncIterator[AsyncPostgresSaver]:
    """LangGraph's checkpoints in the database at ``url``, on a psycopg connection of their own."""
    async with await AsyncConnection.connect(
        url, autocommit=True, prepare_threshold=0, row_factory=dict_row
    ) as connection:
        yield AsyncPostgresSaver(connection)


async def export_cases(
    *,
    since: datetime,
    until: datetime,
    sample: int | None,
    seed: int,
    context_messages: int,
    now: datetime,
    turn_record_days: float | None,
    checkpoints: BaseCheckpointSaver[Any] | None,
    excluded_owners: Sequence[uuid.UUID] = (),
) -> DatasetExport:
    """The answered turns of [since, until) as replay cases, oldest first (``sample`` of them drawn with ``seed``),
    each with at most ``context_messages`` messages of the conversation before it."""
    export = DatasetExport()
    if turn_record_days is not None:
        kept_from = now - timedelta(days=turn_record_days)
        if kept_from > since:
            since = export.clamped_since = kept_from
    if since >= until:
        return export
    export.skipped_resumed = await resumed_runs_between(since=since, until=until)
    turns = drawn_in_order(
        await turns_for_dataset(since=since, until=until, excluded_owners=excluded_owners),
        sample=sample,
        seed=seed,
        order=lambda turn: (turn.created_at, str(turn.id)),
    )
    for turn in turns:
        export.cases.append(await _case_of(turn, export, context_messages=context_messages, checkpoints=checkpoints))
    return export


async def _case_of(
    turn: RecordedTurn, export: DatasetExport, *, context_messages: int, checkpoints: BaseCheckpointSaver[Any] | None
) -> ReplayCase:
    # The conversation once the turn ended holds everything before its message (with the messages an API client
    # sent along, which the checkpoint it started from lacks) and its tool calls' full results.
    tool_calls = [_recorded_call(entry) for entry in turn.tool_calls if entry.get("name")]
    before: list[BaseMessage] | None = None
    ended = await _messages_at(checkpoints, turn.session_id, turn.checkpoint_id)
    question = _question_index(ended, turn.id)
    if ended is not None and question is not None:
        before, tool_calls = ended[:question], _tool_calls_in(ended[question + 1 :])
    else:
        before = await _messages_at(checkpoints, turn.session_id, turn.start_checkpoint)
    if before is not None:
        export.context_from_checkpoint += 1
    elif turn.session_id is not None:
        before = await _conversation_from_records(turn.session_id, turn.created_at, context_messages)
        export.context_from_records += 1
    return ReplayCase(
        id=str(turn.id),
        turn_id=turn.id,
        session_id=turn.session_id,
        created_at=turn.created_at,
        surface=turn.surface,
        input=turn.input,
        output=turn.output,
        model=turn.model,
        usage=RecordedUsage(input_tokens=turn.input_tokens, output_tokens=turn.output_tokens, cost_usd=turn.cost_usd),
        latency_ms=turn.latency_ms,
        tool_calls=tool_calls,
        context=_context_of(before or [], context_messages),
    )


async def _messages_at(
    checkpoints: BaseCheckpointSaver[Any] | None, session_id: uuid.UUID | None, checkpoint_id: str | None
) -> list[BaseMessage] | None:
    """The conversation's messages at one checkpoint; None when there is none (no session, or pruned)."""
    if checkpoints is None or session_id is None or checkpoint_id is None:
        return None
    found = await checkpoints.aget_tuple(
        {"configurable": {"thread_id": str(session_id), "checkpoint_ns": "", "checkpoint_id": checkpoint_id}}
    )
    if found is None:
        return None
    return list(found.checkpoint["channel_values"].get("messages", []))


def _question_index(messages: list[BaseMessage] | None, turn_id: uuid.UUID) -> int | None:
    """Where the turn's own message stands (the chat gives it the turn's id)."""
    return next(
        (
            index
            for index, message in enumerate(messages or [])
            if isinstance(message, HumanMessage) and message.id == str(turn_id)
        ),
        None,
    )


async def _conversation_from_records(session_id: uuid.UUID, created_at: datetime, most: int) -> list[BaseMessage]:
    exchanges = await earlier_exchanges(session_id, before=created_at, limit=most // 2 + 1)
    return [message for asked, answered in exchanges for message in (HumanMessage(asked), AIMessage(answered))]


def _context_of(messages: Sequence[BaseMessage], most: int) -> list[CaseMessage]:
    """The newest ``most`` messages at most, starting on a user message, each tool call with its results; an
    interrupted turn's unanswered tool call is left out, as the agent leaves it out of what a model reads."""
    if most <= 0:
        return []
    history = [
        message
        for message in paired_tool_calls(messages)
        if isinstance(message, HumanMessage | AIMessage | ToolMessage)
    ]
    kept = trim_messages(
        history, max_tokens=most, token_counter=len, strategy="last", start_on="human", allow_partial=False
    )
    return [_case_message(message) for message in kept]


def _case_message(message: BaseMessage) -> CaseMessage:
    if isinstance(message, HumanMessage):
        return CaseMessage(role="user", content=message.text)
    if isinstance(message, ToolMessage):
        return CaseMessage(role="tool", content=message.text, tool_call_id=message.tool_call_id, name=message.name)
    calls = message.tool_calls if isinstance(message, AIMessage) else []
    return CaseMessage(
        role="assistant",
        content=message.text,
        tool_calls=[CaseToolCall(id=call["id"] or "", name=call["name"], arguments=call["args"]) for call in calls],
    )


def _tool_calls_in(messages: Sequence[BaseMessage]) -> list[RecordedToolCall]:
    """The tool calls the turn made, in the order their results came, with the results whole."""
    asked = {call["id"]: call for message in messages if isinstance(message, AIMessage) for call in message.tool_calls}
    found = []
    for message in messages:
        if not isinstance(message, ToolMessage) or (call := asked.get(message.tool_call_id)) is None:
            continue
        found.append(
            RecordedToolCall(name=call["name"], arguments=call["args"], result=message.text, status=message.status)
        )
    return found


def _recorded_call(entry: dict[str, Any]) -> RecordedToolCall:
    """A tool call as the turn record keeps it (its result's first 300 characters)."""
    return RecordedToolCall(
        name=str(entry["name"]),
        arguments=entry.get("arguments") or {},
        result=str(entry.get("result") or ""),
        status=str(entry.get("status") or "success"),
    )
