"""Reading recorded turns for other capabilities (evaluation, analytics), so they never query chat's tables."""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Literal

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


# -- what the service was used for: turns, tokens, cost and errors over a window, by user, model or UTC day (one
# grouped query; the operator's `agentctl usage` prints it)

UsageGrouping = Literal["user", "model", "day"]

# The group each turn falls in. A turn of a deleted user is gone with the user; a turn that never reached a model has
# no model.
_GROUP_KEYS: dict[UsageGrouping, str] = {
    "user": "COALESCE(u.email, t.owner::text)",
    "model": "COALESCE(t.model, '(none)')",
    "day": "to_char(t.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
}
_ORDER: dict[UsageGrouping, str] = {
    "user": "cost_usd DESC, turns DESC, key",
    "model": "cost_usd DESC, turns DESC, key",
    "day": "key",
}


@dataclass(frozen=True)
class UsageLine:
    key: str  # the user's email, the model, or the day
    turns: int
    input_tokens: int
    output_tokens: int
    cost_usd: float
    errors: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


async def usage_report(*, since: datetime, until: datetime, by: UsageGrouping) -> list[UsageLine]:
    """Turns created in [since, until), grouped ``by`` user (most expensive first), model (likewise) or day (in
    order)."""
    key = _GROUP_KEYS[by]
    rows = await ChatTurn.raw(
        f"SELECT {key} AS key, count(*) AS turns, COALESCE(sum(t.input_tokens), 0) AS input_tokens, "
        "COALESCE(sum(t.output_tokens), 0) AS output_tokens, COALESCE(sum(t.cost_usd), 0) AS cost_usd, "
        "count(*) FILTER (WHERE t.status = 'error') AS errors "
        "FROM chat_turns t LEFT JOIN users u ON u.id = t.owner "
        f"WHERE t.created_at >= {{}} AND t.created_at < {{}} GROUP BY 1 ORDER BY {_ORDER[by]}",
        since,
        until,
    )
    return [
        UsageLine(
            key=row["key"],
            turns=int(row["turns"]),
            input_tokens=int(row["input_tokens"]),
            output_tokens=int(row["output_tokens"]),
            cost_usd=float(row["cost_usd"]),
            errors=int(row["errors"]),
        )
        for row in rows
    ]
