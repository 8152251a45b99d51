"""A worker killed mid-turn: the history stays consistent and the session goes on."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from unittest.mock import ANY

import pytest

from agentctl.simulator.process import RunningSimulator
from tests.chat.conftest import Conversation, read_events, serve_with_model
from tests.support import ApiClient

pytestmark = pytest.mark.slow


def test_sigkill_mid_turn_then_recovery(
    tmp_path: Path, migrated_database_url: str, simulator: RunningSimulator
) -> None:
    """Within the run lease the killed run is error worker-lost, its followers get that error, the history holds
    nothing half-written, and the next message works."""
    lease = {"AGENTCTL_CHAT__RUN_LEASE_SECONDS": "3"}
    server = serve_with_model(tmp_path, migrated_database_url, simulator, **lease)
    server.wait_until_healthy()
    talk = Conversation(ApiClient(server))
    assert talk.send("a first, complete exchange").status_code == 200
    simulator.configure({"tokens_per_second": 8, "answer_tokens": 80})
    events: list = []
    streaming = threading.Thread(target=lambda: events.extend(_stream_until_cut(talk)))
    streaming.start()
    time.sleep(1.2)  # some tokens reached the client
    server.kill()  # SIGKILL to the whole process group: no shutdown code runs
    streaming.join(20)
    run_id = talk.stream_headers["X-Run-Id"]

    simulator.configure({})
    restarted = serve_with_model(tmp_path, migrated_database_url, simulator, **lease)
    try:
        restarted.wait_until_healthy()
        talk.api = ApiClient(restarted)
        # A follower of the lost run: it ends with the error once the lease has lapsed.
        followed = read_events(talk.api, f"/chatbot/runs/{run_id}/stream", talk.token)
        assert followed[-1][1:] == ("error", {"error": {"type": "worker-lost", "detail": ANY}, "done": True})
        run = talk.api.request("GET", f"/chatbot/runs/{run_id}", token=talk.token).json()
        assert (run["status"], run["error"]["type"]) == ("error", "worker-lost")
        history = talk.history()
        assert history[-1] == {**history[-1], "role": "user", "content": "a story that will be cut short"}
        assert [message["role"] for message in history] == ["user", "assistant", "user"]  # nothing half-written
        assert all(message.get("status") is None for message in history)
        answer = talk.send("are you still there?")
        assert answer.status_code == 200, answer.text
        assert talk.history()[-1]["role"] == "assistant"
    finally:
        restarted.terminate()


def _stream_until_cut(talk: Conversation) -> list:
    try:
        return talk.stream("a story that will be cut short")
    except Exception as error:  # the server died under the stream: that is the point
        return [("cut", {"error": str(error)})]


def test_idle_stream_sends_heartbeats(tmp_path: Path, migrated_database_url: str, simulator: RunningSimulator) -> None:
    server = serve_with_model(
        tmp_path, migrated_database_url, simulator, AGENTCTL_AGENT__STREAM_HEARTBEAT_SECONDS="0.2"
    )
    try:
        server.wait_until_healthy()
        talk = Conversation(ApiClient(server))
        simulator.configure({"ttft_ms": 1000})
        with talk.open_stream("take your time") as response:
            lines = list(response.iter_lines())
        assert lines.count(": keep-alive") >= 2  # ~1 s of silence before the first token, 0.2 s apart
        assert lines.index(": keep-alive") < next(i for i, line in enumerate(lines) if line == "event: token")
    finally:
        simulator.configure({})
        server.terminate()


def test_more_concurrent_turns_than_pool_connections(
    tmp_path: Path, migrated_database_url: str, simulator: RunningSimulator
) -> None:
    """Six sessions' turns at once through a pool of three: runs take connections only for their statements."""
    server = serve_with_model(tmp_path, migrated_database_url, simulator, AGENTCTL_DATABASE__POOL_MAX_SIZE="3")
    try:
        server.wait_until_healthy()
        api = ApiClient(server)
        talks = [Conversation(api) for _ in range(6)]
        simulator.configure({"ttft_ms": 400})
        results: list[int] = []
        threads = [
            threading.Thread(target=lambda talk=talk: results.append(talk.send("together").status_code))
            for talk in talks
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert sorted(results) == [200] * 6
    finally:
        simulator.configure({})
        server.terminate()
