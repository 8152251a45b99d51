"""Helpers the tests share: databases on the test PostgreSQL, and a real `agentctl serve` in a subprocess."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx

from agentctl.loadtest.runner import free_loopback_port as free_port

REPO_ROOT = Path(__file__).resolve().parent.parent


def database_url_named(server_url: str, name: str) -> str:
    """The URL of database ``name`` on the server ``server_url`` points at."""
    return urlunsplit(urlsplit(server_url)._replace(path=f"/{name}"))


def fetch_rows(database_url: str, query: str, *args: object) -> list[asyncpg.Record]:
    """The rows of one query, on a connection of its own (for tests that run outside an event loop)."""

    async def fetch() -> list[asyncpg.Record]:
        connection = await asyncpg.connect(database_url)
        try:
            return await connection.fetch(query, *args)
        finally:
            await connection.close()

    return asyncio.run(fetch())


def unique_database_name() -> str:
    return f"test_{uuid.uuid4().hex[:12]}"


async def new_migrated_database(server_url: str) -> str:
    """The URL of a new database on ``server_url``, migrated: for tests that keep their data in a database of their
    own."""
    import asyncpg

    from agentctl.config import Settings
    from server.schema import open_database

    name = unique_database_name()
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = database_url_named(server_url, name)
    async with open_database(url, Settings(), schema="migrate"):
        pass
    return url


def b64url_json(data: dict) -> str:
    """A JWT segment: base64url of the JSON, unpadded."""
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def clean_environment(**extra: str) -> dict[str, str]:
    """The test process's environment without agentctl's own variables, plus ``extra``."""
    environ = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AGENTCTL_", "LANGFUSE_"))
        and key not in ("DATABASE_URL", "REDIS_URL", "OPENAI_API_KEY", "PROMETHEUS_MULTIPROC_DIR")
    }
    environ.update(extra)
    return environ


# Servers in tests that never call a model still need one configured: an endpoint nothing listens on.
_NO_MODEL_NEEDED = {"AGENTCTL_LLM__BASE_URL": "http://127.0.0.1:9/v1", "OPENAI_API_KEY": "test-key"}
NO_MODEL_SETTINGS = {"base_url": "http://127.0.0.1:9/v1", "api_key": "test-key"}


class ServeProcess:
    """`agentctl serve` as an operator runs it: a real process, real uvicorn, real signals."""

    def __init__(self, workdir: Path, *args: str, env: Mapping[str, str] | None = None) -> None:
        self.workers = int(args[args.index("--workers") + 1]) if "--workers" in args else 1
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"serve-{self.port}.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "agentctl", "serve", "--port", str(self.port), *args],
            cwd=workdir,
            env=clean_environment(**{**_NO_MODEL_NEEDED, "AGENTCTL_ENV": "test", **(env or {})}),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_until_healthy(self, timeout: float = 60.0) -> None:
        """Until /health answers and every worker has finished starting (one answering is not all of them)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"serve exited with {self.process.returncode}:\n{self.output()}")
            try:
                answered = httpx.get(f"{self.base_url}/health", timeout=1).status_code == 200
            except httpx.TransportError:
                answered = False
            if answered and self.output().count("worker ready") >= self.workers:
                return
            time.sleep(0.1)
        raise AssertionError(f"serve did not answer /health within {timeout} s:\n{self.output()}")

    def get(self, path: str, **kwargs: object) -> httpx.Response:
        return httpx.get(f"{self.base_url}{path}", timeout=10, **kwargs)  # type: ignore[arg-type]

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM, as an orchestrator sends it; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self._log.close()

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")


def unique_email(label: str = "user") -> str:
    return f"{label}-{uuid.uuid4().hex[:12]}@example.com"


class ApiClient:
    """Speaks the HTTP contract to a ServeProcess; every call is a new connection, so workers share the load."""

    password = "correct horse 1 battery"

    def __init__(self, server: ServeProcess) -> None:
        self.server = server
        self.base_url = f"{server.base_url}/api/v1"

    def request(self, method: str, path: str, *, token: str | None = None, **kwargs: object) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}) or {})  # type: ignore[call-overload]
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return httpx.request(method, f"{self.base_url}{path}", headers=headers, timeout=30, **kwargs)  # type: ignore[arg-type]

    def register(
        self, email: str | None = None, password: str | None = None, *, headers: dict | None = None, **fields: object
    ) -> dict:
        body = {"email": email or unique_email(), "password": password or self.password, **fields}
        response = self.request("POST", "/auth/register", json=body, headers=headers)
        assert response.status_code == 201, response.text
        return response.json()

    def login(self, email: str, password: str | None = None) -> dict:
        response = self.request("POST", "/auth/login", json={"email": email, "password": password or self.password})
        assert response.status_code == 200, response.text
        return response.json()

    def new_user(self) -> tuple[str, str]:
        """(email, access token) of a fresh account."""
        email = unique_email()
        return email, self.register(email)["token"]["access_token"]

    def pids_that_served(self, request_ids: list[str]) -> set[str]:
        """Which worker processes handled the requests with these ids, read from the server's log."""
        pids = set()
        for line in self.server.output().splitlines():
            for request_id in request_ids:
                if request_id in line and "pid=" in line:
                    pids.add(line.split("pid=", 1)[1].split()[0])
        return pids


def metric_value(exposition: str, series: str) -> float:
    """The value of one series (its name and labels, sorted, as exposed) in a Prometheus exposition; 0 if absent."""
    for line in exposition.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


class CuttingProxy:
    """A loopback TCP proxy in front of a server that cuts, once, the first connection whose request starts with
    ``cut_request`` after ``cut_after`` bytes of its response: a dropped stream, as a proxy or a network drops it."""

    def __init__(self, target_port: int, *, cut_request: bytes, cut_after: int) -> None:
        self._target = ("127.0.0.1", target_port)
        self._cut_request = cut_request
        self._cut_after = cut_after
        self.cuts = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.base_url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._closed = True
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream = socket.create_connection(self._target)
        armed = threading.Event()  # this connection carries the request to cut (clients reuse connections)
        threading.Thread(target=self._requests, args=(client, upstream, armed), daemon=True).start()
        sent = 0
        try:
            while chunk := upstream.recv(4096):
                if armed.is_set():
                    if sent + len(chunk) > self._cut_after:
                        client.sendall(chunk[: self._cut_after - sent])
                        break
                    sent += len(chunk)
                client.sendall(chunk)
        except OSError:
            pass
        _close(client, upstream)

    def _requests(self, client: socket.socket, upstream: socket.socket, armed: threading.Event) -> None:
        try:
            while chunk := client.recv(65536):
                if self.cuts == 0 and chunk.startswith(self._cut_request):
                    self.cuts += 1
                    armed.set()
                upstream.sendall(chunk)
        except OSError:
            pass
        _close(client, upstream)


def _close(*ends: socket.socket) -> None:
    for end in ends:
        with contextlib.suppress(OSError):
            end.shutdown(socket.SHUT_RDWR)
        end.close()
