"""Two replicas (two `agentctl serve` processes) sharing one PostgreSQL and one Redis: a user's rate limit is one
limit whichever replica they reach, and what one replica remembers about a user the other recalls. (Revocation,
one run per session, cancel, rejoin and budgets across replicas are tested in tests/apikeys, tests/accounts,
tests/chat/test_runs.py and tests/budgets.)"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from agentctl.simulator.process import RunningSimulator
from tests.chat.conftest import Conversation, running_replicas
from tests.memory.test_memory import RECALL_PROBE, tell
from tests.support import ApiClient

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def replicas(
    tmp_path_factory: pytest.TempPathFactory, migrated_database_url: str, simulator: RunningSimulator
) -> Iterator[tuple[ApiClient, ApiClient]]:
    with running_replicas(
        tmp_path_factory,
        migrated_database_url,
        simulator,
        "shared",
        REDIS_URL="redis://127.0.0.1:6379/14",
        AGENTCTL_REDIS__KEY_PREFIX=f"shared-{uuid.uuid4().hex[:8]}",
        AGENTCTL_AUTH__JWT_SECRET="shared-replicas-sign-with-this-one-secret-0123456789",
        AGENTCTL_RATELIMIT__CHAT="4/minute",
    ) as pair:
        yield pair


def test_a_users_chat_limit_is_one_limit_across_replicas(
    replicas: tuple[ApiClient, ApiClient], simulator: RunningSimulator
) -> None:
    simulator.configure({})
    one, two = replicas
    user_token = one.new_user()[1]
    on_one, on_two = Conversation(one, user_token=user_token), Conversation(two, user_token=user_token)
    statuses = [conversation.send("hello").status_code for conversation in (on_one, on_two, on_one, on_two)]
    assert statuses == [200, 200, 200, 200]
    refused = on_two.send("one more")
    assert refused.status_code == 429
    assert refused.json()["type"].endswith("rate-limited")
    assert int(refused.headers["Retry-After"]) > 0
    assert on_one.send("and here?").status_code == 429
    # Another user has limits of their own.
    assert Conversation(two).send("hello").status_code == 200


def test_what_one_replica_remembers_the_other_recalls(
    replicas: tuple[ApiClient, ApiClient], simulator: RunningSimulator
) -> None:
    simulator.configure({"script": [{"match": RECALL_PROBE, "echo_system": True}]})
    one, two = replicas
    told = Conversation(one)
    tell(one, told, "I play the cello on Sundays.")
    asked = Conversation(two, user_token=told.user_token)
    response = asked.send(f"{RECALL_PROBE}?")
    assert response.status_code == 200, response.text
    assert "I play the cello on Sundays." in response.json()["messages"][0]["content"]
    listed = two.request("GET", "/memories", token=told.user_token).json()["memories"]
    assert [memory["memory"] for memory in listed] == ["I play the cello on Sundays."]
