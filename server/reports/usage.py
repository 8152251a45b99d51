"""What the service was used for, from the turn records (``chat_turns``): turns, tokens, cost and errors over a
window, by user, by model or by UTC day. One grouped query; the operator's `agentctl usage` prints it."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from server.chat.tables import ChatTurn
from server.evaluation.window import Window

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


async def usage_report(window: Window, by: UsageGrouping) -> list[UsageLine]:
    """Turns created in the window, grouped ``by`` user (most expensive first), model (likewise) or day (in order)."""
    key = _GROUP_KEYS[by]
    rows = await ChatTurn.raw(
        f"SELECT {key} AS key, count(*) AS turns, COALESCE(sum(t.input_tokens), 0) AS input_tokens, "
        "COALESCE(sum(t.output_tokens), 0) AS output_tokens, COALESCE(sum(t.cost_usd), 0) AS cost_usd, "
        "count(*) FILTER (WHERE t.status = 'error') AS errors "
        "FROM chat_turns t LEFT JOIN users u ON u.id = t.owner "
        f"WHERE t.created_at >= {{}} AND t.created_at < {{}} GROUP BY 1 ORDER BY {_ORDER[by]}",
        window.since,
        window.until,
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
