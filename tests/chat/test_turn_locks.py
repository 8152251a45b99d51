"""Turn locks: one turn per session across workers, and as many sessions' turns at once as come, whatever the
database pool's size."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import httpx
import pytest

from agentctl.config import Settings
from agentctl.simulator.process import RunningSimulator
from server.chat.locks import SessionBusyError, TurnLocks
from tests.chat.conftest import Conversation, serve_with_model
from tests.support import ApiClient


async def test_a_session_is_busy_in_this_worker_and_in_another_until_released(migrated_database_url: str) -> None:
    settings = Settings().database
    here, there = TurnLocks(migrated_database_url, settings), TurnLocks(migrated_database_url, settings)
    await here.open()
    await there.open()
    try:
        session, other = uuid.uuid4(), uuid.uuid4()
        await here.take(session)
        await here.take(other)  # many turns on one connection
        with pytest.raises(SessionBusyError):
            await here.take(session)  # PostgreSQL would grant it again (re-entrant): the worker refuses
        with pytest.raises(SessionBusyError):
            await there.take(session)
        await here.release(session)
        await there.take(session)
        await there.release(session)
        assert here.usage() == (1, 0)
    finally:
        await here.close()  # closing releases what is still held
        await there.close()
    again = TurnLocks(migrated_database_url, settings)
    await again.open()
    try:
        await again.take(other)
    finally:
        await again.close()


def test_turns_in_flight_are_not_capped_by_the_pool(
    tmp_path: Path, migrated_database_url: str, simulator: RunningSimulator
) -> None:
    """One worker with a pool of 2: twelve sessions' slow turns at once all answer (a lock connection per turn
    capped a worker at pool-size turns, the rest timing out with 503)."""
    server = serve_with_model(
        tmp_path,
        migrated_database_url,
        simulator,
        AGENTCTL_DATABASE__POOL_MAX_SIZE="2",
        AGENTCTL_DATABASE__CONNECT_TIMEOUT_SECONDS="2",
        AGENTCTL_MEMORY__ENABLED="false",
    )
    try:
        server.wait_until_healthy()
        api = ApiClient(server)
        user_token = api.new_user()[1]
        conversations = [Conversation(api, user_token=user_token) for _ in range(12)]
        simulator.configure({"ttft_ms": 2500})

        async def ask(conversation: Conversation) -> int:
            async with httpx.AsyncClient(timeout=30) as client:
                response = await client.post(
                    f"{api.base_url}/chatbot/chat",
                    headers={"Authorization": f"Bearer {conversation.token}"},
                    json={"messages": [{"role": "user", "content": "hello"}]},
                )
                return response.status_code

        async def all_at_once() -> list[int]:
            return await asyncio.gather(*(ask(conversation) for conversation in conversations))

        assert asyncio.run(all_at_once()) == [200] * 12
    finally:
        simulator.configure({})
        server.terminate()
