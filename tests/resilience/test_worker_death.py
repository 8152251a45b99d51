"""A worker killed outright (SIGKILL: the OOM killer, say) never runs its shutdown. Its supervisor replaces it and
drops its live gauges from the shared metrics, so that /metrics stops counting the streams and requests it held."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from agentctl.simulator.process import RunningSimulator
from tests.chat.conftest import Conversation, serve_with_model
from tests.support import ApiClient, metric_value


def _hold_stream(conversation: Conversation, opened: threading.Event, ended: list[str]) -> None:
    try:
        with conversation.open_stream("a very long story please", timeout=60) as response:
            for line in response.iter_lines():
                if line.startswith("event: token"):
                    opened.set()
        ended.append("finished")
    except httpx.HTTPError:
        ended.append("broken")  # its worker died under it


@pytest.mark.slow
def test_a_killed_workers_live_gauges_leave_the_scrape(
    tmp_path: Path, migrated_database_url: str, simulator: RunningSimulator
) -> None:
    simulator.configure({"tokens_per_second": 5, "answer_tokens": 100})  # 20 s answers: open throughout
    server = serve_with_model(
        tmp_path, migrated_database_url, simulator, "--workers", "2", AGENTCTL_MEMORY__ENABLED="false"
    )
    server.wait_until_healthy()
    api = ApiClient(server)
    streams: list[threading.Thread] = []
    try:
        parent = psutil.Process(server.process.pid)
        workers = _workers_of(parent)
        assert len(workers) == 2
        user_token = api.new_user()[1]
        ended: list[str] = []
        for _ in range(6):  # spread over both workers
            opened = threading.Event()
            thread = threading.Thread(
                target=_hold_stream, args=(Conversation(api, user_token=user_token), opened, ended)
            )
            thread.start()
            assert opened.wait(30)
            streams.append(thread)
        assert metric_value(server.get("/metrics").text, "agentctl_sse_streams_open") == 6

        victim = max(workers, key=lambda pid: _clients_of(pid, server.port))
        assert _clients_of(victim, server.port) >= 1
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while len(ended) < 6 and "broken" not in ended:
            assert time.monotonic() < deadline, "the killed worker's streams did not break"
            time.sleep(0.1)
        time.sleep(0.5)
        while True:  # the supervisor notices within a second and starts a replacement
            replaced = _workers_of(parent)
            if len(replaced) == 2 and victim not in replaced:
                break
            assert time.monotonic() < deadline, "the dead worker was not replaced"
            time.sleep(0.2)
        broken = ended.count("broken")
        assert broken >= 1
        deadline = time.monotonic() + 10
        while True:
            metrics = server.get("/metrics").text
            if metric_value(metrics, "agentctl_sse_streams_open") == 6 - broken:
                break
            assert time.monotonic() < deadline, metrics
            time.sleep(0.2)
        assert metric_value(metrics, "agentctl_http_requests_in_flight") == 1 + (6 - broken)  # the scrape itself
        assert f"worker {victim} died" in server.output()
    finally:
        server.terminate()
        simulator.configure({})
        for thread in streams:
            thread.join(30)


def _workers_of(parent: psutil.Process) -> list[int]:
    """uvicorn's worker processes (spawned), not multiprocessing's resource tracker, nor a killed one not yet
    reaped (a zombie has no command line to read)."""
    workers = []
    for child in parent.children():
        try:
            if "spawn_main" in " ".join(child.cmdline()):
                workers.append(child.pid)
        except (psutil.ZombieProcess, psutil.NoSuchProcess):
            continue
    return sorted(workers)


def _clients_of(pid: int, port: int) -> int:
    """Connections a worker holds open to clients of the server's port."""
    return sum(
        1
        for connection in psutil.Process(pid).net_connections(kind="tcp")
        if connection.laddr and connection.laddr.port == port and connection.status == psutil.CONN_ESTABLISHED
    )
