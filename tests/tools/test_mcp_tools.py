"""MCP tools and approvals through a real `agentctl serve`, with real MCP servers: the reference stdio server from
PyPI (mcp-server-time) and a streamable-HTTP server of the tests built with the `mcp` SDK (notes_server.py). The
model is the simulator, scripted to call the tools."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest

from agentctl.simulator.process import RunningSimulator
from tests.chat.conftest import Conversation, answer_of, read_events, serve_with_model
from tests.support import ApiClient, fetch_rows
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


def pause_for(chat: Conversation, simulator: RunningSimulator, text: str, *calls: tuple[str, dict]) -> list[dict]:
    """Send ``text``, scripted to call ``calls``; the calls awaiting approval."""
    script(simulator, text, *calls)
    events = chat.stream(text)
    [approval] = events_named(events, "approval")
    return approval["calls"]


def answer(api: ApiClient, chat: Conversation, body: dict) -> list[tuple[str, str, dict]]:
    response = api.request("POST", "/chatbot/approval", token=chat.token, json=body)
    assert response.status_code == 202, response.text
    return read_events(api, f"/chatbot/runs/{response.json()['id']}/stream", chat.token)


def test_an_edited_call_runs_with_the_new_arguments_which_the_conversation_keeps(
    tools_api: ApiClient, simulator: RunningSimulator, notes_http: NotesServer
) -> None:
    chat = Conversation(tools_api)
    [call] = pause_for(chat, simulator, "remember the keys", ("notes__write_note", {"text": "keys"}))
    refused = tools_api.request(
        "POST",
        "/chatbot/approval",
        token=chat.token,
        json={"decisions": [{"id": call["id"], "decision": "edit", "arguments": {"text": 42}}]},
    )
    assert refused.status_code == 422
    assert refused.json()["errors"][0]["field"] == "decisions[0].arguments.text"
    events = answer(
        tools_api,
        chat,
        {"decisions": [{"id": call["id"], "decision": "edit", "arguments": {"text": "keys in the drawer"}}]},
    )
    assert "note written: keys in the drawer" in answer_of(events)
    assert notes_http.calls("write_note")[-1]["arguments"] == {"text": "keys in the drawer"}
    history = chat.history()
    [asked] = [message for message in history if message.get("tool_calls")]
    assert asked["tool_calls"] == [{"name": "notes__write_note", "arguments": {"text": "keys in the drawer"}}]
    [ran] = [data for _id, name, data in events if name == "tool" and data["status"] != "started"]
    assert ran["approval"] == {"decision": "edited", "arguments_asked": {"text": "keys"}}


def test_a_rejected_call_does_not_run_and_the_model_reads_the_reason(
    tools_api: ApiClient, simulator: RunningSimulator, notes_http: NotesServer, migrated_database_url: str
) -> None:
    chat = Conversation(tools_api)
    before = len(notes_http.calls("write_note"))
    [call] = pause_for(chat, simulator, "note the password", ("notes__write_note", {"text": "hunter2"}))
    events = answer(
        tools_api, chat, {"decisions": [{"id": call["id"], "decision": "reject", "reason": "no secrets in notes"}]}
    )
    assert "notes__write_note: the user rejected this call: no secrets in notes" in answer_of(events)
    assert len(notes_http.calls("write_note")) == before
    [ran] = [data for _id, name, data in events if name == "tool" and data["status"] != "started"]
    assert ran["approval"] == {"decision": "rejected", "reason": "no secrets in notes"}
    assert ran["status"] == "error"
    # The turn records: the paused run lists the call as awaiting approval, the resumed one keeps the decision.
    rows = fetch_rows(
        migrated_database_url,
        "SELECT status, resumed, tool_calls FROM chat_turns WHERE session = $1 ORDER BY created_at",
        uuid.UUID(chat.session_id),
    )
    assert [(row["status"], row["resumed"]) for row in rows] == [("awaiting_approval", False), ("done", True)]
    paused, resumed = (json.loads(row["tool_calls"]) for row in rows)
    assert paused == [{"name": "notes__write_note", "arguments": {"text": "hunter2"}, "status": "awaiting_approval"}]
    assert resumed[0]["approval"] == {"decision": "rejected", "reason": "no secrets in notes"}


def test_several_calls_of_one_step_are_shown_together_and_decided_one_by_one(
    tools_api: ApiClient, simulator: RunningSimulator, notes_http: NotesServer
) -> None:
    chat = Conversation(tools_api)
    calls = pause_for(
        chat,
        simulator,
        "two notes and the time",
        ("notes__write_note", {"text": "first"}),
        ("notes__write_note", {"text": "second"}),
        ("time__get_current_time", {"timezone": "UTC"}),
    )
    assert [call["arguments"] for call in calls] == [{"text": "first"}, {"text": "second"}]  # the allowed one waits
    missing = tools_api.request(
        "POST",
        "/chatbot/approval",
        token=chat.token,
        json={"decisions": [{"id": calls[0]["id"], "decision": "approve"}]},
    )
    assert missing.status_code == 422
    events = answer(
        tools_api, chat, {"decisions": [{"id": calls[0]["id"], "decision": "approve"}], "decision": "reject"}
    )
    text = answer_of(events)
    assert "note written: first" in text
    assert "the user rejected this call" in text
    assert '"timezone": "UTC"' in text  # the allowed call ran, after the decisions
    assert [call["arguments"]["text"] for call in notes_http.calls("write_note")][-1] == "first"


def test_a_message_sent_instead_of_a_decision_rejects_the_calls_with_it_as_the_reason(
    tools_api: ApiClient, simulator: RunningSimulator, notes_http: NotesServer
) -> None:
    chat = Conversation(tools_api)
    before = len(notes_http.calls("write_note"))
    pause_for(chat, simulator, "note my shopping", ("notes__write_note", {"text": "eggs"}))
    events = chat.stream("actually, never mind")
    text = "".join(data["content"] for data in events_named(events, "token"))
    assert "the user rejected this call: the user answered instead: actually, never mind" in text
    assert len(notes_http.calls("write_note")) == before
    assert tools_api.request("GET", "/chatbot/messages", token=chat.token).json()["approval"] is None


def test_a_denied_tool_is_never_offered_to_the_model(tools_api: ApiClient, simulator: RunningSimulator) -> None:
    script(simulator, "who are you", ("notes__whoami", {}))
    events = Conversation(tools_api).stream("who are you, server?")
    offered = simulator.stats()["last_tools"]
    assert "notes__whoami" not in offered
    assert {"notes__write_note", "time__get_current_time", "calculator", "notes__calculator"} <= set(offered)
    [finished] = [data for data in events_named(events, "tool") if data["status"] != "started"]
    assert finished["result"].startswith("notes__whoami failed: no such tool")


def test_a_tool_named_like_a_built_in_is_namespaced_and_never_shadows_it(
    tools_api: ApiClient, simulator: RunningSimulator, notes_http: NotesServer
) -> None:
    script(simulator, "multiply", ("calculator", {"expression": "6*7"}), ("notes__calculator", {"expression": "1+1"}))
    chat = Conversation(tools_api)
    events = chat.stream("multiply six by seven")
    [approval] = events_named(events, "approval")  # the notes server's calculator needs approval, the built-in not
    assert [call["tool"] for call in approval["calls"]] == ["notes__calculator"]
    resumed = answer(tools_api, chat, {"decision": "approve"})
    text = answer_of(resumed)
    assert "calculator: 42" in text
    assert "notes__calculator: notes calculator says: 1+1" in text


def test_a_slow_tool_times_out_and_a_long_result_is_cut_without_failing_the_turn(
    tools_api: ApiClient, simulator: RunningSimulator
) -> None:
    script(simulator, "slow and big", ("notes__slow", {"seconds": 5}), ("notes__big", {"characters": 5000}))
    events = Conversation(tools_api).stream("slow and big please")
    finished = {data["name"]: data for data in events_named(events, "tool") if data["status"] != "started"}
    assert finished["notes__slow"]["status"] == "error"
    assert finished["notes__slow"]["result"] == "notes__slow failed: no result within 1 s"
    assert finished["notes__big"]["status"] == "success"
    text = "".join(data["content"] for data in events_named(events, "token"))
    assert "[cut: 4800 more characters; the tool's result is limited to 200]" in text
    assert events[-1][0] == "done"


def test_readiness_reports_a_server_that_cannot_start_as_degraded_and_metrics_count_tools(
    tools_api: ApiClient,
) -> None:
    ready = tools_api.request("GET", "/../../health/ready")
    assert ready.status_code == 200
    body = ready.json()
    assert body["status"] == "degraded"
    mcp = body["checks"]["mcp"]
    assert mcp["status"] == "degraded"
    assert "broken: FileNotFoundError" in mcp["error"]
    assert mcp["servers"]["time"]["state"] == "up"
    assert mcp["servers"]["notes"]["state"] == "up"
    assert mcp["servers"]["broken"]["state"] == "down"
    metrics = tools_api.request("GET", "/../../metrics").text
    assert 'agentctl_tool_calls_total{outcome="ok",tool="time__get_current_time"}' in metrics
    assert 'agentctl_tool_approvals_total{decision="approved",tool="notes__write_note"}' in metrics
    assert 'agentctl_mcp_server_up{server="broken"} 0.0' in metrics
    assert "notes-secret-value" not in tools_api.server.output()


def test_the_openai_compatible_api_is_offered_only_tools_that_need_no_approval(
    tools_api: ApiClient, simulator: RunningSimulator
) -> None:
    key = tools_api.request(
        "POST", "/auth/api-keys", token=tools_api.new_user()[1], json={"name": "tools", "scopes": ["chat"]}
    ).json()["key"]
    simulator.configure({})
    response = tools_api.request(
        "POST",
        "/../../v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": "Agent", "messages": [{"role": "user", "content": "hello"}]},
    )
    assert response.status_code == 200, response.text
    offered = simulator.stats()["last_tools"]
    assert "time__get_current_time" in offered
    assert "notes__write_note" not in offered
