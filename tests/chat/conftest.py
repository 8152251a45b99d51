from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import httpx
import pytest

from agentctl.simulator.process import RunningSimulator
from tests.support import ApiClient, ServeProcess


def serve_with_model(
    workdir: Path, database_url: str, simulator: RunningSimulator, *args: str, **env: str
) -> ServeProcess:
    return ServeProcess(
        workdir,
        *args,
        env={
            "DATABASE_URL": database_url,
            "AGENTCTL_LLM__BASE_URL": simulator.base_url,
            "AGENTCTL_LLM__MODEL": "chat-model",
            "OPENAI_API_KEY": "sim",
            "AGENTCTL_LLM__MAX_ATTEMPTS": "1",
            # Every test signs up users of its own from one address; sign-up limits are tested elsewhere.
            "AGENTCTL_RATELIMIT__REGISTER_PER_IP": "1000/hour",
            **env,
        },
    )


@contextlib.contextmanager
def running_replicas(
    tmp_path_factory: pytest.TempPathFactory, database_url: str, simulator: RunningSimulator, label: str, **env: str
) -> Iterator[tuple[ApiClient, ApiClient]]:
    """Two `agentctl serve` processes sharing one PostgreSQL: two replicas, until the block ends."""
    servers = [
        serve_with_model(tmp_path_factory.mktemp(f"{label}{index}"), database_url, simulator, **env)
        for index in range(2)
    ]
    try:
        for server in servers:
            server.wait_until_healthy()
        yield ApiClient(servers[0]), ApiClient(servers[1])
    finally:
        for server in servers:
            server.terminate()


@pytest.fixture(scope="module")
def chat_api(
    tmp_path_factory: pytest.TempPathFactory, migrated_database_url: str, simulator: RunningSimulator
) -> Iterator[ApiClient]:
    server = serve_with_model(tmp_path_factory.mktemp("chat"), migrated_database_url, simulator, "--workers", "2")
    try:
        server.wait_until_healthy()
        yield ApiClient(server)
    finally:
        server.terminate()


class Conversation:
    """A user with one session, speaking through its session token."""

    def __init__(self, api: ApiClient, *, user_token: str | None = None) -> None:
        """A new session of the user of ``user_token``, or of a new user."""
        self.api = api
        self.user_token = user_token or api.new_user()[1]
        session = api.request("POST", "/auth/session", token=self.user_token).json()
        self.session_id = session["session_id"]
        self.token = session["token"]["access_token"]
        self.stream_headers = httpx.Headers()  # of the last stream

    def send(self, text: str, **options: str) -> httpx.Response:
        """``options``: multitask_strategy, on_disconnect."""
        return self.api.request(
            "POST",
            "/chatbot/chat",
            token=self.token,
            json={"messages": [{"role": "user", "content": text}], **options},
        )

    def open_stream(
        self, text: str, *, timeout: float = 30, base_url: str | None = None, **options: str
    ) -> contextlib.AbstractContextManager[httpx.Response]:
        """The streamed answer to ``text``, as the raw SSE response, for a test to read (or leave) as it likes."""
        return httpx.stream(
            "POST",
            f"{base_url or self.api.base_url}/chatbot/chat/stream",
            headers={"Authorization": f"Bearer {self.token}"},
            json={"messages": [{"role": "user", "content": text}], **options},
            timeout=timeout,
        )

    def stream(self, text: str, **options: str) -> list[tuple[str, dict]]:
        """(event name, data) of every SSE event of one turn."""
        events = []
        with self.open_stream(text, **options) as response:
            assert response.status_code == 200, response.read()
            self.stream_headers = response.headers
            name = None
            for line in response.iter_lines():
                if line.startswith("event: "):
                    name = line[len("event: ") :]
                elif line.startswith("data: "):
                    events.append((name, json.loads(line[len("data: ") :])))
        return events

    def history(self) -> list[dict]:
        response = self.api.request("GET", "/chatbot/messages", token=self.token)
        assert response.status_code == 200, response.text
        return response.json()["messages"]


Event = tuple[str, str, dict]  # (id, name, data)


def parse_events(lines: Iterable[str], *, stop_after_tokens: int | None = None) -> list[Event]:
    """The SSE events in ``lines`` (heartbeats left out); with ``stop_after_tokens``, up to that many tokens."""
    events: list[Event] = []
    event_id = name = ""
    tokens = 0
    for line in lines:
        if line.startswith("id: "):
            event_id = line[len("id: ") :]
        elif line.startswith("event: "):
            name = line[len("event: ") :]
        elif line.startswith("data: "):
            events.append((event_id, name, json.loads(line[len("data: ") :])))
            tokens += name == "token"
            if stop_after_tokens is not None and tokens >= stop_after_tokens:
                break
    return events


def read_events(
    api: ApiClient, path: str, token: str, *, headers: dict[str, str] | None = None, timeout: float = 60
) -> list[Event]:
    """Every event of a GET stream (a rejoin), until the server ends it."""
    with httpx.stream(
        "GET",
        f"{api.base_url}{path}",
        headers={"Authorization": f"Bearer {token}", **(headers or {})},
        timeout=timeout,
    ) as response:
        assert response.status_code == 200, response.read()
        return parse_events(response.iter_lines())


def answer_of(events: list[Event]) -> str:
    return "".join(data["content"] for _id, name, data in events if name == "token")
