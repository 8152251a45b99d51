"""Accounts: created, found and updated here; other capabilities call these, never the table."""

from __future__ import annotations

import datetime
import uuid

import asyncpg

from server.errors import ConflictError, NotFoundError
from server.security.text import normalize_email
from server.users.tables import User


class EmailTakenError(ConflictError):
    code = "email-taken"


class UserNotFoundError(NotFoundError):
    code = "user-not-found"


# A user's own budget limits, by the name of the setting they override (AGENTCTL_BUDGET__*); NULL: the default.
BUDGET_OVERRIDES = {
    "daily_tokens": User.budget_daily_tokens,
    "monthly_tokens": User.budget_monthly_tokens,
    "daily_cost_usd": User.budget_daily_cost_usd,
    "monthly_cost_usd": User.budget_monthly_cost_usd,
}


async def create_user(*, email: str, password_hash: str, username: str | None) -> User:
    """Insert an account; the email must already be normalised (lower case)."""
    user = User(email=email, password_hash=password_hash, username=username)
    try:
        await user.save()
    except asyncpg.UniqueViolationError:
        raise EmailTakenError("an account with this email already exists", extra={"field": "email"}) from None
    return user


async def find_user_by_email(email: str) -> User | None:
    return await User.objects().get(User.email == email)


async def get_user(user_id: uuid.UUID) -> User:
    user = await User.objects().get(User.id == user_id)
    if user is None:
        raise UserNotFoundError("no such user")
    return user


async def user_exists(user_id: uuid.UUID) -> bool:
    return await User.exists().where(User.id == user_id)


async def find_user(email_or_id: str) -> User:
    """The account an operator names by email or by id; 404 naming what was looked for."""
    wanted = email_or_id.strip()
    try:
        user = await User.objects().get(User.id == uuid.UUID(wanted))
    except ValueError:
        try:
            email = normalize_email(wanted)
        except ValueError:
            email = wanted.lower()
        user = await find_user_by_email(email)
    if user is None:
        raise UserNotFoundError(f"no user with the email or id {wanted!r}")
    return user


async def replace_password_hash(*, user_id: uuid.UUID, password_hash: str) -> None:
    await User.update({User.password_hash: password_hash}).where(User.id == user_id)


async def set_disabled(*, user_id: uuid.UUID, disabled: bool) -> datetime.datetime | None:
    """Disable the account (from now, unless it already is) or enable it; when it is disabled since, if it is."""
    if disabled:
        await User.update({User.disabled_at: datetime.datetime.now(tz=datetime.UTC)}).where(
            (User.id == user_id) & User.disabled_at.is_null()
        )
    else:
        await User.update({User.disabled_at: None}).where(User.id == user_id)
    return (await get_user(user_id)).disabled_at


def budget_overrides_of(user: User) -> dict[str, int | float | None]:
    """The user's overrides by setting name (None: the default applies)."""
    return {name: getattr(user, column._meta.name) for name, column in BUDGET_OVERRIDES.items()}


async def set_budget_overrides(*, user_id: uuid.UUID, changes: dict[str, int | float | None]) -> User:
    """Write some of the user's budget overrides, by setting name (None clears one: the default applies again)."""
    if changes:
        await User.update({BUDGET_OVERRIDES[name]: value for name, value in changes.items()}).where(User.id == user_id)
    return await get_user(user_id)


async def delete_user(user_id: uuid.UUID) -> bool:
    """Delete the account row; what references it goes with it (the foreign keys cascade, and a trigger deletes its
    memories). False if there was none."""
    deleted = await User.delete().where(User.id == user_id).returning(User.id)
    return bool(deleted)
