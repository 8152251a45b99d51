"""Budgets: what each user may spend a day and a month (tokens, cost), checked before a turn calls the model, from
counters every turn adds to when it is recorded (one row per user and UTC day, shared by every worker and replica).
A turn in flight is never cut: a turn that starts under the budget finishes, even if it ends over it."""

from __future__ import annotations

import calendar
import datetime
import uuid
from dataclasses import dataclass
from typing import Any

from agentctl.config import BudgetSettings
from server.budgets.tables import UserUsage
from server.errors import RateLimitedError
from server.users.tables import User


@dataclass(frozen=True)
class Spent:
    tokens: int
    cost_usd: float
    turns: int


@dataclass(frozen=True)
class Limits:
    """A user's budget (None: unlimited), their override where they have one, else the settings'."""

    daily_tokens: int | None
    monthly_tokens: int | None
    daily_cost_usd: float | None
    monthly_cost_usd: float | None


@dataclass(frozen=True)
class Usage:
    day: Spent
    month: Spent
    limits: Limits
    day_refills_at: datetime.datetime
    month_refills_at: datetime.datetime

    def exceeded(self) -> tuple[str, str, float, float, datetime.datetime] | None:
        """The first budget that is used up: (period, what, spent, limit, refills at); None if none is."""
        checks: list[tuple[str, str, float, float | None, datetime.datetime]] = [
            ("day", "tokens", self.day.tokens, self.limits.daily_tokens, self.day_refills_at),
            ("month", "tokens", self.month.tokens, self.limits.monthly_tokens, self.month_refills_at),
            ("day", "cost_usd", self.day.cost_usd, self.limits.daily_cost_usd, self.day_refills_at),
            ("month", "cost_usd", self.month.cost_usd, self.limits.monthly_cost_usd, self.month_refills_at),
        ]
        for period, what, spent, limit, refills_at in checks:
            if limit is not None and spent >= limit:
                return period, what, spent, limit, refills_at
        return None

    def as_dict(self) -> dict[str, Any]:
        def spent(value: Spent) -> dict[str, Any]:
            return {"tokens": value.tokens, "cost_usd": round(value.cost_usd, 6), "turns": value.turns}

        return {
            "day": {
                **spent(self.day),
                "limit_tokens": self.limits.daily_tokens,
                "limit_cost_usd": self.limits.daily_cost_usd,
                "refills_at": self.day_refills_at.isoformat(),
            },
            "month": {
                **spent(self.month),
                "limit_tokens": self.limits.monthly_tokens,
                "limit_cost_usd": self.limits.monthly_cost_usd,
                "refills_at": self.month_refills_at.isoformat(),
            },
        }


class BudgetExceededError(RateLimitedError):
    code = "budget-exceeded"


def budget_configured(settings: BudgetSettings) -> bool:
    """Whether any default budget is set (per-user overrides are read with the usage either way)."""
    return any(
        value is not None
        for value in (
            settings.daily_tokens,
            settings.monthly_tokens,
            settings.daily_cost_usd,
            settings.monthly_cost_usd,
        )
    )


def _periods(now: datetime.datetime) -> tuple[datetime.date, datetime.date, datetime.datetime, datetime.datetime]:
    today = now.date()
    month_start = today.replace(day=1)
    next_day = datetime.datetime.combine(today + datetime.timedelta(days=1), datetime.time(), tzinfo=datetime.UTC)
    last = calendar.monthrange(today.year, today.month)[1]
    next_month = datetime.datetime.combine(
        month_start + datetime.timedelta(days=last), datetime.time(), tzinfo=datetime.UTC
    )
    return today, month_start, next_day, next_month


async def usage_of(owner_id: uuid.UUID, settings: BudgetSettings, *, now: datetime.datetime | None = None) -> Usage:
    """The user's spending today and this month against their budget (one query)."""
    now = now or datetime.datetime.now(tz=datetime.UTC)
    today, month_start, next_day, next_month = _periods(now)
    rows = await User.raw(
        "SELECT u.budget_daily_tokens, u.budget_monthly_tokens, u.budget_daily_cost_usd, u.budget_monthly_cost_usd, "
        "COALESCE(SUM(g.input_tokens + g.output_tokens) FILTER (WHERE g.day = {}), 0) AS day_tokens, "
        "COALESCE(SUM(g.cost_usd) FILTER (WHERE g.day = {}), 0) AS day_cost, "
        "COALESCE(SUM(g.turns) FILTER (WHERE g.day = {}), 0) AS day_turns, "
        "COALESCE(SUM(g.input_tokens + g.output_tokens), 0) AS month_tokens, "
        "COALESCE(SUM(g.cost_usd), 0) AS month_cost, COALESCE(SUM(g.turns), 0) AS month_turns "
        "FROM users u LEFT JOIN user_usage g ON g.owner = u.id AND g.day >= {} WHERE u.id = {} GROUP BY u.id",
        today,
        today,
        today,
        month_start,
        owner_id,
    )
    row = rows[0] if rows else {}

    def chosen(override: str, default: Any) -> Any:
        value = row.get(override)
        return value if value is not None else default

    limits = Limits(
        daily_tokens=chosen("budget_daily_tokens", settings.daily_tokens),
        monthly_tokens=chosen("budget_monthly_tokens", settings.monthly_tokens),
        daily_cost_usd=chosen("budget_daily_cost_usd", settings.daily_cost_usd),
        monthly_cost_usd=chosen("budget_monthly_cost_usd", settings.monthly_cost_usd),
    )
    return Usage(
        day=Spent(int(row.get("day_tokens", 0)), float(row.get("day_cost", 0.0)), int(row.get("day_turns", 0))),
        month=Spent(int(row.get("month_tokens", 0)), float(row.get("month_cost", 0.0)), int(row.get("month_turns", 0))),
        limits=limits,
        day_refills_at=next_day,
        month_refills_at=next_month,
    )


async def usage_rows(owner_id: uuid.UUID) -> list[dict[str, Any]]:
    """Every day the user spent anything, oldest first (for export)."""
    rows = (
        await UserUsage.select(
            UserUsage.day, UserUsage.turns, UserUsage.input_tokens, UserUsage.output_tokens, UserUsage.cost_usd
        )
        .where(UserUsage.owner == owner_id)
        .order_by(UserUsage.day)
    )
    return [{**row, "day": row["day"].isoformat()} for row in rows]


def limits_with_defaults(overrides: Limits, settings: BudgetSettings) -> Limits:
    """A user's limits: their overrides where set, the settings' defaults elsewhere."""
    return Limits(
        daily_tokens=overrides.daily_tokens if overrides.daily_tokens is not None else settings.daily_tokens,
        monthly_tokens=overrides.monthly_tokens if overrides.monthly_tokens is not None else settings.monthly_tokens,
        daily_cost_usd=overrides.daily_cost_usd if overrides.daily_cost_usd is not None else settings.daily_cost_usd,
        monthly_cost_usd=(
            overrides.monthly_cost_usd if overrides.monthly_cost_usd is not None else settings.monthly_cost_usd
        ),
    )


NO_OVERRIDES = Limits(None, None, None, None)


def overrides_of(row: Any) -> Limits:
    """The budget overrides in a users row (a mapping or a User)."""
    get = row.get if isinstance(row, dict) else lambda name: getattr(row, name, None)
    return Limits(
        daily_tokens=get("budget_daily_tokens"),
        monthly_tokens=get("budget_monthly_tokens"),
        daily_cost_usd=get("budget_daily_cost_usd"),
        monthly_cost_usd=get("budget_monthly_cost_usd"),
    )


async def ensure_within_budget(owner_id: uuid.UUID, settings: BudgetSettings, overrides: Limits) -> None:
    """Refuse a new turn (429 budget-exceeded, saying what was spent, the limit and when it refills) once a budget is
    used up. No query when the user has no limit at all (the common case without budgets)."""
    limits = limits_with_defaults(overrides, settings)
    if all(value is None for value in vars(limits).values()):
        return
    usage = await usage_of(owner_id, settings)
    hit = usage.exceeded()
    if hit is None:
        return
    period, what, spent, limit, refills_at = hit
    unit = "tokens" if what == "tokens" else "USD"
    shown = f"{int(spent):,} of {int(limit):,}" if what == "tokens" else f"{spent:.4f} of {limit:.4f}"
    wait = max(1, int((refills_at - datetime.datetime.now(tz=datetime.UTC)).total_seconds()) + 1)
    raise BudgetExceededError(
        f"the {'daily' if period == 'day' else 'monthly'} budget is used up: {shown} {unit}; it refills at "
        f"{refills_at:%Y-%m-%d %H:%M} UTC",
        extra={
            "budget": {
                "period": period,
                "kind": what,
                "spent": spent,
                "limit": limit,
                "refills_at": refills_at.isoformat(),
            }
        },
        headers={"Retry-After": str(wait)},
    )
