from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
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

    def send(self, text: str) -> httpx.Response:
        return self.api.request(
            "POST", "/chatbot/chat", token=self.token, json={"messages": [{"role": "user", "content": text}]}
        )

    def open_stream(self, text: str, *, timeout: float = 30) -> contextlib.AbstractContextManager[httpx.Response]:
        """The streamed answer to ``text``, as the raw SSE response, for a test to read (or leave) as it likes."""
        return httpx.stream(
            "POST",
            f"{self.api.base_url}/chatbot/chat/stream",
            headers={"Authorization": f"Bearer {self.token}"},
            json={"messages": [{"role": "user", "content": text}]},
            timeout=timeout,
        )

    def stream(self, text: str) -> list[tuple[str, dict]]:
        """(event name, data) of every SSE event of one turn."""
        events = []
        with self.open_stream(text) as response:
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
