"""`agentctl serve` as an operator runs it: embedded default, workers, readiness, SIGTERM drain."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest
import redis
from typer.testing import CliRunner

from agentctl.cli import app
from server.database.embedded import EmbeddedPostgres
from tests.support import ServeProcess, clean_environment

REDIS_URL = "redis://127.0.0.1:6379/15"


def postmasters_of(data_dir: Path) -> list[psutil.Process]:
    """Running PostgreSQL server processes whose data directory is ``data_dir``."""
    found = []
    for process in psutil.process_iter(["name", "cmdline"]):
        cmdline = process.info["cmdline"] or []
        if process.info["name"] == "postgres" and "-D" in cmdline and str(data_dir) in cmdline:
            found.append(process)
    return found


@pytest.mark.slow
def test_serve_on_the_embedded_default_answers_health_and_stops_its_database(workdir: Path) -> None:
    server = ServeProcess(workdir)
    try:
        server.wait_until_healthy()
        assert server.get("/health").json() == {"status": "ok"}
        ready = server.get("/health/ready")
        assert ready.status_code == 200
        assert ready.json()["checks"]["database"]["status"] == "ok"

        openapi = server.get("/schema/openapi.json").json()
        assert "503" in openapi["paths"]["/health/ready"]["get"]["responses"]
        streamed = openapi["paths"]["/api/v1/chatbot/chat/stream"]["post"]["responses"]["200"]
        assert list(streamed["content"]) == ["text/event-stream"]

        banner = server.output()
        assert f"listening  {server.base_url}" in banner
        assert "embedded PostgreSQL 16 + pgvector" in banner
        assert "model      " in banner
        data_dir = workdir / ".agentctl" / "postgres"
        assert len(postmasters_of(data_dir)) == 1
    finally:
        exit_code = server.terminate()
    assert exit_code == 0, server.output()
    assert postmasters_of(data_dir) == []


@pytest.mark.slow
def test_two_workers_share_one_embedded_database(workdir: Path) -> None:
    server = ServeProcess(workdir, "--workers", "2")
    try:
        server.wait_until_healthy()
        for _ in range(20):
            assert server.get("/health/ready").status_code == 200
        parent = psutil.Process(server.process.pid)
        workers = [child for child in parent.children(recursive=True) if "python" in child.name().lower()]
        assert len(workers) >= 2
        data_dir = workdir / ".agentctl" / "postgres"
        assert len(postmasters_of(data_dir)) == 1
        assert "2 workers" in server.output()
    finally:
        exit_code = server.terminate()
    assert exit_code == 0, server.output()
    assert postmasters_of(data_dir) == []


@pytest.mark.slow
def test_readiness_is_503_naming_the_database_while_it_is_down(workdir: Path) -> None:
    postgres = EmbeddedPostgres(workdir / "external")
    subprocess.run(
        [sys.executable, "-m", "agentctl", "migrate"],
        env=clean_environment(DATABASE_URL=postgres.url),
        check=True,
        capture_output=True,
    )
    server = ServeProcess(workdir, env={"DATABASE_URL": postgres.url})
    try:
        server.wait_until_healthy()
        assert server.get("/health/ready").status_code == 200

        postgres.stop()
        down = server.get("/health/ready")
        assert down.status_code == 503
        assert down.headers["content-type"].startswith("application/problem+json")
        problem = down.json()
        assert problem["failing"] == ["database"]
        assert problem["checks"]["database"]["status"] == "unavailable"
        assert "database" in problem["detail"]
        assert problem["request_id"] == down.headers["x-request-id"]
        assert server.get("/health").status_code == 200  # liveness touches nothing

        postgres = EmbeddedPostgres(workdir / "external")
        deadline = time.monotonic() + 15
        while server.get("/health/ready").status_code != 200:
            assert time.monotonic() < deadline, "readiness did not recover after the database returned"
            time.sleep(0.2)
    finally:
        assert server.terminate() == 0, server.output()
        postgres.stop()


@pytest.mark.slow
def test_sigterm_lets_the_request_in_flight_finish(workdir: Path, migrated_database_url: str) -> None:
    """A readiness probe held up by a paused Redis is in flight when SIGTERM arrives; it still gets its answer."""
    server = ServeProcess(workdir, env={"DATABASE_URL": migrated_database_url, "REDIS_URL": REDIS_URL})
    redis_client = redis.Redis.from_url(REDIS_URL)
    try:
        server.wait_until_healthy()
        assert server.get("/health/ready").json()["checks"]["redis"]["status"] == "ok"

        outcome: dict[str, object] = {}

        def probe() -> None:
            started = time.monotonic()
            outcome["response"] = httpx.get(f"{server.base_url}/health/ready", timeout=30)
            outcome["seconds"] = time.monotonic() - started

        redis_client.execute_command("CLIENT", "PAUSE", 1500, "ALL")
        in_flight = threading.Thread(target=probe)
        in_flight.start()
        time.sleep(0.4)
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{server.base_url}/health", timeout=2)  # no new connections while draining
        in_flight.join(30)
        exit_code = server.process.wait(30)
    finally:
        redis_client.close()
        server.kill()

    response = outcome["response"]
    assert isinstance(response, httpx.Response)
    assert response.status_code == 200
    assert response.json()["checks"]["redis"]["status"] == "ok"
    assert outcome["seconds"] >= 1.0  # it really was held up across the signal
    assert exit_code == 0, server.output()
    assert "Application shutdown complete" in server.output()


@pytest.mark.slow
def test_reload_mode_serves_and_stops(workdir: Path, migrated_database_url: str) -> None:
    server = ServeProcess(workdir, "--reload", env={"DATABASE_URL": migrated_database_url})
    try:
        server.wait_until_healthy()
        assert server.get("/health/ready").status_code == 200
        assert "reload" in server.output()
    finally:
        exit_code = server.terminate()
    assert exit_code == 0, server.output()


def test_reload_with_several_workers_is_refused(workdir: Path) -> None:
    result = CliRunner().invoke(app, ["serve", "--reload", "--workers", "2"], env={"DATABASE_URL": "postgresql:///x"})
    assert result.exit_code == 2
    assert "--reload restarts a single process" in result.stderr


def test_help_lists_the_commands() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("serve", "migrate", "config"):
        assert command in result.stdout
