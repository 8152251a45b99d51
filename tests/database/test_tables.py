"""The first tables: UTC stamps, normalised unique emails, sessions that belong to their owner."""

from __future__ import annotations

import asyncio
import datetime
import uuid

import asyncpg
import pytest

from server.database.engine import Database
from server.sessions.tables import ChatSession
from server.users.tables import User


def unique_email() -> str:
    return f"user-{uuid.uuid4().hex[:10]}@example.com"


async def test_rows_get_uuid_ids_and_utc_created_at(database: Database) -> None:
    user = User(email=unique_email(), password_hash="hash")
    await user.save()
    stored = await User.objects().get(User.id == user.id)
    assert isinstance(stored.id, uuid.UUID)
    assert stored.created_at.utcoffset() == datetime.timedelta(0)
    assert abs(stored.created_at - datetime.datetime.now(tz=datetime.UTC)) < datetime.timedelta(minutes=1)


async def test_email_is_unique_and_stored_lower_case(database: Database) -> None:
    email = unique_email()
    await User(email=email, password_hash="hash").save()
    with pytest.raises(asyncpg.UniqueViolationError):
        await User(email=email, password_hash="other").save()
    with pytest.raises(asyncpg.CheckViolationError):
        await User(email=unique_email().upper(), password_hash="hash").save()


async def test_session_updated_at_moves_and_deleting_the_owner_deletes_sessions(database: Database) -> None:
    owner = User(email=unique_email(), password_hash="hash")
    await owner.save()
    session = ChatSession(owner=owner.id, name="first")
    await session.save()
    created = (await ChatSession.objects().get(ChatSession.id == session.id)).updated_at

    await asyncio.sleep(0.01)
    session.name = "renamed"
    await session.save()
    renamed = await ChatSession.objects().get(ChatSession.id == session.id)
    assert renamed.name == "renamed"
    assert renamed.updated_at > created

    await User.delete().where(User.id == owner.id)
    assert await ChatSession.count().where(ChatSession.owner == owner.id) == 0
