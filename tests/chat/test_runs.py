"""Runs that outlive their connection, against real replicas sharing PostgreSQL (and Redis, or not), with the
simulator answering at a slow token pace: rejoining a dropped stream on another replica, background runs,
double-texting strategies, event expiry, ownership, bad input."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from agentctl.simulator.process import RunningSimulator
from tests.chat.conftest import Conversation, answer_of, parse_events, read_events, serve_with_model
from tests.support import ApiClient, ServeProcess, metric_value

pytestmark = pytest.mark.slow

REDIS_URL = "redis://127.0.0.1:6379/15"
SLOW = {"tokens_per_second": 25, "answer_tokens": 50}  # two seconds of answer


@dataclass
class Replicas:
    first: ApiClient
    second: ApiClient


def _replicas(
    tmp_path_factory: pytest.TempPathFactory,
    database_url: str,
    simulator: RunningSimulator,
    **env: str,
) -> Iterator[Replicas]:
    """Two `agentctl serve` processes of two workers each on one database (and, by ``env``, one Redis)."""
    common = {
        "AGENTCTL_CHAT__MAX_QUEUED": "4",
        "AGENTCTL_MEMORY__ENABLED": "false",
        "AGENTCTL_AUTH__JWT_SECRET": uuid.uuid4().hex * 2,  # replicas share their signing key, as in production
        **env,
    }
    servers: list[ServeProcess] = []
    try:
        for name in ("first", "second"):
            servers.append(
                serve_with_model(tmp_path_factory.mktemp(name), database_url, simulator, "--workers", "2", **common)
            )
        for server in servers:
            server.wait_until_healthy()
        yield Replicas(ApiClient(servers[0]), ApiClient(servers[1]))
    finally:
        for server in servers:
            server.terminate()


@pytest.fixture(scope="module")
def with_redis(
    tmp_path_factory: pytest.TempPathFactory, migrated_database_url: str, simulator: RunningSimulator
) -> Iterator[Replicas]:
    yield from _replicas(
        tmp_path_factory,
        migrated_database_url,
        simulator,
        REDIS_URL=REDIS_URL,
        AGENTCTL_REDIS__KEY_PREFIX=f"runs-{uuid.uuid4().hex[:8]}",
    )


@pytest.fixture(scope="module")
def without_redis(
    tmp_path_factory: pytest.TempPathFactory, migrated_database_url: str, simulator: RunningSimulator
) -> Iterator[Replicas]:
    yield from _replicas(tmp_path_factory, migrated_database_url, simulator, AGENTCTL_CHAT__RUN_EVENTS_TTL_SECONDS="3")


def _drop_after(talk: Conversation, text: str, tokens: int, **options: str) -> tuple[str, list]:
    """Start a streamed answer, read ``tokens`` tokens, hang up: (run id, the events received)."""
    with talk.open_stream(text, **options) as response:
        assert response.status_code == 200, response.read()
        events = parse_events(response.iter_lines(), stop_after_tokens=tokens)
        return response.headers["X-Run-Id"], events


def _run(api: ApiClient, talk: Conversation, run_id: str) -> dict:
    response = api.request("GET", f"/chatbot/runs/{run_id}", token=talk.token)
    assert response.status_code == 200, response.text
    return response.json()


def _wait(api: ApiClient, talk: Conversation, run_id: str, seconds: float = 30) -> dict:
    response = api.request("GET", f"/chatbot/runs/{run_id}/wait", token=talk.token, params={"timeout": seconds})
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize("store", ["with_redis", "without_redis"])
def test_a_dropped_stream_rejoined_on_another_replica_is_the_stored_answer_exactly(
    store: str, request: pytest.FixtureRequest, simulator: RunningSimulator
) -> None:
    replicas: Replicas = request.getfixturevalue(store)
    simulator.configure(SLOW)
    talk = Conversation(replicas.first)
    run_id, before = _drop_after(talk, "a long story please", tokens=10)
    last_id = before[-1][0]
    assert last_id == f"{run_id}:{len(before)}"  # every event carries the run and its number

    talk.api = replicas.second  # the other replica, while the answer goes on without its client
    after = read_events(
        replicas.second, f"/chatbot/runs/{run_id}/stream", talk.token, headers={"Last-Event-ID": last_id}
    )
    assert after[-1][1] == "done"
    ids = [int(event_id.rsplit(":", 1)[1]) for event_id, _name, _data in before + after]
    assert ids == list(range(1, len(ids) + 1))  # no gap, no duplicate
    history = talk.history()
    assert history[-1]["role"] == "assistant"
    assert history[-1].get("status") is None
    assert answer_of(before) + answer_of(after) == history[-1]["content"]
    assert _run(replicas.second, talk, run_id)["answer"] == history[-1]["content"]

    # From the start (no Last-Event-ID) and, for clients that cannot set headers, with ?after=, on the first one.
    whole = read_events(replicas.first, f"/chatbot/runs/{run_id}/stream", talk.token)
    assert answer_of(whole) == history[-1]["content"]
    middle = read_events(replicas.first, f"/chatbot/runs/{run_id}/stream?after=5", talk.token)
    assert [event_id for event_id, _n, _d in middle] == [event_id for event_id, _n, _d in whole][5:]

    metrics = httpx.get(f"{replicas.second.server.base_url}/metrics").text
    assert metric_value(metrics, 'agentctl_chat_run_rejoins_total{source="log"}') >= 1


def test_a_run_followed_live_from_another_replica_streams_as_it_runs(
    with_redis: Replicas, simulator: RunningSimulator
) -> None:
    simulator.configure(SLOW)
    talk = Conversation(with_redis.first)
    started = with_redis.first.request(
        "POST", "/chatbot/runs", token=talk.token, json={"messages": [{"role": "user", "content": "go on"}]}
    )
    assert started.status_code == 202, started.text
    run_id = started.json()["id"]
    assert started.headers["Location"] == f"/api/v1/chatbot/runs/{run_id}"
    arrivals: list[float] = []
    with httpx.stream(
        "GET",
        f"{with_redis.second.base_url}/chatbot/runs/{run_id}/stream",
        headers={"Authorization": f"Bearer {talk.token}"},
        timeout=30,
    ) as response:
        for line in response.iter_lines():
            if line.startswith("event: token"):
                arrivals.append(time.monotonic())
    assert len(arrivals) >= 20
    assert arrivals[-1] - arrivals[0] > 1.0  # live, as the tokens came, not all at the end


def test_background_run_lifecycle_wait_and_listing(with_redis: Replicas, simulator: RunningSimulator) -> None:
    simulator.configure(SLOW)
    talk = Conversation(with_redis.first)
    body = {"messages": [{"role": "user", "content": "in the background"}]}
    run = with_redis.first.request("POST", "/chatbot/runs", token=talk.token, json=body).json()
    assert run["status"] == "running"
    assert run["answer"] is None
    active = with_redis.second.request("GET", "/chatbot/runs?active=true", token=talk.token).json()["items"]
    assert [item["id"] for item in active] == [run["id"]]
    assert active[0]["last_event_id"].startswith(f"{run['id']}:")

    early = _wait(with_redis.second, talk, run["id"], seconds=0.2)
    assert early["status"] == "running"
    done = _wait(with_redis.second, talk, run["id"])
    assert done["status"] == "done"
    assert done["answer"] == talk.history()[-1]["content"]
    assert done["usage"]["output_tokens"] > 0
    assert with_redis.first.request("GET", "/chatbot/runs?active=true", token=talk.token).json()["items"] == []
    listed = with_redis.first.request("GET", "/chatbot/runs?status=done&limit=1", token=talk.token).json()
    assert [item["id"] for item in listed["items"]] == [run["id"]]
    assert listed["next_cursor"] is None
    second = with_redis.first.request("POST", "/chatbot/runs", token=talk.token, json=body).json()
    _wait(with_redis.first, talk, second["id"])
    newest = with_redis.second.request("GET", "/chatbot/runs?limit=1", token=talk.token).json()
    assert [item["id"] for item in newest["items"]] == [second["id"]]
    older = with_redis.second.request(
        "GET", "/chatbot/runs", token=talk.token, params={"limit": 1, "cursor": newest["next_cursor"]}
    ).json()
    assert [item["id"] for item in older["items"]] == [run["id"]]
    assert older["next_cursor"] is None

    too_long = with_redis.first.request("GET", f"/chatbot/runs/{run['id']}/wait?timeout=301", token=talk.token)
    assert too_long.status_code == 422
    assert "timeout" in too_long.text


def test_enqueue_runs_five_rapid_messages_in_arrival_order_across_replicas(
    with_redis: Replicas, simulator: RunningSimulator
) -> None:
    simulator.configure({"tokens_per_second": 100, "answer_tokens": 30})
    talk = Conversation(with_redis.first)
    ids = []
    for index in range(5):
        api = (with_redis.first, with_redis.second)[index % 2]
        body = {"messages": [{"role": "user", "content": f"message {index}"}], "multitask_strategy": "enqueue"}
        response = api.request("POST", "/chatbot/runs", token=talk.token, json=body)
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
    overflow = with_redis.second.request(
        "POST",
        "/chatbot/runs",
        token=talk.token,
        json={"messages": [{"role": "user", "content": "one too many"}], "multitask_strategy": "enqueue"},
    )
    assert overflow.status_code == 429, overflow.text  # one running, four queued: the limit
    assert [_wait(with_redis.first, talk, run_id)["status"] for run_id in ids] == ["done"] * 5
    questions = [message["content"] for message in talk.history() if message["role"] == "user"]
    assert questions == [f"message {index}" for index in range(5)]


def test_reject_is_a_409_from_the_other_replica(with_redis: Replicas, simulator: RunningSimulator) -> None:
    simulator.configure(SLOW)
    talk = Conversation(with_redis.first)
    run_id = with_redis.first.request(
        "POST", "/chatbot/runs", token=talk.token, json={"messages": [{"role": "user", "content": "first"}]}
    ).json()["id"]
    talk.api = with_redis.second
    second = talk.send("second")
    assert second.status_code == 409
    assert second.json()["type"] == "urn:agentctl:problem:turn-in-progress"
    assert _wait(with_redis.second, talk, run_id)["status"] == "done"


@pytest.mark.parametrize("strategy", ["interrupt", "rollback"])
def test_interrupt_keeps_and_rollback_drops_the_partial_answer_across_replicas(
    strategy: str, with_redis: Replicas, simulator: RunningSimulator
) -> None:
    simulator.configure({"tokens_per_second": 10, "answer_tokens": 100})
    talk = Conversation(with_redis.first)
    first = with_redis.first.request(
        "POST", "/chatbot/runs", token=talk.token, json={"messages": [{"role": "user", "content": "first"}]}
    ).json()["id"]
    time.sleep(1.0)  # some of its answer exists
    simulator.configure({"tokens_per_second": 200, "answer_tokens": 10})
    talk.api = with_redis.second
    answered = talk.send("second", multitask_strategy=strategy)
    assert answered.status_code == 200, answered.text
    cancelled = _run(with_redis.second, talk, first)
    assert cancelled["status"] == "cancelled"
    history = [(message["role"], message["content"], message.get("status")) for message in talk.history()]
    if strategy == "interrupt":
        assert [(role, status) for role, _content, status in history] == [
            ("user", None),
            ("assistant", "interrupted"),
            ("user", None),
            ("assistant", None),
        ]
        assert history[1][1]  # the partial answer stays
    else:
        assert [(role, content) for role, content, _status in history][:2] == [("user", "first"), ("user", "second")]
        assert [role for role, _content, _status in history] == ["user", "user", "assistant"]


def test_expired_events_are_gone_and_other_peoples_runs_do_not_exist(
    without_redis: Replicas, simulator: RunningSimulator
) -> None:
    simulator.configure({"tokens_per_second": 200, "answer_tokens": 5})
    talk = Conversation(without_redis.first)
    run_id = talk.api.request(
        "POST", "/chatbot/runs", token=talk.token, json={"messages": [{"role": "user", "content": "short"}]}
    ).json()["id"]
    assert _wait(without_redis.first, talk, run_id)["status"] == "done"
    stranger = Conversation(without_redis.first)
    same_user_other_session = Conversation(without_redis.first, user_token=talk.user_token)
    for who in (stranger, same_user_other_session):
        for path in (f"/chatbot/runs/{run_id}", f"/chatbot/runs/{run_id}/stream", f"/chatbot/runs/{run_id}/wait"):
            assert without_redis.second.request("GET", path, token=who.token).status_code == 404
    time.sleep(3.5)  # the events' TTL on these replicas: 3 s
    gone = without_redis.second.request("GET", f"/chatbot/runs/{run_id}/stream", token=talk.token)
    assert gone.status_code == 410, gone.text
    assert _run(without_redis.second, talk, run_id)["status"] == "done"  # the run itself stays: it is the record


def test_bad_input_is_a_clear_422(with_redis: Replicas, simulator: RunningSimulator) -> None:
    talk = Conversation(with_redis.first)
    for field, value in (("multitask_strategy", "shout"), ("on_disconnect", "explode")):
        body = {"messages": [{"role": "user", "content": "hi"}], field: value}
        response = talk.api.request("POST", "/chatbot/chat", token=talk.token, json=body)
        assert response.status_code == 422, response.text
        assert field in response.text
    run_id = talk.api.request(
        "POST", "/chatbot/runs", token=talk.token, json={"messages": [{"role": "user", "content": "hi"}]}
    ).json()["id"]
    for header in ("not-an-id", f"{run_id}:-1", f"{run_id}:x", f"{run_id}:1234567890"):
        response = talk.api.request(
            "GET", f"/chatbot/runs/{run_id}/stream", token=talk.token, headers={"Last-Event-ID": header}
        )
        assert response.status_code == 422, (header, response.text)
        assert "last-event-id" in response.text.lower()
    bad_after = talk.api.request("GET", f"/chatbot/runs/{run_id}/stream?after=abc", token=talk.token)
    assert bad_after.status_code == 422
    assert "after" in bad_after.text
    other_run = talk.api.request(
        "GET", f"/chatbot/runs/{run_id}/stream", token=talk.token, headers={"Last-Event-ID": f"{uuid.uuid4()}:3"}
    )
    assert other_run.status_code == 404, other_run.text
    assert other_run.json()["type"] == "urn:agentctl:problem:event-not-found"


def test_an_id_beyond_the_last_event_waits_without_error(with_redis: Replicas, simulator: RunningSimulator) -> None:
    simulator.configure(SLOW)
    talk = Conversation(with_redis.first)
    run_id = talk.api.request(
        "POST", "/chatbot/runs", token=talk.token, json={"messages": [{"role": "user", "content": "hi"}]}
    ).json()["id"]
    received: list = []

    def follow() -> None:
        received.extend(
            read_events(with_redis.second, f"/chatbot/runs/{run_id}/stream?after=1000", talk.token, timeout=30)
        )

    follower = threading.Thread(target=follow)
    follower.start()
    follower.join(15)
    assert not any(name == "error" for _id, name, _data in received)
    assert _wait(with_redis.first, talk, run_id)["status"] == "done"
