"""Chat sessions: every read and write is scoped to the owner; someone else's session does not exist."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from server.budgets.service import Limits, overrides_of
from server.errors import NotFoundError
from server.sessions.tables import ChatSession


class SessionNotFoundError(NotFoundError):
    code = "session-not-found"


async def create_session(*, owner_id: uuid.UUID, name: str = "") -> ChatSession:
    session = ChatSession(owner=owner_id, name=name)
    await session.save()
    return session


async def get_owned_session(*, owner_id: uuid.UUID, session_id: uuid.UUID) -> ChatSession:
    """The session if it belongs to ``owner_id``; otherwise 404, never 403, so existence is not confirmed."""
    session = await ChatSession.objects().get((ChatSession.id == session_id) & (ChatSession.owner == owner_id))
    if session is None:
        raise SessionNotFoundError("no such session")
    return session


@dataclass(frozen=True)
class SessionOwner:
    """Who a turn in a session is for: the name its prompt uses, and their budget overrides."""

    name: str | None
    budget_overrides: Limits


async def owner_of_session(*, owner_id: uuid.UUID, session_id: uuid.UUID) -> SessionOwner:
    """The owner's name and budget overrides, if the session belongs to them (one query: a turn checks all at
    once)."""
    # Raw SQL: every turn asks, and building the joined select through the query builder cost more than the query.
    rows = await ChatSession.raw(
        "SELECT u.username, u.budget_daily_tokens, u.budget_monthly_tokens, u.budget_daily_cost_usd, "
        "u.budget_monthly_cost_usd FROM chat_sessions s JOIN users u ON u.id = s.owner "
        "WHERE s.id = {} AND s.owner = {}",
        session_id,
        owner_id,
    )
    row = rows[0] if rows else None
    if row is None:
        raise SessionNotFoundError("no such session")
    return SessionOwner(row["username"], overrides_of(row))


async def owner_name_of_session(*, owner_id: uuid.UUID, session_id: uuid.UUID) -> str | None:
    """The owner's display name, if the session belongs to them."""
    return (await owner_of_session(owner_id=owner_id, session_id=session_id)).name


async def list_sessions(*, owner_id: uuid.UUID, limit: int, offset: int) -> tuple[list[ChatSession], int]:
    """A page of the owner's sessions, most recently active first, and how many there are in all."""
    page = (
        await ChatSession.objects()
        .where(ChatSession.owner == owner_id)
        .order_by(ChatSession.updated_at, ascending=False)
        .order_by(ChatSession.id)
        .limit(limit)
        .offset(offset)
    )
    total = await ChatSession.count().where(ChatSession.owner == owner_id)
    return page, total


async def rename_session(*, owner_id: uuid.UUID, session_id: uuid.UUID, name: str) -> ChatSession:
    session = await get_owned_session(owner_id=owner_id, session_id=session_id)
    session.name = name
    await session.save()
    return session


async def delete_session(*, owner_id: uuid.UUID, session_id: uuid.UUID) -> None:
    """Delete the session and everything stored under it (the database cascades from the session row)."""
    deleted = (
        await ChatSession.delete()
        .where((ChatSession.id == session_id) & (ChatSession.owner == owner_id))
        .returning(ChatSession.id)
    )
    if not deleted:
        raise SessionNotFoundError("no such session")


async def sessions_of(*, owner_id: uuid.UUID) -> list[ChatSession]:
    """Every session of the owner, oldest first (an export, a deletion)."""
    return await ChatSession.objects().where(ChatSession.owner == owner_id).order_by(ChatSession.created_at)
