"""Edit, regenerate and branch on LangGraph's checkpoints, over a real `agentctl serve` (two workers) with the
simulator as its model."""

from __future__ import annotations

from agentctl.simulator.process import RunningSimulator
from tests.chat.conftest import Conversation
from tests.support import ApiClient


def _run(conversation: Conversation, path: str, body: dict | None = None) -> dict:
    response = conversation.api.request("POST", f"/chatbot/messages/{path}", token=conversation.token, json=body)
    assert response.status_code == 202, response.text
    return response.json()


def _waited(conversation: Conversation, run: dict) -> dict:
    waited = conversation.api.request("GET", f"/chatbot/runs/{run['id']}/wait?timeout=30", token=conversation.token)
    assert waited.json()["status"] == "done", waited.text
    return waited.json()


def _said(history: list[dict]) -> list[str]:
    return [message["content"] for message in history if message["role"] == "user"]


def test_edit_continues_from_before_the_message_and_keeps_the_old_version_as_a_branch(chat_api: ApiClient) -> None:
    conversation = Conversation(chat_api)
    for text in ("first question", "second question", "third question"):
        assert conversation.send(text).status_code == 200
    second = conversation.history()[2]
    assert second["content"] == "second question"

    edited = _waited(conversation, _run(conversation, f"{second['id']}/edit", {"content": "second, edited"}))
    assert edited["answer"].startswith("second, edited")
    history = conversation.history()
    assert _said(history) == ["first question", "second, edited"]  # the third belonged to the old branch
    new_second = history[2]
    assert new_second["branch"] == {"index": 2, "count": 2, "siblings": [second["id"], new_second["id"]]}
    assert history[0]["branch"] is None  # no siblings

    # The old branch, back, at its latest turn; then the next message continues it.
    switched = chat_api.request("POST", f"/chatbot/messages/{second['id']}/branch", token=conversation.token)
    assert switched.status_code == 200, switched.text
    assert _said(switched.json()["messages"]) == ["first question", "second question", "third question"]
    assert conversation.send("fourth question").status_code == 200
    assert _said(conversation.history()) == ["first question", "second question", "third question", "fourth question"]


def test_regenerate_gives_another_answer_and_keeps_the_first(chat_api: ApiClient, simulator: RunningSimulator) -> None:
    conversation = Conversation(chat_api)
    assert conversation.send("tell me something").status_code == 200
    question, first_answer = conversation.history()[:2]
    # By the answer's id: the question it answers is asked again, from the same point.
    again = _waited(conversation, _run(conversation, f"{first_answer['id']}/regenerate"))
    history = conversation.history()
    assert _said(history) == ["tell me something"]
    assert history[0]["branch"]["count"] == 2
    assert history[0]["id"] == again["id"]
    assert history[1]["content"] == again["answer"]
    # Both answers stay: the first is one switch away.
    chat_api.request("POST", f"/chatbot/messages/{question['id']}/branch", token=conversation.token)
    assert conversation.history()[1]["content"] == first_answer["content"]


def test_an_edit_while_a_run_is_active_follows_the_strategy(chat_api: ApiClient, simulator: RunningSimulator) -> None:
    conversation = Conversation(chat_api)
    assert conversation.send("before").status_code == 200
    message_id = conversation.history()[0]["id"]
    simulator.configure({"ttft_ms": 1500})
    with conversation.open_stream("slow one") as stream:
        next(stream.iter_lines())
        refused = chat_api.request(
            "POST", f"/chatbot/messages/{message_id}/edit", token=conversation.token, json={"content": "changed"}
        )
        assert refused.status_code == 409
        assert refused.json()["type"].endswith("turn-in-progress")
        queued = _run(conversation, f"{message_id}/edit", {"content": "changed", "multitask_strategy": "enqueue"})
        assert queued["status"] == "queued"
    simulator.configure({})
    _waited(conversation, queued)
    assert _said(conversation.history()) == ["changed"]


def test_bad_edits_are_clear_errors(chat_api: ApiClient) -> None:
    mine, theirs = Conversation(chat_api), Conversation(chat_api)
    assert mine.send("mine").status_code == 200
    assert theirs.send("theirs").status_code == 200
    their_message = theirs.history()[0]["id"]
    not_found = chat_api.request(
        "POST", f"/chatbot/messages/{their_message}/edit", token=mine.token, json={"content": "hijack"}
    )
    assert not_found.status_code == 404
    assert _said(theirs.history()) == ["theirs"]
    answer_id = mine.history()[1]["id"]
    not_user = chat_api.request("POST", f"/chatbot/messages/{answer_id}/edit", token=mine.token, json={"content": "x"})
    assert not_user.status_code == 422
    assert not_user.json()["type"].endswith("not-a-user-message")
    empty = chat_api.request(
        "POST", f"/chatbot/messages/{mine.history()[0]['id']}/edit", token=mine.token, json={"content": " \t\n"}
    )
    assert empty.status_code == 422
    assert chat_api.request("POST", "/chatbot/messages/nope/branch", token=mine.token).status_code == 404
