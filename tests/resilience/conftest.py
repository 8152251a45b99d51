"""What the fault tests stop and start for real: a Redis server and a PostgreSQL server of their own (never the
ones the rest of the suite shares), and the model simulator."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redis

from server.database.embedded import EmbeddedPostgres
from tests.support import clean_environment, free_port


class RedisServer:
    """redis-server on a free loopback port, stopped and started by the test (nothing kept on disk)."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._workdir = workdir
        self._process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None, "redis-server is not installed: run `make services`"
        self._process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            cwd=self._workdir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_timeout=1)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return
            except redis.RedisError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(10)

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=10)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    try:
        yield server
    finally:
        server.stop()


class PostgresServer:
    """An embedded PostgreSQL of the test's own, migrated, which the test can crash (SIGKILL) and start again."""

    def __init__(self, workdir: Path) -> None:
        self._workdir = workdir
        self._embedded = EmbeddedPostgres(workdir)
        self.url = self._embedded.url
        subprocess.run(
            [sys.executable, "-m", "agentctl", "migrate"],
            env=clean_environment(DATABASE_URL=self.url),
            check=True,
            capture_output=True,
        )

    @property
    def data_dir(self) -> Path:
        return self._embedded.data_dir

    def crash(self) -> None:
        """SIGKILL the postmaster, as the OOM killer or a power cut would; its backends die with it."""
        pid = int((self.data_dir / "postmaster.pid").read_text().splitlines()[0])
        backends = [child.pid for child in psutil.Process(pid).children(recursive=True)]
        os.kill(pid, signal.SIGKILL)
        for backend in backends:  # they leave by themselves on postmaster death; do not wait for it
            with contextlib.suppress(ProcessLookupError):
                os.kill(backend, signal.SIGKILL)
        psutil.wait_procs([psutil.Process(pid)] if psutil.pid_exists(pid) else [], timeout=10)
        self._embedded.stop()  # drops this process's handle; nothing is left running to stop

    def start_again(self) -> None:
        self._embedded = EmbeddedPostgres(self._workdir)
        assert self._embedded.url == self.url

    def stop(self) -> None:
        self._embedded.stop()


@pytest.fixture
def postgres_server(tmp_path: Path) -> Iterator[PostgresServer]:
    server = PostgresServer(tmp_path / "own-postgres")
    try:
        yield server
    finally:
        server.stop()
