"""Reading recorded turns for other capabilities (evaluation, analytics), so they never query chat's tables."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from server.chat.tables import ChatTurn


@dataclass(frozen=True)
class TurnRecord:
    id: uuid.UUID
    session_id: uuid.UUID | None  # None for a turn of a conversation that was not stored (/v1 without a session)
    created_at: datetime
    input: str
    output: str
    trace_id: str | None


async def answered_turns(
    *, since: datetime, until: datetime, session_id: uuid.UUID | None = None, limit: int | None = None
) -> list[TurnRecord]:
    """Turns that ended with an answer in [since, until), newest first (``limit``: the newest that many)."""
    where = (
        (ChatTurn.created_at >= since)
        & (ChatTurn.created_at < until)
        & (ChatTurn.status == "done")
        & (ChatTurn.output != "")
    )
    if session_id is not None:
        where &= ChatTurn.session == session_id
    query = (
        ChatTurn.select(
            ChatTurn.id, ChatTurn.session, ChatTurn.created_at, ChatTurn.input, ChatTurn.output, ChatTurn.trace_id
        )
        .where(where)
        .order_by(ChatTurn.created_at, ascending=False)
        .order_by(ChatTurn.id, ascending=False)
    )
    if limit is not None:
        query = query.limit(limit)
    return [
        TurnRecord(
            id=row["id"],
            session_id=row["session"],
            created_at=row["created_at"],
            input=row["input"],
            output=row["output"],
            trace_id=row["trace_id"],
        )
        for row in await query
    ]


async def turn_records_of(owner_id: uuid.UUID) -> list[dict[str, Any]]:
    """Every turn record of the user, oldest first (an export)."""
    return (
        await ChatTurn.select(
            ChatTurn.id,
            ChatTurn.session.as_alias("session_id"),
            ChatTurn.surface,
            ChatTurn.input,
            ChatTurn.output,
            ChatTurn.status,
            ChatTurn.error_type,
            ChatTurn.model,
            ChatTurn.input_tokens,
            ChatTurn.output_tokens,
            ChatTurn.cached_tokens,
            ChatTurn.cost_usd,
            ChatTurn.tool_calls,
            ChatTurn.created_at,
            ChatTurn.finished_at,
        )
        .where(ChatTurn.owner == owner_id)
        .order_by(ChatTurn.created_at)
        .order_by(ChatTurn.id)
    )


async def turn_count_of(owner_id: uuid.UUID) -> int:
    return await ChatTurn.count().where(ChatTurn.owner == owner_id)
