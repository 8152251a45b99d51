"""Metrics and logs of a real `agentctl serve --workers 2` after a scripted flow."""

from __future__ import annotations

import json
import re
import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agentctl.simulator.process import RunningSimulator
from tests.chat.conftest import Conversation, serve_with_model
from tests.support import ApiClient, ServeProcess

REDIS_URL = "redis://127.0.0.1:6379/15"
CHAT_LIMIT = 5
API_KEY = "sk-test-" + "k3y" * 8
JWT_SECRET = "jwt-" + uuid.uuid4().hex * 2
SECRET_MESSAGE = "my lighthouse keeper password is sapphire-walrus-42"
MEMORY_QUERY = "whispering-lantern"
UUID_PATTERN = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class Flow:
    """What the scripted flow did, for the assertions."""

    def __init__(self) -> None:
        self.secrets: list[str] = []
        self.user_id = ""
        self.session_id = ""
        self.scrapes: list[str] = []


@pytest.fixture(scope="module")
def observed(
    tmp_path_factory: pytest.TempPathFactory, migrated_database_url: str, simulator: RunningSimulator
) -> tuple[ServeProcess, Flow]:
    """Two workers, JSON logs at DEBUG (the level that would leak most), Redis for shared limits; the flow:
    sign-up, login, refresh, a session, chat turns up to the limit and one past it, a streamed turn, the history,
    a rename, a memory search, then six scrapes of /metrics. Yields the server (stopped) and the flow."""
    server = serve_with_model(
        tmp_path_factory.mktemp("observed"),
        migrated_database_url,
        simulator,
        "--workers",
        "2",
        OPENAI_API_KEY=API_KEY,
        AGENTCTL_AUTH__JWT_SECRET=JWT_SECRET,
        AGENTCTL_OBSERVABILITY__LOG_FORMAT="json",
        AGENTCTL_OBSERVABILITY__LOG_LEVEL="DEBUG",
        REDIS_URL=REDIS_URL,
        AGENTCTL_REDIS__KEY_PREFIX=f"observed-{uuid.uuid4().hex[:8]}",
        AGENTCTL_RATELIMIT__CHAT=f"{CHAT_LIMIT}/minute",
    )
    flow = Flow()
    try:
        server.wait_until_healthy()
        api = ApiClient(server)
        email = f"observed-{uuid.uuid4().hex[:8]}@example.com"
        registered = api.register(email)
        flow.user_id = registered["id"]
        login = api.login(email)
        refreshed = api.request("POST", "/auth/refresh", json={"refresh_token": login["refresh_token"]})
        assert refreshed.status_code == 200, refreshed.text
        conversation = Conversation(api, user_token=refreshed.json()["access_token"])
        flow.session_id = conversation.session_id
        flow.secrets = [
            api.password,
            API_KEY,
            JWT_SECRET,
            SECRET_MESSAGE,
            MEMORY_QUERY,
            registered["token"]["access_token"],
            registered["refresh_token"],
            login["access_token"],
            login["refresh_token"],
            refreshed.json()["refresh_token"],
            conversation.token,
        ]
        for turn in range(CHAT_LIMIT - 1):
            assert conversation.send(f"{SECRET_MESSAGE} (turn {turn})").status_code == 200
        events = conversation.stream(SECRET_MESSAGE)
        assert events[-1][0] == "done"
        assert conversation.send("one too many").status_code == 429
        conversation.history()
        renamed = api.request(
            "PATCH",
            f"/auth/session/{conversation.session_id}/name",
            token=conversation.user_token,
            json={"name": "observed"},
        )
        assert renamed.status_code == 200, renamed.text
        found = api.request("GET", "/memories", token=conversation.user_token, params={"query": MEMORY_QUERY})
        assert found.status_code == 200, found.text
        flow.scrapes = [server.get("/metrics").text for _ in range(6)]
    finally:
        server.terminate()
    return server, flow


def samples(exposition: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(exposition: str, name: str, **labels: str) -> float:
    return samples(exposition).get((name, tuple(sorted(labels.items()))), 0.0)


CHAT = "/api/v1/chatbot/chat"


def test_every_scrape_counts_the_whole_flow_of_both_workers(observed: tuple[ServeProcess, Flow]) -> None:
    _, flow = observed
    counters = [
        ("agentctl_http_requests_total", {"method": "POST", "route": CHAT, "status": "200"}, CHAT_LIMIT - 1),
        ("agentctl_http_requests_total", {"method": "POST", "route": CHAT, "status": "429"}, 1),
        ("agentctl_http_requests_total", {"method": "POST", "route": CHAT + "/stream", "status": "200"}, 1),
        ("agentctl_http_requests_total", {"method": "POST", "route": "/api/v1/auth/register", "status": "201"}, 1),
        ("agentctl_http_request_duration_seconds_count", {"method": "POST", "route": CHAT}, CHAT_LIMIT),
        ("agentctl_ratelimit_rejections_total", {"route_class": "chat"}, 1),
        ("agentctl_chat_turns_total", {"status": "done"}, CHAT_LIMIT),
        ("agentctl_chat_turn_duration_seconds_count", {}, CHAT_LIMIT),
        ("agentctl_chat_time_to_first_token_seconds_count", {}, CHAT_LIMIT),
        ("agentctl_model_calls_total", {"model": "default", "role": "chat", "outcome": "ok"}, CHAT_LIMIT),
        ("agentctl_model_call_duration_seconds_count", {"model": "default", "role": "chat"}, CHAT_LIMIT),
        ("agentctl_memory_recalls_total", {"outcome": "ok"}, CHAT_LIMIT),
    ]
    for exposition in flow.scrapes:
        for name, labels, expected in counters:
            assert value(exposition, name, **labels) == expected, (name, labels)
        assert value(exposition, "agentctl_model_tokens_total", model="default", role="chat", kind="input") > 0
        assert value(exposition, "agentctl_model_circuit_state", model="default") == 0
        # Gauges of live workers are summed: each worker's queue holds 1,000 turns.
        assert value(exposition, "agentctl_memory_queue_capacity") == 2 * 1000
        assert value(exposition, "agentctl_sse_streams_open") == 0
        assert value(exposition, "agentctl_http_requests_in_flight") == 1  # the scrape itself
        for pool in ("main", "checkpoints", "memory"):
            assert ("agentctl_db_pool_connections_in_use", (("pool", pool),)) in samples(exposition), pool
            assert value(exposition, "agentctl_db_pool_waiting", pool=pool) == 0


def test_routes_are_templates_and_names_follow_prometheus_conventions(observed: tuple[ServeProcess, Flow]) -> None:
    _, flow = observed
    exposition = flow.scrapes[-1]
    routes = {labels["route"] for labels in _labels_of(exposition, "agentctl_http_requests_total")}
    assert "/api/v1/auth/session/{session_id}/name" in routes
    assert not UUID_PATTERN.search(exposition), "a raw id in a label: one series per user or session"
    for family in text_string_to_metric_families(exposition):
        if not family.name.startswith("agentctl_"):
            continue
        if family.type == "counter":
            assert any(sample.name.endswith("_total") for sample in family.samples), family.name
        if family.type == "histogram":
            assert family.name.endswith("_seconds"), family.name


def _labels_of(exposition: str, name: str) -> list[dict[str, str]]:
    return [
        sample.labels
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
        if sample.name == name
    ]


def test_logs_are_json_lines_with_the_request_context(observed: tuple[ServeProcess, Flow]) -> None:
    server, flow = observed
    lines = [line for line in server.output().splitlines() if line.strip()]
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON line: {line[:200]}")
    assert all({"time", "level", "message", "logger", "pid"} <= record.keys() for record in records)
    access = [record for record in records if record["message"].startswith(f"POST {CHAT} 200 ")]
    assert len(access) == CHAT_LIMIT - 1
    for record in access:
        assert len(record["request_id"]) == 32
        assert record["user_id"] == flow.user_id
        assert record["session_id"] == flow.session_id
    registration = next(record for record in records if record["message"].startswith("POST /api/v1/auth/register"))
    assert "request_id" in registration
    assert "user_id" not in registration  # nobody was signed in yet
    assert any(record["logger"].startswith("uvicorn") for record in records)  # stdlib logs share the sink


def test_no_secret_or_message_text_in_the_logs(observed: tuple[ServeProcess, Flow]) -> None:
    server, flow = observed
    log = server.output()
    assert len(flow.secrets) == 11
    for secret in flow.secrets:
        assert secret not in log
    assert "sapphire" not in log
