"""Reading recorded turns for other capabilities (evaluation, analytics), so they never query chat's tables."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Literal

from piccolo.columns.combination import Combinable

from server.chat.tables import ChatTurn


@dataclass(frozen=True)
class TurnRecord:
    id: uuid.UUID
    session_id: uuid.UUID | None  # None for a turn of a conversation that was not stored (/v1 without a session)
    created_at: datetime
    input: str
    output: str
    trace_id: str | None


def _answered() -> Combinable:
    return (ChatTurn.status == "done") & (ChatTurn.output != "")


def _answered_between(since: datetime, until: datetime) -> Combinable:
    return (ChatTurn.created_at >= since) & (ChatTurn.created_at < until) & _answered()


async def answered_turns(
    *, since: datetime, until: datetime, session_id: uuid.UUID | None = None, limit: int | None = None
) -> list[TurnRecord]:
    """Turns that ended with an answer in [since, until), newest first (``limit``: the newest that many)."""
    where = _answered_between(since, until)
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


@dataclass(frozen=True)
class RecordedTurn:
    """A turn record with what a replay case keeps of it: the answer, its tool calls, cost and checkpoints."""

    id: uuid.UUID
    session_id: uuid.UUID | None  # None: an OpenAI-compatible request with no stored conversation
    created_at: datetime
    surface: str
    input: str
    output: str
    tool_calls: list[dict[str, Any]]  # {name, arguments, status, result (its first 300 characters)}
    model: str | None
    input_tokens: int
    output_tokens: int
    cost_usd: float
    latency_ms: float
    start_checkpoint: str | None  # the conversation as the turn found it
    checkpoint_id: str | None  # the conversation once the turn ended
    previous_run: uuid.UUID | None


async def turns_for_dataset(
    *, since: datetime, until: datetime, excluded_owners: Sequence[uuid.UUID] = ()
) -> list[RecordedTurn]:
    """New messages answered in [since, until), oldest first: resumed runs (an approval, an answer to the agent's
    question) are left out, their input being no message of the user's, and so are the turns of
    ``excluded_owners`` (the account replays run as)."""
    where = _answered_between(since, until) & ChatTurn.resumed.eq(False) & (ChatTurn.input != "")
    if excluded_owners:
        where &= ChatTurn.owner.not_in(list(excluded_owners))
    rows = (
        await ChatTurn.select(
            ChatTurn.id,
            ChatTurn.session.as_alias("session_id"),
            ChatTurn.created_at,
            ChatTurn.surface,
            ChatTurn.input,
            ChatTurn.output,
            ChatTurn.tool_calls,
            ChatTurn.model,
            ChatTurn.input_tokens,
            ChatTurn.output_tokens,
            ChatTurn.cost_usd,
            ChatTurn.latency_ms,
            ChatTurn.start_checkpoint,
            ChatTurn.checkpoint_id,
            ChatTurn.previous_run,
        )
        .where(where)
        .order_by(ChatTurn.created_at)
        .order_by(ChatTurn.id)
        .output(load_json=True)
    )
    return [RecordedTurn(**row) for row in rows]


async def resumed_runs_between(*, since: datetime, until: datetime) -> int:
    """Answered runs in [since, until) that resumed a paused turn rather than answering a new message."""
    return await ChatTurn.count().where(_answered_between(since, until) & ChatTurn.resumed.eq(True))


async def earlier_exchanges(session_id: uuid.UUID, *, before: datetime, limit: int) -> list[tuple[str, str]]:
    """The session's newest ``limit`` (message, answer) pairs created before ``before``, oldest first: its
    conversation as the turn records keep it (resumed runs left out, as above)."""
    if limit <= 0:
        return []
    rows = (
        await ChatTurn.select(ChatTurn.input, ChatTurn.output)
        .where(
            (ChatTurn.session == session_id) & (ChatTurn.created_at < before) & _answered() & ChatTurn.resumed.eq(False)
        )
        .order_by(ChatTurn.created_at, ascending=False)
        .order_by(ChatTurn.id, ascending=False)
        .limit(limit)
    )
    return [(row["input"], row["output"]) for row in reversed(rows)]


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


async def existing_turn_ids(turn_ids: list[uuid.UUID]) -> set[uuid.UUID]:
    """Which of these turns are still recorded (not deleted with their user or session, nor by retention)."""
    found: set[uuid.UUID] = set()
    for start in range(0, len(turn_ids), 1000):
        rows = await ChatTurn.select(ChatTurn.id).where(ChatTurn.id.is_in(turn_ids[start : start + 1000]))
        found.update(row["id"] for row in rows)
    return found
