"""Several replicas behind nginx: the shipped config (compose/nginx/agentctl.conf.template) as Debian's nginx runs it,
`agentctl loadtest --simulate --replicas 2`, and a replica killed under load. Real nginx, real `agentctl serve`
processes, the project's simulator; loopback only."""

from __future__ import annotations

import json
import os
import secrets
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from agentctl.loadtest.proxy import FAIL_TIMEOUT_SECONDS, check_config, start_nginx, write_config
from agentctl.loadtest.runner import _stop_process_group
from agentctl.simulator.process import RunningSimulator
from tests.chat.conftest import serve_with_model
from tests.loadtest.test_loadtest import FAST_USERS, run_loadtest
from tests.support import ServeProcess, free_port


def test_the_template_renders_and_nginx_accepts_it(tmp_path: Path) -> None:
    config = write_config(tmp_path, listen="127.0.0.1:18080", upstreams=["127.0.0.1:18081", "127.0.0.1:18082"])

    checked = check_config(tmp_path, config)

    assert checked.returncode == 0, checked.stderr
    site = (tmp_path / "agentctl.conf").read_text()
    assert "server 127.0.0.1:18081 max_fails=1 fail_timeout=10s;" in site
    assert "server 127.0.0.1:18082 max_fails=1 fail_timeout=10s;" in site
    assert "listen 127.0.0.1:18080;" in site
    assert "${AGENTCTL_" not in site.split("upstream agentctl", 1)[1]  # every placeholder substituted
    for directive in ("proxy_buffering off;", "proxy_http_version 1.1;", "proxy_next_upstream error timeout;",
                      "client_max_body_size 1m;", "X-Forwarded-For $proxy_add_x_forwarded_for;"):  # fmt: skip
        assert directive in site
    main = config.read_text()
    assert f"pid {tmp_path}/nginx.pid;" in main  # nothing of nginx's outside the folder


def test_replicas_without_simulate_is_a_usage_error(tmp_path: Path) -> None:
    code, output, _ = run_loadtest("--host", "http://127.0.0.1:9", "--replicas", "2", "--results-dir", str(tmp_path))

    assert code == 2
    assert "--replicas starts servers of its own" in output
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_replicas_2_puts_nginx_in_front_of_two_servers_that_both_serve(tmp_path: Path) -> None:
    code, output, report = run_loadtest(
        "--simulate", "--replicas", "2", "--server-workers", "1", "-u", "4", "-r", "4", "-t", "12s",
        "--results-dir", str(tmp_path), "--fail-on", "errors>0%", *FAST_USERS,
    )  # fmt: skip

    assert code == 0, output
    assert report is not None
    assert report["requests"]["total"]["failures"] == 0
    assert report["requests"]["total"]["turns"] > 0
    replicas = report["server"]["replicas"]
    assert len(replicas) == 2
    for replica in replicas:
        assert replica["http_requests"]["2xx"] > 5, replicas  # nginx spread the load over both
    assert set(report["server"]["cpu_seconds"]) >= {"server", "nginx", "postgres", "simulator"}
    run_folder = Path(report["files"]["html"]).parent
    assert [(run_folder / f"server-{index}.exit").read_text().strip() for index in range(2)] == ["0", "0"]
    assert (run_folder / "nginx" / "access.log").stat().st_size > 0
    assert not (run_folder / "nginx" / "nginx.pid").exists()  # nginx stopped with the run


@dataclass
class Outcome:
    started: float
    ended: float
    ok: bool
    what: str


@pytest.fixture
def slow_simulator() -> Iterator[RunningSimulator]:
    """Answers that stream for a second or so, so that some are in flight when a replica dies."""
    with RunningSimulator(args=["--ttft-ms", "100", "--tokens-per-second", "40"]) as simulator:
        yield simulator


@pytest.mark.slow
def test_a_replica_killed_under_load_fails_only_its_in_flight_requests_and_nginx_stops_sending_it_traffic(
    tmp_path_factory: pytest.TempPathFactory, migrated_database_url: str, slow_simulator: RunningSimulator
) -> None:
    shared = {"AGENTCTL_AUTH__JWT_SECRET": secrets.token_urlsafe(48), "AGENTCTL_SERVER__TRUSTED_PROXIES": "127.0.0.1"}
    servers: list[ServeProcess] = [
        serve_with_model(tmp_path_factory.mktemp(f"replica{index}"), migrated_database_url, slow_simulator, **shared)
        for index in range(2)
    ]
    folder = tmp_path_factory.mktemp("nginx")
    nginx = None
    try:
        for server in servers:
            server.wait_until_healthy()
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        config = write_config(folder, listen=f"127.0.0.1:{port}", upstreams=[f"127.0.0.1:{s.port}" for s in servers])
        nginx = start_nginx(folder, config, base)
        api = f"{base}/api/v1"
        email = f"kill-{secrets.token_hex(6)}@example.com"
        password = "correct horse 1 battery"
        assert httpx.post(f"{api}/auth/register", json={"email": email, "password": password}).status_code == 201
        user_token = httpx.post(f"{api}/auth/login", json={"email": email, "password": password}).json()["access_token"]

        def session_token() -> str:
            answer = httpx.post(f"{api}/auth/session", headers={"Authorization": f"Bearer {user_token}"}, timeout=10)
            return answer.json()["token"]["access_token"]

        outcomes: list[Outcome] = []
        stop = threading.Event()

        def streams() -> None:
            token = session_token()  # a session per thread: one turn at a time in each
            headers = {"Authorization": f"Bearer {token}"}
            body = {"messages": [{"role": "user", "content": "tell me a long story"}]}
            while not stop.is_set():
                began, ok, what = time.monotonic(), False, "stream"
                try:
                    with httpx.stream(
                        "POST", f"{api}/chatbot/chat/stream", json=body, headers=headers, timeout=30
                    ) as r:
                        text = "".join(r.iter_text())
                        ok = r.status_code == 200 and "event: done" in text
                        what = f"stream {r.status_code}"
                except httpx.HTTPError as error:
                    what = f"stream {type(error).__name__}"
                outcomes.append(Outcome(began, time.monotonic(), ok, what))
                if not ok:
                    # The session's run died with its replica and stays active in the database: the session answers
                    # 409 turn-in-progress to new turns (a finding of this test). A new session is not affected.
                    headers = {"Authorization": f"Bearer {session_token()}"}

        def reads() -> None:
            headers = {"Authorization": f"Bearer {session_token()}"}
            while not stop.is_set():
                began = time.monotonic()
                try:
                    answer = httpx.get(f"{api}/chatbot/messages", headers=headers, timeout=10)
                    ok, what = answer.status_code == 200, f"read {answer.status_code}"
                except httpx.HTTPError as error:
                    ok, what = False, f"read {type(error).__name__}"
                outcomes.append(Outcome(began, time.monotonic(), ok, what))
                time.sleep(0.05)

        threads = [threading.Thread(target=streams) for _ in range(4)] + [
            threading.Thread(target=reads) for _ in range(2)
        ]
        for thread in threads:
            thread.start()
        time.sleep(3)
        killed_at = time.monotonic()
        os.killpg(servers[0].process.pid, signal.SIGKILL)  # the replica and its workers, with no drain
        time.sleep(6)
        stop.set()
        for thread in threads:
            thread.join(40)

        in_flight = [o for o in outcomes if o.started < killed_at < o.ended]
        before = [o for o in outcomes if o.ended <= killed_at]
        after = [o for o in outcomes if o.started >= killed_at]
        assert before
        assert all(o.ok for o in before), [o.what for o in before if not o.ok]
        # Only requests in flight on the killed replica fail; those on the other finish.
        failed = [o for o in outcomes if not o.ok]
        assert all(killed_at - 0.01 <= o.ended and o.started < killed_at for o in failed), [o.what for o in failed]
        assert len(failed) < len(in_flight), ([o.what for o in in_flight], [o.what for o in failed])
        # Every request started after the kill succeeds: a refused connection goes to the other replica, then the
        # dead one is left out (passive health) instead of being tried for each request.
        assert len(after) > 10
        assert all(o.ok for o in after), [o.what for o in after if not o.ok]
        # Passive health: the first error (an in-flight request cut, or a refused connection) leaves the dead
        # replica out for fail_timeout, longer than the rest of the test: nginx tried it at most once more.
        assert FAIL_TIMEOUT_SECONDS > 6
        errors = (folder / "error.log").read_text()
        dead_upstream = f'upstream: "http://127.0.0.1:{servers[0].port}'
        assert errors.count("connect() failed") <= 2, errors
        assert 1 <= errors.count(dead_upstream) <= len(in_flight) + 2, errors
        assert json.dumps([o.what for o in after]).count("stream 200") > 0
    finally:
        if nginx is not None:
            _stop_process_group(nginx, timeout=10)
        servers[0].kill()
        servers[1].terminate()
