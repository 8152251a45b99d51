"""What a hostile or careless client sends, against a real `agentctl serve`: oversized and slow request heads,
JSON nested past reason, numbers past the database's, scans of unknown routes, look-alike email addresses."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import psutil
import pytest

from tests.support import ApiClient, ServeProcess, metric_value, unique_email

HEADER_TIMEOUT_SECONDS = 2


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, migrated_database_url: str) -> Iterator[ApiClient]:
    server = ServeProcess(
        tmp_path_factory.mktemp("hostile"),
        "--workers",
        "2",
        env={
            "DATABASE_URL": migrated_database_url,
            "AGENTCTL_SERVER__HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT_SECONDS),
            "AGENTCTL_RATELIMIT__REGISTER_PER_IP": "1000/hour",
            "AGENTCTL_RATELIMIT__LOGIN_PER_IP": "1000/minute",
            "AGENTCTL_MEMORY__ENABLED": "false",
        },
    )
    try:
        server.wait_until_healthy()
        yield ApiClient(server)
    finally:
        server.terminate()


def _raw_exchange(port: int, head: bytes, *, wait: float = 10.0) -> bytes:
    """Send bytes as they are on a fresh connection; whatever comes back until the server closes it."""
    with socket.create_connection(("127.0.0.1", port)) as connection:
        connection.settimeout(wait)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # refused mid-send: the answer waits
            connection.sendall(head)
        received = b""
        try:
            while chunk := connection.recv(65536):
                received += chunk
        except (ConnectionResetError, TimeoutError):
            pass
        return received


def _worker_memory(server: ServeProcess) -> int:
    return sum(child.memory_info().rss for child in psutil.Process(server.process.pid).children(recursive=True))


def test_an_oversized_request_head_is_a_431_and_buys_no_memory(api: ApiClient) -> None:
    port = api.server.port
    answer = _raw_exchange(port, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 300_000 + b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert b"application/problem+json" in answer
    assert b'"request_id"' in answer

    # Eight connections each holding an unfinished 64 MB header grew the workers by half a gigabyte.
    before = _worker_memory(api.server)
    threads = [
        threading.Thread(target=_raw_exchange, args=(port, b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 8_000_000))
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert _worker_memory(api.server) - before < 50_000_000
    assert api.server.get("/health").status_code == 200


def test_a_request_head_sent_too_slowly_is_a_408(api: ApiClient) -> None:
    started = time.monotonic()
    answer = _raw_exchange(api.server.port, b"GET /health HTTP/1.1\r\nHost: x\r\n", wait=HEADER_TIMEOUT_SECONDS + 5)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert HEADER_TIMEOUT_SECONDS - 0.5 < time.monotonic() - started < HEADER_TIMEOUT_SECONDS + 3


def test_large_bodies_and_kept_alive_connections_are_not_taken_for_heads(api: ApiClient) -> None:
    """A body of hundreds of kilobytes arrives in reads far larger than the head limit: it is the body's limit
    (413) that answers, not the head's; requests on one kept-alive connection each get their own head allowance."""
    email = unique_email()
    body = b'{"email": "' + email.encode() + b'", "password": "' + b"p1" * 700_000 + b'"}'
    head = (
        "POST /api/v1/auth/register HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    answer = _raw_exchange(api.server.port, head.encode() + body)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    pipelined = b"".join(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Fill: " + b"f" * 30_000 + b"\r\n\r\n" for _ in range(5))
    answers = _raw_exchange(
        api.server.port, pipelined + b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert answers.count(b"HTTP/1.1 200 OK") == 6, answers[:300]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/auth/register", '{"email": "a@example.com", "password": "abc12345xyz", "username": DEEP}'),
        ("/auth/register", "DEEP"),
        ("/auth/login", '{"email": "a@example.com", "password": DEEP}'),
        ("/chatbot/chat", '{"messages": DEEP}'),
    ],
)
def test_json_nested_beyond_reason_is_a_400(api: ApiClient, path: str, body: str) -> None:
    deep = "[" * 10_000 + "]" * 10_000 if "messages" in body else '{"a":' * 10_000 + "1" + "}" * 10_000
    response = api.request(
        "POST", path, content=body.replace("DEEP", deep), headers={"Content-Type": "application/json"}
    )
    # Never a 500: a 400 where the body is parsed as JSON first, a 422 where it is decoded straight into its schema
    # (login), a 401 where the token is checked before the body is read (chat).
    assert response.status_code in (400, 401, 422), response.text
    if response.status_code == 400:
        assert response.json()["type"] == "urn:agentctl:problem:invalid-body"
        assert "nested too deeply" in response.json()["detail"]


def test_a_deep_chat_body_with_a_valid_token_is_a_400(api: ApiClient) -> None:
    token = api.new_user()[1]
    session = api.request("POST", "/auth/session", token=token).json()["token"]["access_token"]
    deep = "[" * 10_000 + "]" * 10_000
    response = api.request(
        "POST",
        "/chatbot/chat",
        token=session,
        content=f'{{"messages": {deep}}}',
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 400, response.text
    assert response.json()["type"] == "urn:agentctl:problem:invalid-body"


@pytest.mark.parametrize("query", ["offset=99999999999999999999", "limit=99999999999999999999", "offset=-1", "limit=0"])
def test_numbers_past_their_bounds_are_a_422_naming_the_field(api: ApiClient, query: str) -> None:
    token = api.new_user()[1]
    response = api.request("GET", f"/auth/sessions?{query}", token=token)
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["field"] == query.split("=")[0]


def test_unknown_routes_and_methods_are_logged_and_counted(api: ApiClient) -> None:
    for _ in range(3):
        assert api.server.get("/wp-admin/setup.php").status_code == 404
        assert api.request("PUT", "/chatbot/messages").status_code == 405
    time.sleep(1)
    log = api.server.output()
    assert log.count("GET /wp-admin/setup.php 404") == 3
    assert log.count("PUT /api/v1/chatbot/messages 405") == 3
    metrics = api.server.get("/metrics").text
    assert metric_value(metrics, 'agentctl_http_requests_total{method="GET",route="unmatched",status="404"}') >= 3
    assert metric_value(metrics, 'agentctl_http_requests_total{method="PUT",route="unmatched",status="405"}') >= 3


def test_look_alike_email_addresses_are_one_account(api: ApiClient) -> None:
    local = unique_email("a1").split("@")[0]
    ascii_address = f"{local}@x.example.com"
    full_width = "".join(chr(ord(char) + 0xFEE0) if char.isalnum() and char.isascii() else char for char in local)
    look_alike = f"{full_width}@X.EXAMPLE.COM"
    assert look_alike != ascii_address
    created = api.register(ascii_address)
    again = api.request("POST", "/auth/register", json={"email": look_alike, "password": api.password})
    assert again.status_code == 409, again.text
    signed_in = api.login(look_alike)
    me = api.request("GET", "/auth/me", token=signed_in["access_token"]).json()
    assert me["id"] == created["id"]
    assert me["email"] == ascii_address


def test_an_options_request_names_every_method_of_its_path(api: ApiClient) -> None:
    allowed = api.request("OPTIONS", "/chatbot/messages").headers["allow"]
    assert sorted(method.strip() for method in allowed.split(",")) == ["DELETE", "GET", "OPTIONS"]


def test_the_head_limit_is_a_setting_checked_before_serving() -> None:
    """Too small a limit is refused at start, with one line naming the setting."""
    from typer.testing import CliRunner

    from agentctl.cli import app

    result = CliRunner().invoke(app, ["serve"], env={"AGENTCTL_SERVER__MAX_HEADER_BYTES": "10"})
    assert result.exit_code == 2
    assert "AGENTCTL_SERVER__MAX_HEADER_BYTES" in result.stderr
