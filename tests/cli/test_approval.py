"""`agentctl chat` asks the user to approve tool calls: in a real terminal (tmux) against a real `agentctl serve` whose
built-in calculator needs approval and whose model is the simulator."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest

from agentctl.simulator.process import RunningSimulator
from tests.chat.conftest import serve_with_model
from tests.cli.conftest import ChatUser
from tests.cli.terminal import Terminal
from tests.cli.test_chat import ANYTHING, PROMPT, open_terminal
from tests.support import ApiClient

pytestmark = pytest.mark.slow
# What Ctrl-C or Ctrl-D at a question says: nothing was decided.
LEFT_PENDING = (
    r"awaits your approval still: /approve asks again\n"
    r"\(a message sent instead declines them all, with the message as the reason\)"
)


def asked(number: int, count: int) -> str:
    """The question for one call, waiting for an answer."""
    return rf"call {number} of {count}: \[a\]pprove / \[e\]dit / \[r\]eject\?$"


def shown_call(expression: str) -> str:
    """A calculator call as shown before its question: tool, where it runs, its description, pretty JSON as typed."""
    return r'⏸ calculator \(built-in\)\n.*arithmetic.*\n\{\n  "expression": "' + re.escape(expression) + r'"\n\}\n'


def calculator_calls(*expressions: str) -> dict:
    """The simulator's script: a message with "multiply" in it makes the model call the calculator."""
    calls = [{"name": "calculator", "arguments": {"expression": expression}} for expression in expressions]
    return {"script": [{"match": "multiply", "tool_calls": calls}]}


@pytest.fixture(scope="module")
def chat_server(
    tmp_path_factory: pytest.TempPathFactory, migrated_database_url: str, simulator: RunningSimulator
) -> Iterator[ApiClient]:
    """This module's server (the one every ChatUser talks to): the calculator waits for the user's approval."""
    server = serve_with_model(
        tmp_path_factory.mktemp("approval-cli"),
        migrated_database_url,
        simulator,
        AGENTCTL_RATELIMIT__LOGIN_PER_IP="1000/minute",
        AGENTCTL_AGENT__TOOLS__CALCULATOR__POLICY="approve",
    )
    try:
        server.wait_until_healthy()
        yield ApiClient(server)
    finally:
        server.terminate()


def _conversation(user: ChatUser) -> dict:
    """GET /chatbot/messages of the user's last session, as the server answers it."""
    profile = user.stored()
    assert profile is not None
    issued = user.api.request("POST", f"/auth/session/{profile.last_session_id}/token", token=profile.access_token)
    return user.api.request("GET", "/chatbot/messages", token=issued.json()["token"]["access_token"]).json()


def test_calls_are_approved_or_edited_one_by_one(
    user: ChatUser, terminals: list[Terminal], simulator: RunningSimulator
) -> None:
    """Two calls of one step, asked one by one: the first approved, the second edited (invalid JSON asked again;
    arguments the tool's schema refuses: the server's detail, and the calls asked again), then the turn goes on."""
    user.signed_in()
    simulator.configure(calculator_calls("6*7", "1+1"))
    terminal = open_terminal(user, terminals)
    terminal.wait_for(PROMPT)
    mark = terminal.mark()
    terminal.type("multiply six by seven")
    first = terminal.wait_for(asked(1, 2), after=mark)
    assert "⏸ awaiting your approval: calculator" in first
    assert re.search(shown_call("6*7"), first), first
    terminal.type("a")
    second = terminal.wait_for(asked(2, 2), after=mark)
    assert re.search(shown_call("1+1"), second), second
    terminal.type("e")
    terminal.wait_for(r"an empty line keeps them.*\n+arguments>$", after=mark)
    terminal.type("{expression")
    terminal.wait_for(r"✗ not JSON .*\n+arguments>$", after=mark)
    mark = terminal.mark()
    terminal.type('{"expression": 5}')
    refused = terminal.wait_for(asked(1, 2), after=mark)
    assert "✗ the server refused: invalid value for decisions[1].arguments.expression: not accepted by calc" in refused
    assert _conversation(user)["approval"] is not None  # nothing was decided

    mark = terminal.mark()
    terminal.type("approve")
    terminal.wait_for(asked(2, 2), after=mark)
    terminal.type("e")
    terminal.wait_for(r"arguments>$", after=mark)
    terminal.type('{"expression": "2*3"}')
    answer = terminal.wait_for(r"Tool results: calculator: 42; calculator: 6" + ANYTHING + PROMPT, after=mark)
    assert "↳ calculator (approved): 42" in answer
    assert "↳ calculator (edited): 6" in answer
    conversation = _conversation(user)
    assert conversation["approval"] is None
    assert [m["content"] for m in conversation["messages"] if m["role"] == "tool"] == ["42", "6"]
    terminal.type("/quit")
    assert terminal.exit_status() == 0


def test_a_rejection_tells_the_model_why_and_a_second_pause_in_the_turn_is_asked_too(
    user: ChatUser, terminals: list[Terminal], simulator: RunningSimulator
) -> None:
    """The first call rejected with a reason that makes the model call the calculator again (a simulator directive):
    a second pause of the same turn, asked the same way; that call rejected too, and the model reads why."""
    user.signed_in()
    simulator.configure(calculator_calls("6*7"))
    terminal = open_terminal(user, terminals)
    terminal.wait_for(PROMPT)
    mark = terminal.mark()
    terminal.type("multiply six by seven")
    terminal.wait_for(asked(1, 1), after=mark)
    terminal.type("r")
    terminal.wait_for(r"reason \(optional, the model reads it\):$", after=mark)
    mark = terminal.mark()
    terminal.type('rather call:calculator {"expression": "2+2"}')
    again = terminal.wait_for(asked(1, 1), after=mark)
    assert "↳ calculator (rejected): the user rejected this call: rather call:calculator" in again
    assert '"expression": "2+2"' in again
    mark = terminal.mark()
    terminal.type("r")
    terminal.wait_for(r"reason \(optional, the model reads it\):$", after=mark)
    terminal.type("[bold]not today[/bold]")  # plain text, never rich markup
    answer = terminal.wait_for(
        r"Tool results: calculator: the user rejected this call: \[bold\]not today\[/bold\]" + ANYTHING + PROMPT,
        after=mark,
    )
    assert "↳ calculator (rejected): the user rejected this call: [bold]not today[/bold]" in answer
    assert _conversation(user)["approval"] is None
    terminal.type("/quit")
    assert terminal.exit_status() == 0


def test_a_pending_approval_is_left_with_ctrl_c_and_asked_again_when_the_session_is_reopened(
    user: ChatUser, terminals: list[Terminal], simulator: RunningSimulator
) -> None:
    """Ctrl-C at the question leaves the call awaiting approval (the server keeps it); `agentctl chat` reopening the
    session asks again; Ctrl-D leaves it once more; /approve asks again and the approved call runs."""
    user.signed_in()
    simulator.configure(calculator_calls("6*7"))
    terminal = open_terminal(user, terminals)
    terminal.wait_for(PROMPT)
    mark = terminal.mark()
    terminal.type("multiply six by seven")
    terminal.wait_for(asked(1, 1), after=mark)
    terminal.press("C-c")
    left = terminal.wait_for(r"1 tool call " + LEFT_PENDING + PROMPT, after=mark)
    assert "Traceback" not in left
    pending = _conversation(user)["approval"]
    assert [(call["tool"], call["server"], call["arguments"]) for call in pending["calls"]] == [
        ("calculator", None, {"expression": "6*7"})
    ]
    terminal.type("/quit")
    assert terminal.exit_status() == 0

    terminal = open_terminal(user, terminals)  # the last session, reopened
    reopened = terminal.wait_for(asked(1, 1))
    assert "the last answer paused: 1 tool call awaits your approval" in reopened
    assert '{\n  "expression": "6*7"\n}' in reopened
    mark = terminal.mark()
    terminal.press("C-d")
    terminal.wait_for(LEFT_PENDING + PROMPT, after=mark)
    mark = terminal.mark()
    terminal.type("/approve")
    terminal.wait_for(asked(1, 1), after=mark)
    terminal.type("a")
    answer = terminal.wait_for(r"Tool results: calculator: 42" + ANYTHING + PROMPT, after=mark)
    assert "↳ calculator (approved): 42" in answer
    mark = terminal.mark()
    terminal.type("/approve")
    terminal.wait_for(r"no tool call of this session awaits your approval" + PROMPT, after=mark)
    terminal.type("/quit")
    assert terminal.exit_status() == 0


def test_one_message_that_pauses_for_approval_says_so(user: ChatUser, simulator: RunningSimulator) -> None:
    """`agentctl chat -m` cannot ask: it says what awaits approval (the calls in --json) and where to answer."""
    user.signed_in()
    simulator.configure(calculator_calls("6*7"))
    done = user.run("-m", "multiply six by seven")
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        '⏸ awaiting your approval: calculator {"expression": "6*7"}',
        "agentctl: 1 tool call awaits your approval: `agentctl chat` asks for your decision",
    ]
    done = user.run("--new", "--json", "-m", "multiply six by seven")
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert [(call["tool"], call["arguments"]) for call in answer["approval"]["calls"]] == [
        ("calculator", {"expression": "6*7"})
    ]
    assert _conversation(user)["approval"]["calls"] == answer["approval"]["calls"]
