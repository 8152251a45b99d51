"""What outlives a failure: a stdio MCP server killed mid-call is restarted, a server that never starts leaves the
agent running without it, and a pause for approval is answered after a restart, from another replica. Real
`agentctl serve` processes, a stdio server of the tests built with the `mcp` SDK, the simulator as the model."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentctl.simulator.process import RunningSimulator
from tests.chat.conftest import Conversation, answer_of, read_events, serve_with_model
from tests.support import ApiClient
from tests.tools.conftest import notes_stdio, write_servers_file
from tests.tools.test_mcp_tools import events_named, script

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def supervised_api(
    tmp_path_factory: pytest.TempPathFactory, migrated_database_url: str, simulator: RunningSimulator
) -> Iterator[tuple[ApiClient, str]]:
    workdir = tmp_path_factory.mktemp("supervised")
    journal = workdir / "calls.jsonl"
    servers = write_servers_file(
        workdir / "mcp.json",
        {
            "notes": {**notes_stdio(journal), "policy": "allow"},
            # Starts, but never answers the MCP handshake.
            "mute": {"command": "sleep", "args": ["600"], "connect_timeout_seconds": 1},
        },
    )
    server = serve_with_model(
        workdir,
        migrated_database_url,
        simulator,
        AGENTCTL_AGENT__MCP_SERVERS_FILE=str(servers),
        AGENTCTL_AGENT__MCP_START_TIMEOUT_SECONDS="5",
        AGENTCTL_AGENT__MCP_RESTART_MAX_SECONDS="2",
    )
    try:
        server.wait_until_healthy()
        yield ApiClient(server), str(journal)
    finally:
        server.terminate()


def server_pid(api: ApiClient, simulator: RunningSimulator) -> int:
    script(simulator, "whoami", ("notes__whoami", {}))
    events = Conversation(api).stream("whoami")
    [finished] = [data for data in events_named(events, "tool") if data["status"] != "started"]
    assert finished["status"] == "success", finished
    return int(finished["result"])


def mcp_servers(api: ApiClient) -> dict:
    return api.request("GET", "/../../health/ready").json()["checks"]["mcp"]["servers"]


def test_a_stdio_server_killed_mid_call_gives_a_tool_error_then_is_restarted(
    supervised_api: tuple[ApiClient, str], simulator: RunningSimulator
) -> None:
    api, journal = supervised_api
    first = server_pid(api, simulator)
    script(simulator, "take your time", ("notes__slow", {"seconds": 20}))
    chat = Conversation(api)
    events: list[tuple[str, dict]] = []
    turn = threading.Thread(target=lambda: events.extend(chat.stream("take your time")))
    turn.start()
    deadline = time.monotonic() + 20
    while '"slow"' not in (Path(journal).read_text() if Path(journal).exists() else ""):
        assert time.monotonic() < deadline, "the slow call never reached the server"
        time.sleep(0.05)
    os.kill(first, signal.SIGKILL)  # the call is under way in the server's process
    turn.join(timeout=30)
    assert not turn.is_alive()
    [finished] = [data for data in events_named(events, "tool") if data["status"] != "started"]
    assert finished["status"] == "error"
    assert finished["result"].startswith("notes__slow failed:")
    assert events[-1][0] == "done"  # a failed tool is not a failed turn

    deadline = time.monotonic() + 30
    while (state := mcp_servers(api)["notes"])["state"] != "up" or not state.get("restarts"):
        assert time.monotonic() < deadline, state
        time.sleep(0.2)
    assert server_pid(api, simulator) != first


def test_a_server_that_never_answers_leaves_the_agent_running_without_its_tools(
    supervised_api: tuple[ApiClient, str], simulator: RunningSimulator
) -> None:
    api, _journal = supervised_api
    mute = mcp_servers(api)["mute"]
    assert mute["state"] == "down"
    assert "no answer within its connect timeout" in mute["error"]
    simulator.configure({})
    events = Conversation(api).stream("hello there")
    assert events[-1][0] == "done"
    assert not any(name.startswith("mute__") for name in simulator.stats()["last_tools"])
    script(simulator, "speak", ("mute__hello", {}))  # a model that remembers the tool from an earlier turn
    events = Conversation(api).stream("speak, mute server")
    [finished] = [data for data in events_named(events, "tool") if data["status"] != "started"]
    assert finished["result"] == "mute__hello failed: its MCP server mute is not available right now; try again later"
    assert "MCP server mute did not start" in api.server.output()


def test_an_approval_survives_a_restart_and_is_answered_from_another_replica(
    tmp_path_factory: pytest.TempPathFactory, migrated_database_url: str, simulator: RunningSimulator
) -> None:
    env = {
        "AGENTCTL_AGENT__TOOLS__CALCULATOR__POLICY": "approve",
        "AGENTCTL_AUTH__JWT_SECRET": uuid.uuid4().hex * 2,  # replicas share their signing key, as in production
    }
    first, second = (
        serve_with_model(tmp_path_factory.mktemp(f"replica{index}"), migrated_database_url, simulator, **env)
        for index in range(2)
    )
    restarted = None
    try:
        first.wait_until_healthy()
        second.wait_until_healthy()
        one, two = ApiClient(first), ApiClient(second)
        script(simulator, "multiply", ("calculator", {"expression": "6*7"}))
        chat = Conversation(one)
        [approval] = events_named(chat.stream("multiply six by seven"), "approval")
        assert approval["calls"][0]["tool"] == "calculator"
        first.terminate()  # the replica that paused is gone; the pause is in the checkpoint

        restarted = serve_with_model(tmp_path_factory.mktemp("replica0-again"), migrated_database_url, simulator, **env)
        restarted.wait_until_healthy()
        response = two.request("POST", "/chatbot/approval", token=chat.token, json={"decision": "approve"})
        assert response.status_code == 202, response.text
        events = read_events(two, f"/chatbot/runs/{response.json()['id']}/stream", chat.token)
        assert "calculator: 42" in answer_of(events)

        # And the other way round, with the replica that restarted.
        again = Conversation(two, user_token=chat.user_token)
        [approval] = events_named(again.stream("multiply once more"), "approval")
        answered = ApiClient(restarted).request(
            "POST",
            "/chatbot/approval",
            token=again.token,
            json={"decisions": [{"id": approval["calls"][0]["id"], "decision": "approve"}]},
        )
        assert answered.status_code == 202, answered.text
        events = read_events(ApiClient(restarted), f"/chatbot/runs/{answered.json()['id']}/stream", again.token)
        assert "calculator: 42" in answer_of(events)
    finally:
        for server in (first, second, restarted):
            if server is not None:
                server.terminate()
