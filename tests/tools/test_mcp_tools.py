"""MCP tools and approvals through a real `agentctl serve`, with real MCP servers: the reference stdio server from
PyPI (mcp-server-time) and a streamable-HTTP server of the tests built with the `mcp` SDK (notes_server.py). The
model is the simulator, scripted to call the tools."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from agentctl.simulator.process import RunningSimulator
from tests.chat.conftest import Conversation, answer_of, read_events, serve_with_model
from tests.support import ApiClient
from tests.tools.conftest import TIME_SERVER, NotesServer, write_servers_file

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tools_api(
    tmp_path_factory: pytest.TempPathFactory,
    migrated_database_url: str,
    simulator: RunningSimulator,
    notes_http: NotesServer,
) -> Iterator[ApiClient]:
    workdir = tmp_path_factory.mktemp("tools")
    servers = write_servers_file(
        workdir / "mcp.json",
        {
            "time": {"command": TIME_SERVER, "args": ["--local-timezone", "UTC"], "policy": "allow"},
            "notes": {"type": "http", "url": notes_http.url, "headers": {"X-Token": "${NOTES_TOKEN}"}},
            "broken": {"command": str(workdir / "no-such-server")},
        },
        tools={
            "notes__whoami": {"policy": "deny"},
            "notes__slow": {"policy": "allow", "timeout_seconds": 1},
            "notes__big": {"policy": "allow", "max_output_chars": 200},
            "calculator": {"policy": "allow"},
        },
    )
    server = serve_with_model(
        workdir,
        migrated_database_url,
        simulator,
        AGENTCTL_AGENT__MCP_SERVERS_FILE=str(servers),
        NOTES_TOKEN="notes-secret-value",
        AGENTCTL_AGENT__MCP_START_TIMEOUT_SECONDS="20",
    )
    try:
        server.wait_until_healthy()
        yield ApiClient(server)
    finally:
        server.terminate()


def script(simulator: RunningSimulator, match: str, *calls: tuple[str, dict]) -> None:
    simulator.configure(
        {"script": [{"match": match, "tool_calls": [{"name": name, "arguments": args} for name, args in calls]}]}
    )


def events_named(events: list[tuple[str, dict]], name: str) -> list[dict]:
    return [data for event, data in events if event == name]


def test_an_allowed_stdio_tool_runs_and_its_result_reaches_the_model(
    tools_api: ApiClient, simulator: RunningSimulator
) -> None:
    script(simulator, "what time", ("time__get_current_time", {"timezone": "Europe/Paris"}))
    events = Conversation(tools_api).stream("what time is it in Paris?")
    [finished] = [data for data in events_named(events, "tool") if data["status"] != "started"]
    assert finished["name"] == "time__get_current_time"
    assert finished["status"] == "success"
    assert "Europe/Paris" in finished["result"]
    answer = "".join(data["content"] for data in events_named(events, "token"))
    assert answer.startswith("Tool results: time__get_current_time:")
    assert events[-1][0] == "done"


def test_an_approve_tool_waits_for_the_user_then_runs_once_approved(
    tools_api: ApiClient, simulator: RunningSimulator, notes_http: NotesServer
) -> None:
    script(simulator, "note this", ("notes__write_note", {"text": "buy milk"}))
    chat = Conversation(tools_api)
    events = chat.stream("note this: buy milk")
    [approval] = events_named(events, "approval")
    [call] = approval["calls"]
    assert (call["tool"], call["server"], call["arguments"]) == ("notes__write_note", "notes", {"text": "buy milk"})
    assert events[-1][0] == "done"
    assert notes_http.calls("write_note") == []  # nothing ran yet
    runs = tools_api.request("GET", "/chatbot/runs", token=chat.token).json()["items"]
    assert runs[0]["status"] == "awaiting_approval"
    pending = tools_api.request("GET", "/chatbot/messages", token=chat.token).json()["approval"]
    assert pending["calls"][0]["id"] == call["id"]

    answered = tools_api.request("POST", "/chatbot/approval", token=chat.token, json={"decision": "approve"})
    assert answered.status_code == 202, answered.text
    run = answered.json()
    resumed = read_events(tools_api, f"/chatbot/runs/{run['id']}/stream", chat.token)
    assert "note written: buy milk" in answer_of(resumed)
    [ran] = [data for _id, name, data in resumed if name == "tool" and data["status"] != "started"]
    assert ran["approval"] == {"decision": "approved"}
    assert [entry["arguments"] for entry in notes_http.calls("write_note")] == [{"text": "buy milk"}]
    again = tools_api.request("POST", "/chatbot/approval", token=chat.token, json={"decision": "approve"})
    assert again.status_code == 409
    assert again.json()["type"].endswith("no-approval-pending")
