"""`agentctl chat` as people use it: in a real terminal (tmux) and from scripts, against a real server whose
model is the simulator."""

from __future__ import annotations

import json
import re
import stat
import subprocess
import time
from collections.abc import Iterator

import pytest

from agentctl.simulator.process import RunningSimulator
from agentctl.terminal.client import ChatClient, Profile, TokenStore
from tests.cli.budgets import set_budget
from tests.cli.conftest import ChatUser
from tests.cli.terminal import Terminal
from tests.support import CuttingProxy, free_port

pytestmark = pytest.mark.slow

# An answer this slow is still being written when the test presses Ctrl-C (300 tokens at 10 per second).
SLOW_ANSWER = {"tokens_per_second": 10, "answer_tokens": 300}
PROMPT = r"\n+>$"  # the prompt, waiting, on the last line
ANYTHING = r"[\s\S]*"  # across lines
USAGE_LINE = r"· \d+ in \+ \d+ out tokens"
CODE_ANSWER = "Here it is:\n\n```python\nprint(sum(range(10)))\n```\n\nDone."


def open_terminal(user: ChatUser, terminals: list[Terminal], *args: str) -> Terminal:
    terminal = user.terminal(*args)
    terminals.append(terminal)
    return terminal


def sign_in(terminal: Terminal, user: ChatUser, password: str) -> None:
    terminal.wait_for("Email:$")
    terminal.type(user.email)
    terminal.wait_for("Password:$")
    terminal.type(password)


def one_line_error(done: subprocess.CompletedProcess[str], expected: str) -> None:
    """Failed with one plain line on stderr saying ``expected``, and no traceback."""
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("agentctl: "), done.stderr
    assert expected in done.stderr, done.stderr
    assert "Traceback" not in done.stdout + done.stderr


def test_first_use_signs_up_streams_an_answer_and_manages_sessions(
    user: ChatUser, terminals: list[Terminal], simulator: RunningSimulator
) -> None:
    terminal = open_terminal(user, terminals, "--usage")
    sign_in(terminal, user, user.password)
    terminal.wait_for(r"Create a new account for .*\? \[y/N\]$")
    terminal.type("y")
    terminal.wait_for("Repeat the password:$")
    terminal.type(user.password)
    terminal.wait_for(r"Your name \(optional.*:$")
    terminal.type("Ada")
    screen = terminal.wait_for(PROMPT)
    assert user.password not in screen  # never echoed
    assert "account created" in screen
    assert "session (unnamed)" in screen
    assert stat.S_IMODE(user.token_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(user.config_dir.stat().st_mode) == 0o700
    assert _stored(user).email == user.email

    simulator.configure({"tokens_per_second": 15, "answer_tokens": 40})
    mark = terminal.mark()
    terminal.type("Tell me about **lighthouses**")
    # Streamed: the first words are on the screen while the rest is still coming.
    while_streaming = terminal.wait_for(r"Tell me about lighthouses \w+", after=mark)
    assert not re.search(USAGE_LINE, while_streaming)
    answered = terminal.wait_for(USAGE_LINE + r".*" + PROMPT, after=mark)
    assert "**" not in answered.split("\n", 1)[1]  # rendered as Markdown, not shown as typed

    mark = terminal.mark()
    terminal.type("/new")
    terminal.wait_for(r"new session \(unnamed\) [0-9a-f]{8} · new" + PROMPT, after=mark)
    mark = terminal.mark()
    terminal.type("/sessions")
    table = terminal.wait_for(r"/switch <#, id or name> continues one" + PROMPT, after=mark)
    rows = [line for line in table.splitlines() if line.strip()[:1] in ("●", "1", "2")]
    assert len(rows) == 2, table
    assert rows[0].startswith("●")  # the new one, current, most recent first
    assert "(unnamed)" in rows[0]
    assert "Tell me about **lighthouses**" in rows[1]  # named after its first message

    mark = terminal.mark()
    terminal.type("/switch 2")
    terminal.wait_for(
        r"switched to Tell me about \*\*lighthouses\*\* [0-9a-f]{8} · 2 messages so far.*" + PROMPT, after=mark
    )
    terminal.type("/rename Lighthouses")
    terminal.wait_for("renamed to Lighthouses" + PROMPT, after=mark)
    terminal.type("/history")
    terminal.wait_for(r"> Tell me about \*\*lighthouses\*\*\nTell me about lighthouses \w+[\s\S]*" + PROMPT, after=mark)

    mark = terminal.mark()
    terminal.press("Up")  # input history: the last line comes back
    terminal.wait_for(r"^ /history$", after=mark)
    terminal.press("C-u")
    terminal.type("/quit")
    assert terminal.exit_status() == 0
    names = [item["name"] for item in user.api.request("GET", "/auth/sessions", token=_access(user)).json()["items"]]
    assert names == ["Lighthouses", ""]


def test_ctrl_c_stops_an_answer_and_the_server_lets_go_of_the_session(
    user: ChatUser, terminals: list[Terminal], simulator: RunningSimulator
) -> None:
    user.signed_in()
    terminal = open_terminal(user, terminals)
    terminal.wait_for(PROMPT)
    simulator.configure(SLOW_ANSWER)
    mark = terminal.mark()
    terminal.type("Write me a very long story")
    terminal.wait_for(r"Write me a very long story \w+ \w+", after=mark)
    terminal.press("C-c")
    terminal.wait_for(r"· cancelled\n" + PROMPT, after=mark)
    assert "/api/v1/chatbot/cancel" in user.api.server.output()  # told, not merely hung up on

    simulator.configure({})
    mark = terminal.mark()
    terminal.type("And now a short one")  # the session is free again: no "busy"
    answer = terminal.wait_for(r"And now a short one \w+[\s\S]*" + PROMPT, after=mark)
    assert "busy" not in answer
    history = user.api.request("GET", "/chatbot/messages", token=_session_token(user)).json()["messages"]
    assert [(m["role"], m.get("status")) for m in history][:2] == [("user", None), ("assistant", "interrupted")]

    terminal.press("C-c")  # at an empty prompt: leaves
    assert terminal.exit_status() == 0


def test_code_blocks_tool_calls_and_a_question_from_the_agent(
    user: ChatUser, terminals: list[Terminal], simulator: RunningSimulator
) -> None:
    user.signed_in()
    simulator.configure({"script": [{"match": "show me code", "content": CODE_ANSWER}]})
    terminal = open_terminal(user, terminals)
    terminal.wait_for(PROMPT)
    mark = terminal.mark()
    terminal.type("show me code")
    shown = terminal.wait_for(r"print\(sum\(range\(10\)\)\)[\s\S]*Done\." + PROMPT, after=mark)
    assert "```" not in shown  # a rendered code block, not the fences

    mark = terminal.mark()
    terminal.type('call:ask_human {"question": "Which city?"}')
    asked = terminal.wait_for(r"\? Which city\?\n+answer>$", after=mark)
    assert '⚙ ask_human {"question": "Which city?"}' in asked  # the tool call, as a side line
    terminal.type("Lisbon")
    terminal.wait_for(r"↳ ask_human: Lisbon\n[\s\S]*Tool results: ask_human: Lisbon[\s\S]*" + PROMPT, after=mark)
    terminal.press("C-d")
    assert terminal.exit_status() == 0


def test_a_wrong_password_and_then_a_rate_limit_end_with_one_line(user: ChatUser, terminals: list[Terminal]) -> None:
    user.register()
    terminal = open_terminal(user, terminals)
    sign_in(terminal, user, "not the password 1")
    terminal.wait_for(r"wrong password, or no account .*\n.*\[y/N\]$")
    mark = terminal.mark()
    terminal.type("n")  # asked once; the next attempts only ask for the password again
    for _ in range(2):
        terminal.wait_for("Password:$", after=mark)
        mark = terminal.mark()
        terminal.type("still not it 1")
    assert terminal.exit_status() == 1
    screen = terminal.wait_for(r"agentctl: wrong email or password\n")
    assert "Traceback" not in screen
    assert screen.count("[y/N]") == 1

    for _ in range(2):  # the fourth and fifth attempts of the minute for this email: the next one is refused
        user.api.request("POST", "/auth/login", json={"email": user.email, "password": "guess 1"})
    terminal = open_terminal(user, terminals)
    sign_in(terminal, user, user.password)
    assert terminal.exit_status() == 1
    screen = terminal.wait_for(r"agentctl: rate limited by the server: try again in \d+ s\n")
    assert "Traceback" not in screen
    assert not user.token_file.exists()


def test_one_message_from_an_option_a_pipe_or_as_json(user: ChatUser) -> None:
    user.signed_in()
    done = user.run("-m", "Describe **the sea**")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Describe **the sea** ")  # the text as written: Markdown is for terminals
    assert done.stdout.endswith(".\n")
    assert done.stderr == ""

    done = user.run(stdin="A question from a pipe\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("A question from a pipe ")

    done = user.run("--json", "-m", 'call:calculator {"expression": "6*7"}')
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert "calculator: 42" in answer["answer"]
    assert [(call["name"], call["result"]) for call in answer["tool_calls"]] == [("calculator", "42")]
    assert answer["usage"]["output_tokens"] > 0
    assert answer["latency_ms"] > 0
    # All three went on in the same session: the last one used.
    assert answer["session_name"] == "Describe **the sea**"
    assert answer["session_id"] == _stored(user).last_session_id

    refresh_token = _stored(user).refresh_token
    done = user.run("--logout")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"signed out of {user.server_url}\n"
    assert user.stored() is None
    assert user.api.request("POST", "/auth/refresh", json={"refresh_token": refresh_token}).status_code == 401


def test_memory_use_shows_as_a_side_line(user: ChatUser) -> None:
    user.signed_in()
    assert user.run("-m", "I live in Lisbon.").returncode == 0
    deadline = time.monotonic() + 20
    while not user.api.request("GET", "/memories", token=_access(user)).json()["memories"]:
        assert time.monotonic() < deadline, "the memory was never written"
        time.sleep(0.2)
    done = user.run("-m", "Where do I live? Lisbon")
    assert done.returncode == 0, done.stderr
    assert "· recalled 1 memory: I live in Lisbon." in done.stderr


def test_errors_are_one_line_and_a_non_zero_exit(user: ChatUser, busy_session: str) -> None:
    one_line_error(user.run("-m", "hello", "--server", f"http://127.0.0.1:{free_port()}"), "cannot reach")
    one_line_error(user.run("-m", "hello", "--session", busy_session), "is busy answering another message")
    done = user.run("-m", "hello", "--session", busy_session, "--json")
    one_line_error(done, "busy")
    assert json.loads(done.stdout)["error"]["type"] == "turn-in-progress"


def test_an_expired_access_token_is_renewed_and_saved(user: ChatUser) -> None:
    before = user.signed_in(access_token="expired", access_expires_at="2000-01-01T00:00:00+00:00")
    done = user.run("-m", "hello again")
    assert done.returncode == 0, done.stderr
    after = _stored(user)
    assert after.email == user.email
    assert after.access_token != "expired"
    assert after.refresh_token != before.refresh_token
    assert after.access_expires_at > time.strftime("%Y-%m-%dT%H:%M:%S")
    # Refresh tokens are single-use: the old one is spent, the saved one works.
    spent = user.api.request("POST", "/auth/refresh", json={"refresh_token": before.refresh_token})
    assert spent.status_code == 401
    assert stat.S_IMODE(user.token_file.stat().st_mode) == 0o600


@pytest.fixture
def busy_session(user: ChatUser, simulator: RunningSimulator) -> Iterator[str]:
    """The id of a session of the signed-in user, in the middle of a slow answer to another client."""
    user.signed_in()
    simulator.configure(SLOW_ANSWER)
    with ChatClient(user.server_url, TokenStore(user.config_dir)) as other_client:
        session = other_client.new_session()
        with other_client.stream_turn("a long answer please") as events:
            next(events)  # the first token: the turn holds the session until this client hangs up
            yield session.id


def _stored(user: ChatUser) -> Profile:
    profile = user.stored()
    assert profile is not None, "not signed in"
    return profile


def _access(user: ChatUser) -> str:
    return _stored(user).access_token


def _session_token(user: ChatUser) -> str:
    profile = _stored(user)
    issued = user.api.request("POST", f"/auth/session/{profile.last_session_id}/token", token=profile.access_token)
    return issued.json()["token"]["access_token"]


def test_memory_forget_clear_and_help_at_the_prompt(user: ChatUser, terminals: list[Terminal]) -> None:
    user.signed_in()
    for fact in ("I live in Lisbon.", "My cat is called Miso."):
        assert user.run("-m", fact).returncode == 0
    deadline = time.monotonic() + 20
    while len(user.api.request("GET", "/memories", token=_access(user)).json()["memories"]) < 2:
        assert time.monotonic() < deadline, "the memories were never written"
        time.sleep(0.2)

    terminal = open_terminal(user, terminals)
    terminal.wait_for(PROMPT)
    mark = terminal.mark()
    terminal.type("/help")
    helped = terminal.wait_for(r"/quit" + ANYTHING + PROMPT, after=mark)
    for command in ("/new", "/sessions", "/switch", "/rename", "/history", "/memory", "/forget", "/clear"):
        assert command in helped

    mark = terminal.mark()
    terminal.type("/memory")
    listed = terminal.wait_for(r"/forget <id> forgets one" + ANYTHING + PROMPT, after=mark)
    assert "Lisbon" in listed
    assert "Miso" in listed
    memories = user.api.request("GET", "/memories", token=_access(user)).json()["memories"]
    lisbon = next(item for item in memories if "Lisbon" in item["memory"])

    mark = terminal.mark()
    terminal.type(f"/forget {lisbon['id'][:8]}")
    terminal.wait_for(f"forgot {lisbon['id'][:8]}" + ANYTHING + PROMPT, after=mark)
    remaining = user.api.request("GET", "/memories", token=_access(user)).json()["memories"]
    assert [item["memory"] for item in remaining] == ["My cat is called Miso."]

    mark = terminal.mark()
    terminal.type("/forget all")
    terminal.wait_for(r"Forget everything .*\[y/N\]\s*$", after=mark)
    terminal.type("y")
    terminal.wait_for(r"forgot 1 memory" + ANYTHING + PROMPT, after=mark)
    assert user.api.request("GET", "/memories", token=_access(user)).json()["memories"] == []

    terminal.type("remember this exchange")
    mark = terminal.mark()
    terminal.wait_for(PROMPT, after=mark)
    session_token = _session_token(user)
    assert user.api.request("GET", "/chatbot/messages", token=session_token).json()["messages"]
    mark = terminal.mark()
    terminal.type("/clear")
    terminal.wait_for(r"conversation is forgotten" + ANYTHING + PROMPT, after=mark)
    assert user.api.request("GET", "/chatbot/messages", token=session_token).json()["messages"] == []
    terminal.type("/quit")
    assert terminal.exit_status() == 0


def test_a_stream_cut_mid_answer_is_rejoined_where_it_stopped(user: ChatUser, simulator: RunningSimulator) -> None:
    """A proxy drops the answer's connection: the client rejoins the run after the last event it received and
    gets the rest, no gap and no duplicate, and says so once."""
    profile = user.signed_in()
    simulator.configure({"tokens_per_second": 40, "answer_tokens": 60})
    proxy = CuttingProxy(user.api.server.port, cut_request=b"POST /api/v1/chatbot/chat/stream", cut_after=1500)
    TokenStore(user.config_dir).save(proxy.base_url, profile)  # the same sign-in, through the proxy
    rejoins: list[tuple[int, int]] = []
    try:
        with ChatClient(proxy.base_url, TokenStore(user.config_dir)) as client:
            client.open_session(new=True)
            with client.stream_turn("tell me a story", on_rejoin=lambda *attempt: rejoins.append(attempt)) as events:
                received = list(events)
            history = client.history()
    finally:
        proxy.close()
    assert proxy.cuts == 1
    assert rejoins == [(1, 5)]
    numbers = [int(event.id.rsplit(":", 1)[1]) for event in received if event.id]
    assert numbers == list(range(1, len(numbers) + 1))
    assert received[-1].kind == "done"
    assert "".join(event.data["content"] for event in received if event.kind == "token") == history[-1]["content"]


def test_an_answer_still_being_given_is_shown_on_start(
    user: ChatUser, terminals: list[Terminal], simulator: RunningSimulator
) -> None:
    user.signed_in()
    simulator.configure({"tokens_per_second": 10, "answer_tokens": 40})
    with ChatClient(user.server_url, TokenStore(user.config_dir)) as other_client:
        session = other_client.new_session("left running")
        with other_client.stream_turn("a story for later") as events:
            next(events)  # started; this client now leaves, the answer goes on
    terminal = open_terminal(user, terminals, "--session", session.id)
    shown = terminal.wait_for(r"an answer is still being given to: a story for later" + ANYTHING + PROMPT)
    simulator.configure({})
    answer = user.api.request("GET", "/chatbot/messages", token=_session_token(user)).json()["messages"][-1]
    assert answer["role"] == "assistant"
    assert answer["content"].split()[-1] in shown  # shown to its end
    terminal.press("C-d")
    assert terminal.exit_status() == 0


def test_an_api_key_chats_without_a_prompt_and_a_bad_key_is_one_line(user: ChatUser) -> None:
    """`agentctl chat -m` for scripts and CI: AGENTCTL_API_KEY or --api-key, no sign-in, nothing stored."""
    registered = user.register()
    created = user.api.request(
        "POST", "/auth/api-keys", token=registered["token"]["access_token"], json={"name": "ci", "scopes": ["chat"]}
    )
    key = created.json()["key"]
    done = subprocess.run(
        user.command("-m", "hello from CI"),
        input="",
        capture_output=True,
        text=True,
        env={**user.env(), "AGENTCTL_API_KEY": key},
        cwd=user.home,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("hello from CI ")
    assert user.stored() is None  # a key signs nobody in

    done = user.run("--api-key", key, "--json", "-m", "and again")
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["answer"].startswith("and again")
    sessions = user.api.request("GET", "/auth/sessions", token=key).json()["items"]
    assert answer["session_id"] in {session["session_id"] for session in sessions}

    one_line_error(user.run("--api-key", "agentctl_" + "x" * 43, "-m", "hello"), "invalid or has been revoked")
    memories_only = user.api.request(
        "POST", "/auth/api-keys", token=registered["token"]["access_token"], json={"name": "m", "scopes": ["memories"]}
    ).json()["key"]
    one_line_error(user.run("--api-key", memories_only, "-m", "hello"), "does not have the chat scope")


def _said(history: list[dict]) -> list[str]:
    return [message["content"] for message in history if message["role"] == "user"]


def test_edit_retry_and_branch_at_the_prompt(user: ChatUser, terminals: list[Terminal]) -> None:
    """In a real terminal (a tmux pty) against a real server: /edit puts the last message on the prompt to type
    over (readline) and streams the new answer, /retry streams another answer, /branch lists the versions (the shown
    one marked) and /branch N switches to one and shows its last exchange."""
    user.signed_in()
    terminal = open_terminal(user, terminals)
    terminal.wait_for(PROMPT)
    for text in ("first question", "second question"):
        mark = terminal.mark()
        terminal.type(text)
        terminal.wait_for(text + r" \w+" + ANYTHING + PROMPT, after=mark)
    history = user.api.request("GET", "/chatbot/messages", token=_session_token(user)).json()["messages"]
    first_answer = history[3]["content"]

    mark = terminal.mark()
    terminal.type("/edit")
    terminal.wait_for(r"edit> second question$", after=mark)  # the old text, the cursor at its end
    terminal.type(", edited")
    terminal.wait_for(r"second question, edited \w+" + ANYTHING + PROMPT, after=mark)
    read = user.api.request("GET", "/chatbot/messages", token=_session_token(user))
    history = read.json()["messages"]
    assert _said(history) == ["first question", "second question, edited"]
    assert (history[2]["branch"]["index"], history[2]["branch"]["count"]) == (2, 2)
    edited_answer = history[3]["content"]

    mark = terminal.mark()
    terminal.type("/retry")
    retried = terminal.wait_for(r"another answer to: second question, edited\n" + ANYTHING + PROMPT, after=mark)
    history = user.api.request("GET", "/chatbot/messages", token=_session_token(user)).json()["messages"]
    assert _said(history) == ["first question", "second question, edited"]
    assert (history[2]["branch"]["index"], history[2]["branch"]["count"]) == (3, 3)
    assert history[3]["content"] != edited_answer
    assert history[3]["content"].split()[-1] in retried  # streamed to its end

    mark = terminal.mark()
    terminal.type("/branch")
    listed = terminal.wait_for(r"version 3 of 3 is shown; /branch <#> switches to another" + PROMPT, after=mark)
    rows = [line.strip() for line in listed.splitlines() if re.match(r"^\s*(●\s+)?[1-3]\s", line)]
    assert len(rows) == 3, listed
    assert re.match(r"^1\s+second question\s+second question \w+", rows[0]), rows
    assert re.match(r"^2\s+second question, edited\s", rows[1]), rows
    assert re.match(r"^●\s+3\s+second question, edited\s", rows[2]), rows

    mark = terminal.mark()
    terminal.type("/branch 1")
    shown = terminal.wait_for(r"switched to version 1 of 3" + ANYTHING + PROMPT, after=mark)
    assert "> second question\n" in shown
    assert " ".join(first_answer.split()[-3:]) in " ".join(shown.split())
    history = user.api.request("GET", "/chatbot/messages", token=_session_token(user)).json()["messages"]
    assert _said(history) == ["first question", "second question"]
    assert history[3]["content"] == first_answer

    mark = terminal.mark()
    terminal.type("/help")
    helped = terminal.wait_for(r"/quit" + ANYTHING + PROMPT, after=mark)
    for command in ("/edit", "/retry", "/branch", "/budget"):
        assert command in helped
    terminal.type("/quit")
    assert terminal.exit_status() == 0


def test_budget_shows_spending_and_a_turn_refused_for_it_is_one_line(
    user: ChatUser, terminals: list[Terminal], migrated_database_url: str
) -> None:
    """In a real terminal (a tmux pty) against a real server: /budget shows today's and this month's spending, then
    against a limit with its refill time; a message refused for the budget is one line (spent, limit, refill time),
    at the prompt and from `agentctl chat -m` (exit 1, `budget-exceeded` in --json)."""
    user.signed_in()
    assert user.run("-m", "spend a little").returncode == 0
    usage = user.api.request("GET", "/auth/me/usage", token=_access(user)).json()
    spent = usage["day"]["tokens"]
    assert spent > 0
    terminal = open_terminal(user, terminals)
    terminal.wait_for(PROMPT)
    mark = terminal.mark()
    terminal.type("/budget")
    table = terminal.wait_for(r"no budget is set for you: what you spend is not limited" + PROMPT, after=mark)
    assert re.search(rf"today\s+1\s+{spent:,}\s+\$0\.0000", table), table
    assert re.search(rf"this month\s+1\s+{spent:,}\s+\$0\.0000", table), table

    user_id = user.api.request("GET", "/auth/me", token=_access(user)).json()["id"]
    set_budget(migrated_database_url, user_id, daily_tokens=1)
    mark = terminal.mark()
    terminal.type("/budget")
    refill = r"at \d{4}-\d\d-\d\d \d\d:\d\d \S+ \(in (\d+ h ?)?(\d+ min)?\)"
    table = terminal.wait_for(rf"today\s+1\s+{spent:,} of 1\s+\$0\.0000\s+{refill}" + ANYTHING + PROMPT, after=mark)
    assert "no budget is set" not in table

    mark = terminal.mark()
    terminal.type("one more, please")
    refused = terminal.wait_for(r"✗ .*" + PROMPT, after=mark)
    line = rf"✗ your daily token budget is used up: {spent:,} of 1 tokens spent; it refills {refill}\n"
    assert re.search(line, refused), refused
    assert "Traceback" not in refused
    terminal.type("/quit")
    assert terminal.exit_status() == 0

    done = user.run("-m", "and from a script")
    one_line_error(done, f"agentctl: your daily token budget is used up: {spent:,} of 1 tokens spent; it refills at ")
    done = user.run("--json", "-m", "and as JSON")
    assert json.loads(done.stdout)["error"]["type"] == "budget-exceeded"
    history = user.api.request("GET", "/chatbot/messages", token=_session_token(user)).json()["messages"]
    assert _said(history) == ["spend a little"]  # nothing refused reached the conversation
