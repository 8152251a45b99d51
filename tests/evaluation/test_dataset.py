"""`agentctl eval dataset`: recorded turns exported as replay cases, on the real PostgreSQL with LangGraph's own
checkpoint saver (AsyncPostgresSaver) writing the checkpoints the export reads, and the CLI through CliRunner."""

from __future__ import annotations

import random
import stat
import uuid
from datetime import timedelta
from functools import partial
from pathlib import Path

from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from typer.testing import Result

from server.database.engine import Database
from server.evaluation.cases import CaseMessage, CaseToolCall, ReplayCase, read_cases
from server.evaluation.dataset import export_cases
from tests.evaluation.conftest import EvalWorld


def _export(world: EvalWorld, *args: str, env: dict[str, str] | None = None) -> tuple[Result, Path]:
    path = world.data_dir / f"set-{uuid.uuid4().hex[:8]}.jsonl"
    return world.eval("dataset", *world.window_args(), "-o", str(path), *args, env=env), path


def _cases(world: EvalWorld, *args: str) -> list[ReplayCase]:
    result, path = _export(world, *args)
    assert result.exit_code == 0, result.output
    return read_cases(path)


def test_a_sample_is_the_same_for_the_same_seed_and_in_time_order(world: EvalWorld) -> None:
    ids = world.add_turns([(f"question {index}", f"answer {index}") for index in range(8)])
    first = _cases(world, "--sample", "3", "--seed", "7")
    again = _cases(world, "--sample", "3", "--seed", "7")
    drawn = sorted(random.Random(7).sample(range(len(ids)), 3))  # the draw `agentctl eval --sample` makes
    assert [case.turn_id for case in first] == [case.turn_id for case in again] == [ids[index] for index in drawn]
    assert [case.input for case in first] == [f"question {index}" for index in drawn]
    assert [case.id for case in _cases(world)] == [str(turn_id) for turn_id in ids]  # no --sample: all, in order


def test_the_cli_writes_a_private_file_of_cases_and_says_what_it_holds(world: EvalWorld) -> None:
    ids = world.add_turns([("what is 2+2?", "4"), ("and 3+3?", "6")])
    world.rows(
        "UPDATE chat_turns SET model = 'gpt-test', input_tokens = 12, output_tokens = 3, cost_usd = 0.001, "
        "latency_ms = 850, surface = 'chat.completions' WHERE id = $1",
        ids[1],
    )
    result, path = _export(world)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == (
        f"2 cases written to {path} (context: 0 from checkpoints, 2 from records; 0 resumed runs left out)"
    )
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # users' conversations
    first, second = read_cases(path)
    assert (second.id, second.turn_id, second.session_id) == (str(ids[1]), ids[1], world.session_id)
    assert (second.input, second.output, second.model, second.surface) == (
        "and 3+3?",
        "6",
        "gpt-test",
        "chat.completions",
    )
    assert second.usage is not None
    assert (second.usage.input_tokens, second.usage.output_tokens, second.usage.cost_usd) == (12, 3, 0.001)
    assert (second.latency_ms, second.created_at) == (850, world.since + timedelta(seconds=1))
    assert second.instructions is None
    assert first.context == []
    assert second.context == [
        CaseMessage(role="user", content="what is 2+2?"),
        CaseMessage(role="assistant", content="4"),
    ]


def test_resumed_and_failed_runs_are_not_cases(world: EvalWorld) -> None:
    ids = world.add_turns([("plan my trip", "here is a plan"), ("approved: send_email", "sent"), ("hm", "")])
    world.rows("UPDATE chat_turns SET resumed = true WHERE id = $1", ids[1])
    world.rows("UPDATE chat_turns SET status = 'error', output = 'partial' WHERE id = $1", ids[2])
    result, path = _export(world)
    assert result.exit_code == 0, result.output
    assert "1 resumed runs left out" in result.stdout
    assert [case.turn_id for case in read_cases(path)] == [ids[0]]


def test_a_deleted_users_or_sessions_turns_are_never_exported(world: EvalWorld) -> None:
    users = world.add_turns([("my secret", "noted")])
    sessions = world.add_turns([("my other secret", "noted too")])
    kept = world.add_turns([("hello", "hi")])
    world.rows("DELETE FROM users WHERE id = (SELECT owner FROM chat_turns WHERE id = $1)", users[0])
    world.rows("DELETE FROM chat_sessions WHERE id = (SELECT session FROM chat_turns WHERE id = $1)", sessions[0])
    assert [case.turn_id for case in _cases(world)] == kept


def test_the_replay_accounts_turns_are_left_out_when_asked(world: EvalWorld) -> None:
    replays = world.add_turns([("a replayed question", "a replayed answer")])
    tester = world.add_turns([("a test", "tested")])
    kept = world.add_turns([("a user's question", "an answer")])
    [replayer] = world.rows(
        "SELECT u.email FROM users u JOIN chat_turns t ON t.owner = u.id WHERE t.id = $1", replays[0]
    )
    [testing] = world.rows("SELECT owner FROM chat_turns WHERE id = $1", tester[0])
    cases = _cases(world, "--exclude-user", replayer["email"].upper(), "--exclude-user", str(testing["owner"]))
    assert [case.turn_id for case in cases] == kept
    result, path = _export(world, "--exclude-user", "nobody@example.com")
    assert result.exit_code == 2
    assert result.output.strip() == "agentctl: --exclude-user: no user with the email or id 'nobody@example.com'"
    assert not path.exists()


def test_retention_moves_the_window_start_to_what_it_keeps(world: EvalWorld) -> None:
    """The world's turns are from 2001: a retention of 30 days is about to delete all of them."""
    world.add_turns([("old question", "old answer")])
    result, path = _export(world, env={"AGENTCTL_RETENTION__TURN_RECORD_DAYS": "30"})
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"no turns to export from {world.since:%Y-%m-%d %H:%M:%S}")
    assert "window start moved to" in result.stdout
    assert result.stdout.strip().endswith("by retention): nothing written")
    assert not path.exists()


async def test_turns_older_than_retention_are_left_out_before_the_sweeper_runs(
    world: EvalWorld, database: Database
) -> None:
    ids = await world.add_turns_async([(f"question {index}", f"answer {index}") for index in range(4)])
    now = world.since + timedelta(days=1, seconds=2)  # one day of records kept: turns 2 and 3 (at 2 s and 3 s)
    export_from = partial(
        export_cases,
        until=world.until,
        sample=None,
        seed=0,
        context_messages=20,
        now=now,
        turn_record_days=1,
        checkpoints=None,
    )
    export = await export_from(since=world.since)
    assert export.clamped_since == world.since + timedelta(seconds=2)
    assert [case.turn_id for case in export.cases] == ids[2:]
    # The conversation before turn 2 is rebuilt from the records still there (the sweeper has not run).
    assert [message.content for message in export.cases[0].context] == [
        "question 0",
        "answer 0",
        "question 1",
        "answer 1",
    ]
    assert export.context_from_records == 2
    unclamped = await export_from(since=world.since + timedelta(seconds=3))
    assert unclamped.clamped_since is None
    assert [case.turn_id for case in unclamped.cases] == ids[3:]


def test_context_from_records_is_cut_to_the_last_messages_starting_on_a_question(world: EvalWorld) -> None:
    world.add_turns([(f"question {index}", f"answer {index}") for index in range(4)])
    last = _cases(world, "--context-messages", "3")[-1]
    # The last three messages before question 3 are answer 1, question 2, answer 2: a context starts on a question.
    assert last.context == [
        CaseMessage(role="user", content="question 2"),
        CaseMessage(role="assistant", content="answer 2"),
    ]
    assert len(_cases(world, "--context-messages", "4")[-1].context) == 4
    assert _cases(world, "--context-messages", "0")[-1].context == []


def test_context_comes_from_the_checkpoint_the_turn_started_from(world: EvalWorld) -> None:
    ids = world.add_turns([("first question", "first answer"), ("what's the weather?", "sunny, 21 °C")])
    start = world.put_checkpoint(
        [
            HumanMessage("hello", id="m1"),
            AIMessage("hi!", id="m2"),
            HumanMessage("weather in Paris?", id="m3"),
            AIMessage("", id="m4", tool_calls=[{"id": "call-1", "name": "weather", "args": {"city": "Paris"}}]),
            ToolMessage("21 °C and sunny", tool_call_id="call-1", name="weather", id="m5"),
            AIMessage("It is 21 °C and sunny.", id="m6"),
        ]
    )
    world.rows("UPDATE chat_turns SET start_checkpoint = $1 WHERE id = $2", start, ids[1])
    result, path = _export(world, "--context-messages", "5")
    assert result.exit_code == 0, result.output
    assert "context: 1 from checkpoints, 1 from records" in result.stdout
    case = read_cases(path)[1]
    # Five messages would start on "hi!": the context starts on the question, with the tool call and its result.
    assert case.context == [
        CaseMessage(role="user", content="weather in Paris?"),
        CaseMessage(
            role="assistant", tool_calls=[CaseToolCall(id="call-1", name="weather", arguments={"city": "Paris"})]
        ),
        CaseMessage(role="tool", content="21 °C and sunny", tool_call_id="call-1", name="weather"),
        CaseMessage(role="assistant", content="It is 21 °C and sunny."),
    ]


def test_tool_calls_come_whole_from_the_checkpoint_the_turn_ended_on(world: EvalWorld) -> None:
    ids = world.add_turns([("look it up", "found it")])
    full = "result " * 100  # the record keeps the first 300 characters
    world.rows(
        "UPDATE chat_turns SET tool_calls = $1::jsonb WHERE id = $2",
        '[{"name": "search", "arguments": {"q": "x"}, "status": "success", "result": "' + full[:300] + '"}]',
        ids[0],
    )
    assert [(call.name, call.result) for call in _cases(world)[0].tool_calls] == [("search", full[:300])]

    ended = world.put_checkpoint(
        [
            HumanMessage("earlier", id="m1"),
            AIMessage("earlier answer", id="m2"),
            HumanMessage("look it up", id=str(ids[0])),
            AIMessage("", id="m3", tool_calls=[{"id": "call-9", "name": "search", "args": {"q": "x"}}]),
            ToolMessage(full, tool_call_id="call-9", name="search", id="m4", status="error"),
            AIMessage("found it", id="m5"),
        ]
    )
    world.rows("UPDATE chat_turns SET checkpoint_id = $1 WHERE id = $2", ended, ids[0])
    (case,) = _cases(world)
    assert [(call.name, call.arguments, call.result, call.status) for call in case.tool_calls] == [
        ("search", {"q": "x"}, full, "error")
    ]
    # What came before the turn's own message in that checkpoint is its context.
    assert case.context == [
        CaseMessage(role="user", content="earlier"),
        CaseMessage(role="assistant", content="earlier answer"),
    ]


def test_a_turn_without_a_session_has_no_context(world: EvalWorld) -> None:
    ids = world.add_turns([("stored question", "stored answer"), ("stateless question", "stateless answer")])
    world.rows("UPDATE chat_turns SET session = NULL WHERE id = $1", ids[1])
    result, path = _export(world)
    assert result.exit_code == 0, result.output
    assert "context: 0 from checkpoints, 1 from records" in result.stdout
    stateless = read_cases(path)[1]
    assert (stateless.session_id, stateless.context) == (None, [])


def test_a_bad_window_is_one_line_and_exit_2(world: EvalWorld, tmp_path: Path) -> None:
    result = world.eval("dataset", "--since", "whenever", "-o", str(tmp_path / "set.jsonl"))
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("agentctl: 'whenever' is not a time")
    assert result.stderr.count("\n") == 1
    assert not (tmp_path / "set.jsonl").exists()
