"""PostgreSQL crashes (SIGKILL of a real server of the test's own) under a running `agentctl serve`: every request
gets a fast 503 `database-unavailable` problem, readiness says so, and once the database is back everything works
again without a restart, with nothing acknowledged before the crash lost."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from agentctl.simulator.process import RunningSimulator
from tests.chat.conftest import Conversation, serve_with_model
from tests.resilience.conftest import PostgresServer
from tests.support import ApiClient, unique_email

# The connect timeout (AGENTCTL_DATABASE__CONNECT_TIMEOUT_SECONDS, 2 s by default) plus the request's own work.
PROMPT_SECONDS = 3.0


@pytest.mark.slow
def test_a_database_crash_is_a_fast_503_and_recovers_without_a_restart(
    tmp_path: Path, postgres_server: PostgresServer, simulator: RunningSimulator
) -> None:
    server = serve_with_model(tmp_path, postgres_server.url, simulator, "--workers", "2")
    server.wait_until_healthy()
    api = ApiClient(server)
    try:
        email = unique_email()
        user_token = api.register(email)["token"]["access_token"]
        conversation = Conversation(api, user_token=user_token)
        assert conversation.send("remember the number 4711").status_code == 200
        before = conversation.history()

        postgres_server.crash()
        for method, path, token, body in (
            ("GET", "/auth/me", user_token, None),
            ("GET", "/auth/sessions", user_token, None),
            ("GET", "/chatbot/messages", conversation.token, None),
            ("POST", "/chatbot/chat", conversation.token, {"messages": [{"role": "user", "content": "hello?"}]}),
            ("POST", "/auth/register", None, {"email": unique_email(), "password": api.password}),
            ("POST", "/auth/login", None, {"email": email, "password": api.password}),
        ):
            for _ in range(2):  # both workers
                started = time.monotonic()
                response = api.request(method, path, token=token, json=body)
                took = time.monotonic() - started
                assert response.status_code == 503, f"{method} {path}: {response.status_code} {response.text}"
                problem = response.json()
                assert problem["type"] == "urn:agentctl:problem:database-unavailable", problem
                assert problem["request_id"] == response.headers["x-request-id"]
                assert response.headers["retry-after"]
                assert took < PROMPT_SECONDS, f"{method} {path} took {took:.1f} s"
        ready = server.get("/health/ready")
        assert ready.status_code == 503
        assert ready.json()["failing"] == ["database"]

        postgres_server.start_again()
        deadline = time.monotonic() + 30
        while server.get("/health/ready").status_code != 200:
            assert time.monotonic() < deadline, "readiness did not recover after the database returned"
            time.sleep(0.3)
        # Readiness answered from one worker; the other renews its pools within its next look at the database
        # (every 0.5 s). Meanwhile a request there is a 503 database-unavailable with Retry-After, never a 500.
        renewed_by = time.monotonic() + 5
        while (answered := conversation.send("and now?")).status_code != 200:
            assert answered.status_code == 503, answered.text
            assert answered.json()["type"] == "urn:agentctl:problem:database-unavailable", answered.text
            assert answered.headers["retry-after"]
            assert time.monotonic() < renewed_by, "a worker's pools were not renewed after the database returned"
            time.sleep(0.2)
        for _ in range(4):  # every worker, every pool: the turn (checkpoints, turn lock, records) and sign-in
            answered = conversation.send("and now?")
            assert answered.status_code == 200, answered.text
            assert api.login(email)["access_token"]
        assert conversation.history()[: len(before)] == before  # what was acknowledged before the crash is there
    finally:
        server.terminate()
    assert "Traceback" not in server.output()  # expected outages are told in a line, not a stack trace each
