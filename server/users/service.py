"""Accounts: created, found and updated here; other capabilities call these, never the table."""

from __future__ import annotations

import uuid

import asyncpg

from server.errors import ConflictError, NotFoundError
from server.users.tables import User


class EmailTakenError(ConflictError):
    code = "email-taken"


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
        raise NotFoundError("no such user")
    return user


async def replace_password_hash(*, user_id: uuid.UUID, password_hash: str) -> None:
    await User.update({User.password_hash: password_hash}).where(User.id == user_id)
