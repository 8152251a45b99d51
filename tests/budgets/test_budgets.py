"""Per-user token and cost budgets, checked before the model is called, over two real `agentctl serve` replicas that
share one PostgreSQL (the simulator as their model)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime
import uuid
from collections.abc import Iterator

import asyncpg
import httpx
import pytest

from agentctl.simulator.process import RunningSimulator
from tests.chat.conftest import Conversation, answer_of, parse_events, running_replicas
from tests.support import ApiClient


@pytest.fixture(scope="module")
def replicas(
    tmp_path_factory: pytest.TempPathFactory, migrated_database_url: str, simulator: RunningSimulator
) -> Iterator[tuple[ApiClient, ApiClient]]:
    with running_replicas(
        tmp_path_factory,
        migrated_database_url,
        simulator,
        "budget",
        AGENTCTL_AUTH__JWT_SECRET="budget-replicas-share-this-signing-secret-0123456789",  # tokens work on both
    ) as replicas:
        yield replicas


def _set_budget(database_url: str, user_token_owner: str, **columns: float | None) -> None:
    async def update() -> None:
        connection = await asyncpg.connect(database_url)
        try:
            for name, value in columns.items():
                await connection.execute(
                    f"UPDATE users SET budget_{name} = $1 WHERE id = $2", value, uuid.UUID(user_token_owner)
                )
        finally:
            await connection.close()

    asyncio.run(update())


def _usage(api: ApiClient, token: str) -> dict:
    response = api.request("GET", "/auth/me/usage", token=token)
    assert response.status_code == 200, response.text
    return response.json()


def _user_id(api: ApiClient, token: str) -> str:
    return api.request("GET", "/auth/me", token=token).json()["id"]


def test_usage_is_counted_and_a_budget_refuses_at_its_limit_not_one_token_before(
    replicas: tuple[ApiClient, ApiClient], migrated_database_url: str
) -> None:
    first, second = replicas
    conversation = Conversation(first)
    user_id = _user_id(first, conversation.user_token)
    assert _usage(first, conversation.user_token)["day"]["tokens"] == 0
    answered = conversation.send("count me")
    assert answered.status_code == 200
    spent = answered.json()["usage"]["input_tokens"] + answered.json()["usage"]["output_tokens"]
    usage = _usage(second, conversation.user_token)  # counted where every replica reads it
    assert usage["day"]["tokens"] == spent
    assert usage["day"]["turns"] == 1
    assert usage["month"]["tokens"] == spent
    assert usage["day"]["limit_tokens"] is None
    tomorrow = datetime.datetime.now(tz=datetime.UTC).date() + datetime.timedelta(days=1)
    assert usage["day"]["refills_at"].startswith(tomorrow.isoformat())

    _set_budget(migrated_database_url, user_id, daily_tokens=spent + 1)  # one token left: the turn may start
    on_second = Conversation(second, user_token=conversation.user_token)
    assert on_second.send("one more").status_code == 200

    _set_budget(migrated_database_url, user_id, daily_tokens=spent)  # exactly at the limit: refused
    refused = on_second.send("and another")
    assert refused.status_code == 429
    problem = refused.json()
    assert problem["type"].endswith("budget-exceeded")
    assert problem["budget"]["period"] == "day"
    assert problem["budget"]["limit"] == spent
    assert problem["budget"]["spent"] > spent
    assert "refills at" in problem["detail"]
    assert int(refused.headers["retry-after"]) >= 1
    assert _usage(first, conversation.user_token)["day"]["limit_tokens"] == spent

    # The OpenAI-compatible route says it in OpenAI's words.
    key = first.request("POST", "/auth/api-keys", token=conversation.user_token, json={"name": "k"}).json()["key"]
    completion = httpx.post(
        f"{first.server.base_url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": "Agent", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert completion.status_code == 429
    assert completion.json()["error"]["code"] == "insufficient_quota"

    _set_budget(migrated_database_url, user_id, daily_tokens=None, monthly_cost_usd=0.0)  # a cost budget of nothing
    refused = conversation.send("free?")
    assert refused.status_code == 429
    assert refused.json()["budget"]["period"] == "month"


def test_two_replicas_spending_for_one_user_at_once_are_both_counted(replicas: tuple[ApiClient, ApiClient]) -> None:
    first, second = replicas
    owner = Conversation(first)
    conversations = [owner] + [
        Conversation(replica, user_token=owner.user_token) for replica in (second, first, second, first, second)
    ]
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        # Six sessions of one user, two answered at a time, on alternating replicas.
        results = list(
            pool.map(
                lambda pair: pair[1].send(f"concurrent {pair[0]}"),
                enumerate(conversations),
            )
        )
    assert all(result.status_code == 200 for result in results)
    spent = sum(result.json()["usage"]["input_tokens"] + result.json()["usage"]["output_tokens"] for result in results)
    usage = _usage(first, owner.user_token)
    assert usage["day"]["turns"] == 6
    assert usage["day"]["tokens"] == spent


def test_a_turn_in_flight_is_never_cut_for_the_budget(
    replicas: tuple[ApiClient, ApiClient], migrated_database_url: str, simulator: RunningSimulator
) -> None:
    first, _ = replicas
    conversation = Conversation(first)
    simulator.configure({"ttft_ms": 300, "tokens_per_second": 40})
    with conversation.open_stream("a slow answer") as stream:
        lines = stream.iter_lines()
        next(lines)
        _set_budget(migrated_database_url, _user_id(first, conversation.user_token), daily_tokens=0)
        events = parse_events(lines)
    assert events[-1][1] == "done"
    assert answer_of(events)
    assert conversation.send("next").status_code == 429
