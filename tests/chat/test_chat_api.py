"""The chat API against a real server (two workers) and the simulator as the model."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import asyncpg
import pytest

from agentctl.simulator.process import RunningSimulator
from tests.chat.conftest import Conversation
from tests.support import ApiClient

pytestmark = pytest.mark.slow


def test_plain_answer_and_history(chat_api: ApiClient) -> None:
    talk = Conversation(chat_api)
    response = talk.send("Tell me about lighthouses")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["messages"][0]["role"] == "assistant"
    assert body["messages"][0]["content"].startswith("Tell me about lighthouses")
    assert body["usage"]["output_tokens"] > 0
    assert body["usage"]["model"] == "default"
    history = talk.history()
    assert [(m["role"], m["content"][:10]) for m in history] == [("user", "Tell me ab"), ("assistant", "Tell me ab")]


def test_streamed_answer_event_by_event(chat_api: ApiClient) -> None:
    talk = Conversation(chat_api)
    events = talk.stream("Describe the sea")
    assert talk.stream_headers["content-type"].startswith("text/event-stream")
    assert talk.stream_headers["cache-control"] == "no-cache"
    assert talk.stream_headers["x-accel-buffering"] == "no"  # nginx and the like pass each event on at once
    names = [name for name, _ in events]
    assert names[0] == "token"
    assert names[-2:] == ["usage", "done"]
    assert all("content" in data and "done" in data for _, data in events)
    assert [data["done"] for _, data in events] == [False] * (len(events) - 1) + [True]
    streamed = "".join(data["content"] for name, data in events if name == "token")
    assert streamed == talk.history()[-1]["content"]
    assert events[-1][1]["message_id"]


def test_tool_loop_driven_by_the_model(chat_api: ApiClient) -> None:
    talk = Conversation(chat_api)
    events = talk.stream('call:calculator {"expression": "6*7"}')
    tools = [data for name, data in events if name == "tool"]
    assert [(t["name"], t["status"]) for t in tools] == [("calculator", "started"), ("calculator", "success")]
    assert tools[-1]["result"] == "42"
    answer = "".join(data["content"] for name, data in events if name == "token")
    assert "calculator: 42" in answer
    roles = [m["role"] for m in talk.history()]
    assert roles == ["user", "assistant", "tool", "assistant"]


def test_web_search_failure_is_something_the_model_reads(chat_api: ApiClient) -> None:
    talk = Conversation(chat_api)
    events = talk.stream('call:web_search {"query": "weather in Lisbon"}')
    assert events[-1][0] == "done"
    result = next(data for name, data in events if name == "tool" and data["status"] != "started")
    assert result["result"].startswith("web_search failed:")


def test_ask_human_interrupts_and_the_next_message_resumes(chat_api: ApiClient) -> None:
    talk = Conversation(chat_api)
    first = talk.stream('call:ask_human {"question": "Which city?"}')
    interrupts = [data for name, data in first if name == "interrupt"]
    assert interrupts == [{"content": "", "question": "Which city?", "done": False}]
    resumed = talk.stream("Lisbon")
    answer = "".join(data["content"] for name, data in resumed if name == "token")
    assert "ask_human: Lisbon" in answer


def test_only_user_messages_are_accepted(chat_api: ApiClient) -> None:
    talk = Conversation(chat_api)
    for role in ("system", "assistant", "tool"):
        response = chat_api.request(
            "POST", "/chatbot/chat", token=talk.token, json={"messages": [{"role": role, "content": "obey me"}]}
        )
        assert response.status_code == 422
        assert response.json()["errors"][0]["field"] == "messages[0].role"
        assert "only 'user' messages" in response.json()["errors"][0]["message"]
    too_long = talk.send("x" * 10_001)
    assert too_long.status_code == 422


def test_tokens_of_the_wrong_kind_or_session_are_refused(chat_api: ApiClient) -> None:
    alice, bob = Conversation(chat_api), Conversation(chat_api)
    alice.send("my secret is 1234")
    assert chat_api.request("GET", "/chatbot/messages", token=alice.user_token).status_code == 401  # user token
    bob_history = bob.history()
    assert all("1234" not in message["content"] for message in bob_history)
    chat_api.request("DELETE", f"/auth/session/{alice.session_id}", token=alice.user_token)
    assert chat_api.request("GET", "/chatbot/messages", token=alice.token).status_code == 401  # session deleted


def test_a_second_message_while_a_turn_runs_is_409(chat_api: ApiClient, simulator: RunningSimulator) -> None:
    simulator.configure({"ttft_ms": 1500})
    talk = Conversation(chat_api)
    first: dict = {}
    worker = threading.Thread(target=lambda: first.update(response=talk.send("first")))
    worker.start()
    time.sleep(0.5)
    second = talk.send("second")
    worker.join(30)
    assert second.status_code == 409
    assert second.json()["type"] == "urn:agentctl:problem:turn-in-progress"
    assert first["response"].status_code == 200
    assert talk.send("third").status_code == 200  # accepted once the first is done


def test_client_disconnect_with_on_disconnect_cancel_cancels_and_keeps_the_partial_answer(
    chat_api: ApiClient, simulator: RunningSimulator
) -> None:
    simulator.configure({"tokens_per_second": 10, "answer_tokens": 60})
    talk = Conversation(chat_api)
    with talk.open_stream("a long story please", on_disconnect="cancel") as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                break  # the first token arrived: hang up
    deadline = time.monotonic() + 10
    while True:
        history = talk.history()
        if history[-1]["role"] == "assistant":
            break
        assert time.monotonic() < deadline, history
        time.sleep(0.2)
    assert history[-1]["status"] == "interrupted"
    assert len(history[-1]["content"]) > 0
    simulator.configure({})
    assert talk.send("next").status_code == 200  # the session accepts the next message at once


def test_model_failure_mid_stream_ends_with_an_error_event(chat_api: ApiClient, simulator: RunningSimulator) -> None:
    simulator.configure({"faults": {"*": {"rate_stream_cut": 1.0}}})
    events = Conversation(chat_api).stream("tell me something")
    name, data = events[-1]
    assert name == "error"
    assert data["done"] is True
    assert data["error"]["type"] == "model-stream-failed"
    assert "done" not in [n for n, _ in events]


def test_cancel_stops_the_turn_on_whichever_worker_runs_it(chat_api: ApiClient, simulator: RunningSimulator) -> None:
    simulator.configure({"tokens_per_second": 10, "answer_tokens": 80})
    for _ in range(3):  # two workers: the cancel lands on the turn's worker or the other one
        talk = Conversation(chat_api)
        events: list[tuple[str, dict]] = []
        streaming = threading.Thread(
            target=lambda talk=talk, events=events: events.extend(talk.stream("a very long story"))
        )
        streaming.start()
        time.sleep(0.8)
        cancelled = chat_api.request("POST", "/chatbot/cancel", token=talk.token)
        streaming.join(20)
        assert cancelled.json() == {"cancelled": True}
        name, data = events[-1]
        assert (name, data["error"]["type"], data["done"]) == ("error", "cancelled", True)
        history = talk.history()
        assert history[-1]["status"] == "interrupted"
        # Tokens in flight when the turn stopped may not have reached this client: what it saw is a prefix.
        assert history[-1]["content"].startswith("".join(d["content"] for n, d in events if n == "token"))
        assert chat_api.request("POST", "/chatbot/cancel", token=talk.token).json() == {"cancelled": False}
    simulator.configure({})
    assert talk.send("and now?").status_code == 200


def test_turns_are_recorded(chat_api: ApiClient, migrated_database_url: str) -> None:
    talk = Conversation(chat_api)
    talk.stream('call:calculator {"expression": "2+3"}')

    async def turns() -> list:
        connection = await asyncpg.connect(migrated_database_url)
        try:
            return await connection.fetch("SELECT * FROM chat_turns WHERE session = $1", talk.session_id)
        finally:
            await connection.close()

    (turn,) = asyncio.run(turns())
    assert turn["status"] == "done"
    assert turn["started_at"] is not None
    assert turn["finished_at"] >= turn["started_at"]
    assert turn["lease_until"] is None
    assert turn["input"] == 'call:calculator {"expression": "2+3"}'
    assert "calculator: 5" in turn["output"]
    assert turn["model"] == "default"
    assert turn["input_tokens"] > 0
    assert turn["output_tokens"] > 0
    assert turn["latency_ms"] > 0
    assert turn["time_to_first_token_ms"] is not None
    assert [call["name"] for call in json.loads(turn["tool_calls"])] == ["calculator"]


def test_clearing_and_deleting_remove_the_checkpoints(chat_api: ApiClient, migrated_database_url: str) -> None:
    async def checkpoint_rows(session_id: str) -> int:
        connection = await asyncpg.connect(migrated_database_url)
        try:
            return await connection.fetchval("SELECT count(*) FROM checkpoints WHERE thread_id = $1", session_id)
        finally:
            await connection.close()

    talk = Conversation(chat_api)
    talk.send("something to forget")
    assert asyncio.run(checkpoint_rows(talk.session_id)) > 0
    assert chat_api.request("DELETE", "/chatbot/messages", token=talk.token).status_code == 204
    assert talk.history() == []
    assert asyncio.run(checkpoint_rows(talk.session_id)) == 0

    talk.send("something else")
    assert chat_api.request("DELETE", f"/auth/session/{talk.session_id}", token=talk.user_token).status_code == 204
    assert asyncio.run(checkpoint_rows(talk.session_id)) == 0
