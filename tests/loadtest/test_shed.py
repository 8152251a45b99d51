"""Shed requests (503 ``overloaded`` or 429, with Retry-After) in `agentctl loadtest`: not failures, reported apart,
honoured by the scenario's users, and gated by ``--fail-on shed>N%``."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from agentctl.loadtest.report import endpoint_report, evaluate_gate, gate_values, parse_fail_on
from agentctl.simulator.process import RunningSimulator
from tests.chat.conftest import serve_with_model
from tests.loadtest.test_loadtest import FAST_USERS, run_loadtest
from tests.support import ServeProcess, free_port


def _entry(method: str, name: str, times: dict[str, int], failures: int = 0) -> dict[str, Any]:
    return {
        "method": method,
        "name": name,
        "num_requests": sum(times.values()),
        "num_failures": failures,
        "response_times": times,
        "max_response_time": max(float(value) for value in times),
        "start_time": 100.0,
        "last_request_timestamp": 110.0,
    }


def test_shed_requests_count_among_requests_but_not_as_failures_nor_in_the_answered_latency() -> None:
    stats = [
        _entry("POST", "POST /api/v1/chatbot/chat", {"300": 6, "900": 2}, failures=1),
        _entry("SHED", "POST /api/v1/chatbot/chat", {"3": 9, "40": 1}),
        _entry("SHED", "POST /api/v1/auth/register", {"5": 2}),  # an endpoint only ever shed
    ]
    errors = [{"method": "POST", "name": "POST /api/v1/chatbot/chat", "error": "HTTP 500", "occurrences": 1}]

    report = endpoint_report(stats, errors)

    chat, register = (
        next(row for row in report["endpoints"] if row["name"] == name)
        for name in ("POST /api/v1/chatbot/chat", "POST /api/v1/auth/register")
    )
    assert (chat["requests"], chat["failures"], chat["shed"]) == (18, 1, 10)
    assert chat["latency_ms"]["p99"] == 900  # answered requests only
    assert chat["shed_latency_ms"]["p50"] == 3
    assert (register["requests"], register["failures"], register["shed"]) == (2, 0, 2)
    total = report["total"]
    assert (total["requests"], total["failures"], total["shed"]) == (20, 1, 12)
    assert total["error_percent"] == 5.0
    assert total["shed_percent"] == 60.0
    assert total["success_percent"] == 35.0
    assert total["turns"] == 7  # answered and not failed
    assert total["latency_ms"]["p50"] == 300
    assert (total["shed_latency_ms"]["p50"], total["shed_latency_ms"]["p99"]) == (3, 40)
    values = gate_values(report)
    verdicts = evaluate_gate(parse_fail_on("errors>10%,shed>50%,shed_p99>50ms"), values)
    assert [check["failed"] for check in verdicts] == [False, True, False]


@pytest.mark.parametrize(("text", "message"), [("shed>5ms", "percentage"), ("shed_p99>5%", "latency")])
def test_shed_conditions_take_their_unit(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_fail_on(text)


class _OverloadedApi(BaseHTTPRequestHandler):
    """The HTTP contract of an overloaded server, as admission control answers it (server/admission): every sign-up
    refused twice and every chat turn refused, at once, 503 problem+json ``...:overloaded`` with Retry-After: 1."""

    register_attempts: dict[str, int] = {}
    lock = threading.Lock()

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"null")
        if self.path == "/api/v1/auth/register":
            with self.lock:
                attempts = self.register_attempts[body["email"]] = self.register_attempts.get(body["email"], 0) + 1
            self._answer(201, {"id": "u"}) if attempts > 2 else self._overloaded()
        elif self.path == "/api/v1/auth/login":
            self._answer(200, {"access_token": "user-token"})
        elif self.path == "/api/v1/auth/session":
            self._answer(201, {"session_id": "s", "token": {"access_token": "session-token"}})
        else:
            self._overloaded()

    def do_GET(self) -> None:
        self._answer(200, {"messages": []}) if self.path.startswith("/api/v1/") else self._answer(404, {})

    def _overloaded(self) -> None:
        problem = {"type": "urn:agentctl:problem:overloaded", "title": "Service Unavailable", "status": 503}
        self._answer(503, problem, {"Retry-After": "1", "Content-Type": "application/problem+json"})

    def _answer(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def overloaded_api() -> Iterator[str]:
    """Admission control is not wired into the server yet: this gives its refusals, on loopback, byte for byte."""
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _OverloadedApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow
def test_503_overloaded_is_shed_and_honoured_sign_up_retried_after_retry_after(
    overloaded_api: str, tmp_path: Path
) -> None:
    code, output, report = run_loadtest(
        "--host", overloaded_api, "-u", "2", "-r", "2", "-t", "5s", "--results-dir", str(tmp_path),
        "--fail-on", "errors>0%,shed>50%", *FAST_USERS,
    )  # fmt: skip

    assert code == 1, output  # shed>50% holds: the gate fails the run, errors>0% does not
    assert report is not None
    assert [check["failed"] for check in report["gate"]] == [False, True]
    total = report["requests"]["total"]
    assert total["failures"] == 0
    endpoints = {row["name"]: row for row in report["requests"]["endpoints"]}
    register = endpoints["POST /api/v1/auth/register"]
    assert register["shed"] == 4  # two refusals per user, each followed by a second try after Retry-After
    assert register["requests"] == 6
    assert endpoints["POST /api/v1/auth/session"]["requests"] >= 2  # both users got through (new_session may add)
    turns_shed = sum(row["shed"] for name, row in endpoints.items() if "/chatbot/chat" in name)
    # Each user waited Retry-After (1 s) after each refusal: a few turns in the ~3 s left, not dozens.
    assert 2 <= turns_shed <= 10
    assert total["shed_latency_ms"]["p99"] < 1000
    assert "shed (refused for load, Retry-After honoured)" in output
    assert "gate shed>50%: FAIL" in output


@pytest.fixture(scope="module")
def chat_limited_server(tmp_path_factory: pytest.TempPathFactory, migrated_database_url: str) -> Iterator[ServeProcess]:
    with RunningSimulator() as simulator:
        running = serve_with_model(
            tmp_path_factory.mktemp("shed"), migrated_database_url, simulator, AGENTCTL_RATELIMIT__CHAT="2/minute"
        )
        try:
            running.wait_until_healthy()
            yield running
        finally:
            running.terminate()


@pytest.mark.slow
def test_429_with_retry_after_from_a_real_server_is_shed_not_failed(
    chat_limited_server: ServeProcess, tmp_path: Path
) -> None:
    code, output, report = run_loadtest(
        "--host", chat_limited_server.base_url, "-u", "2", "-r", "2", "-t", "4s", "--results-dir", str(tmp_path),
        "--fail-on", "errors>0%", *FAST_USERS,
    )  # fmt: skip

    assert code == 0, output
    assert report is not None
    total = report["requests"]["total"]
    assert total["failures"] == 0
    assert total["turns"] == 4  # two turns a user a minute, then 429 with Retry-After up to a minute
    assert total["shed"] == 2  # one refusal each: the user then waits out the run
    assert report["server"]["counter_deltas"]["agentctl_ratelimit_rejections_total"]
