"""Clients that leave a streamed answer after its first token, many at once, in rounds, on a server whose runs stop
when their client leaves (AGENTCTL_CHAT__ON_DISCONNECT=cancel): every model connection is back in its pool at
once, every history has the question before its partial answer, every turn is recorded as
interrupted, every session takes its next message at once, and the live gauges are right within a second."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import asyncpg
import httpx
import pytest

from agentctl.simulator.process import RunningSimulator
from tests.chat.conftest import Conversation, serve_with_model
from tests.support import ApiClient, metric_value

STREAMS = 30
ROUNDS = 3
# Every gauge and pool back to rest this soon after the last client left (workers sample every 0.5 s).
SETTLED_SECONDS = 1.0


async def _abandon_after_first_token(base_url: str, conversations: list[Conversation], round_number: int) -> None:
    async def one(client: httpx.AsyncClient, conversation: Conversation) -> None:
        async with client.stream(
            "POST",
            f"{base_url}/chatbot/chat/stream",
            headers={"Authorization": f"Bearer {conversation.token}"},
            json={"messages": [{"role": "user", "content": f"round {round_number}: tell me a long story"}]},
        ) as response:
            assert response.status_code == 200, await response.aread()
            async for line in response.aiter_lines():
                if line.startswith("event: token"):
                    return  # the client goes away mid-answer

    async with httpx.AsyncClient(timeout=60) as client:
        await asyncio.gather(*(one(client, conversation) for conversation in conversations))


def _live_gauges(metrics: str) -> dict[str, float]:
    return {
        "streams": metric_value(metrics, "agentctl_sse_streams_open"),
        "model connections": metric_value(metrics, 'agentctl_model_connections{lane="foreground",state="active"}'),
        "waiting for a model connection": metric_value(
            metrics, 'agentctl_model_connections{lane="foreground",state="waiting"}'
        ),
        "requests in flight": metric_value(metrics, "agentctl_http_requests_in_flight") - 1,  # the scrape itself
    }


@pytest.mark.slow
def test_abandoned_streams_return_everything_at_once(
    tmp_path: Path, migrated_database_url: str, simulator: RunningSimulator
) -> None:
    # A slow answer (200 tokens at 20/s): every stream is still running when its client leaves. Five model
    # connections per worker: a leaked one would soon leave none.
    simulator.configure({"tokens_per_second": 20, "answer_tokens": 200})
    server = serve_with_model(
        tmp_path,
        migrated_database_url,
        simulator,
        "--workers",
        "2",
        AGENTCTL_LLM__MAX_CONNECTIONS="5",
        AGENTCTL_MEMORY__ENABLED="false",
        AGENTCTL_RATELIMIT__CHAT="100000/minute",
        AGENTCTL_CHAT__ON_DISCONNECT="cancel",
    )
    server.wait_until_healthy()
    api = ApiClient(server)
    user_token = api.new_user()[1]
    conversations = [Conversation(api, user_token=user_token) for _ in range(STREAMS)]
    try:
        for round_number in range(ROUNDS):
            asyncio.run(asyncio.wait_for(_abandon_after_first_token(api.base_url, conversations, round_number), 90))
            left = time.monotonic()
            while True:  # gauges and pools, as a scrape sees them across both workers
                gauges = _live_gauges(server.get("/metrics").text)
                if not any(gauges.values()):
                    break
                assert time.monotonic() - left < SETTLED_SECONDS, gauges
                time.sleep(0.05)

        simulator.configure({})  # instant answers for the follow-ups
        for conversation in conversations:
            started = time.monotonic()
            follow_up = conversation.send("are you still there?")
            assert follow_up.status_code == 200, follow_up.text  # no 409: the session was released
            assert time.monotonic() - started < 5
            history = conversation.history()
            roles = [message["role"] for message in history]
            assert roles == ["user", "assistant"] * (ROUNDS + 1), roles
            for question, answer in zip(history[0:-2:2], history[1:-2:2], strict=True):
                assert question["content"].startswith("round ")
                assert answer.get("status") == "interrupted"
                assert answer["content"]
        asyncio.run(_assert_recorded_as_interrupted(migrated_database_url, user_token, api))
    finally:
        server.terminate()


async def _assert_recorded_as_interrupted(database_url: str, user_token: str, api: ApiClient) -> None:
    user_id = api.request("GET", "/auth/me", token=user_token).json()["id"]
    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch(
            "SELECT status, error_type, count(*) FROM chat_turns WHERE owner = $1 GROUP BY 1, 2 ORDER BY 1", user_id
        )
    finally:
        await connection.close()
    assert [tuple(row) for row in rows] == [("cancelled", "cancelled", STREAMS * ROUNDS), ("done", None, STREAMS)]
