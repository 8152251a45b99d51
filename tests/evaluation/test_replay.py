"""`agentctl eval replay` end to end: cases answered again by the agent's own graph in this process (the simulator as
its model), judged by the simulator, compared and gated, stored in the real database."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from server.database.engine import Database
from server.evaluation.gauges import EvalGauges, ReplayGauges, latest_finished_run, refresh
from tests.apikeys.conftest import new_key
from tests.chat.conftest import serve_with_model
from tests.evaluation.conftest import EvalWorld, judge_says
from tests.support import ApiClient

GOOD, BAD = "GOOD-ANSWER", "BAD-ANSWER"
WORSEN = "please-worsen"  # a case the candidate answers badly: the agent echoes its (bad) system prompt


def prefers(winner: str) -> str:
    return json.dumps({"winner": winner, "reasoning": "scripted"})


def script(world: EvalWorld, *, pairwise: list[dict] | None = None, ttft_ms: float = 0.0) -> None:
    """The simulator as judge and agent: rules for the judge first (its messages hold the answers), then the agent."""
    world.judge(
        [
            {"match": f"<answer>\n{BAD}", "content": judge_says(0.1)},
            {"match": "<answer>\n", "content": judge_says(0.9)},
            *(
                pairwise
                or [
                    {"match": f"<answer_a>\n{BAD}", "content": prefers("B")},
                    {"match": f"<answer_b>\n{BAD}", "content": prefers("A")},
                    {"match": "<answer_a>", "content": prefers("tie")},
                ]
            ),
            {"match": WORSEN, "echo_system": True},
        ],
        ttft_ms=ttft_ms,
    )


def prompts_folder(root: Path, name: str, system: str) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "system.md").write_text(system + "\n", encoding="utf-8")
    return folder


def dataset(path: Path, lines: Sequence[dict | str]) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def recorded_cases(count: int, worse: int, *, tag: str = "") -> list[dict]:
    """Cases whose recorded answer was good; the first ``worse`` of them ask the candidate to get worse."""
    return [
        {
            "id": f"case-{index}",
            "input": f"{WORSEN} question {index}{tag}" if index < worse else f"question {index}{tag}",
            "output": f"{GOOD} recorded {index}",
            "context": [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi there"}],
            "usage": {"input_tokens": 10, "output_tokens": 5, "cost_usd": 0.001},
            "latency_ms": 120.0,
        }
        for index in range(count)
    ]


def replay(world: EvalWorld, *args: str) -> tuple[int, str, dict | None]:
    report = world.data_dir / f"replay-{uuid.uuid4().hex}.json"
    result = world.eval("replay", *args, "--report", str(report))
    return result.exit_code, result.output, json.loads(report.read_text()) if report.exists() else None


def test_a_worse_candidate_is_found_and_fails_the_gate(world: EvalWorld, tmp_path: Path) -> None:
    script(world)
    tag = f" {uuid.uuid4().hex}"
    cases = dataset(tmp_path / "set.jsonl", recorded_cases(8, worse=4, tag=tag))
    candidate = prompts_folder(tmp_path, "candidate", f"{BAD}: the candidate's prompt")
    gauges = tmp_path / "replay.prom"
    code, output, report = replay(
        world,
        str(cases),
        "--prompts", str(candidate),
        "--metric", "relevancy",
        "--fail-on-regression", "relevancy=0.05,pairwise=0.45",
        "--metrics-file", str(gauges),
    )  # fmt: skip
    assert code == 1, output
    assert "gate failed: relevancy: quality dropped 0.400" in output
    assert "gate failed: pairwise: the candidate's win rate 0.250" in output
    assert report is not None
    relevancy = report["metrics"]["relevancy"]
    assert (relevancy["n"], relevancy["baseline_mean"], relevancy["candidate_mean"]) == (8, 0.9, 0.5)
    assert relevancy["difference"] == -0.4
    assert relevancy["ci_low"] < relevancy["difference"] < relevancy["ci_high"] < 0
    worst = relevancy["worst_cases"]
    assert len(worst) == 4
    assert {case["case"] for case in worst} == {f"case-{i}" for i in range(4)}
    assert worst[0]["baseline_answer"].startswith(GOOD)
    assert worst[0]["candidate_answer"].startswith(BAD)
    assert worst[0]["user_message"].startswith(WORSEN)
    pairwise = report["pairwise"]
    assert (pairwise["win_rate"], pairwise["losses"], pairwise["ties"], pairwise["wins"]) == (0.25, 4, 4, 0)
    assert report["usage"]["baseline"]["cost_usd"] == pytest.approx(0.008)
    assert report["usage"]["baseline"]["latency_p50_ms"] == 120.0
    candidate_usage = report["usage"]["candidate"]
    assert candidate_usage["answers"] == 8
    assert candidate_usage["errors"] == 0
    assert candidate_usage["models"] == ["default"]
    assert candidate_usage["input_tokens"] > 0
    assert report["gate"]["passed"] is False
    assert sorted(world.data_dir.glob("replay-*.json"))[0].stat().st_mode & 0o777 == 0o600  # quotes users

    run_id = uuid.UUID(report["run_id"])
    [run] = world.rows(
        "SELECT source, status, gate_passed, turns_selected, options FROM eval_runs WHERE id = $1", run_id
    )
    assert (run["source"], run["status"], run["gate_passed"], run["turns_selected"]) == ("replay", "finished", False, 8)
    options = json.loads(run["options"])
    assert options["candidate"]["prompts"] == str(candidate)
    assert options["baseline"] == "recorded"
    scores = world.rows("SELECT side, case_key, quality FROM eval_scores WHERE run = $1", run_id)
    assert len(scores) == 16  # 8 cases, 2 sides, 1 metric
    assert {row["side"] for row in scores} == {"baseline", "candidate"}
    verdicts = world.rows("SELECT case_key, first, winner FROM eval_pairwise WHERE run = $1", run_id)
    assert len(verdicts) == 16
    assert {(row["first"], row["winner"]) for row in verdicts if row["case_key"] == "case-0"} == {
        ("baseline", "baseline"),
        ("candidate", "baseline"),
    }
    text = gauges.read_text()
    assert 'agentctl_replay_quality_change{metric="relevancy"} -0.4' in text
    assert "agentctl_replay_win_rate 0.25" in text
    assert "agentctl_replay_gate_passed 0.0" in text
    # Nothing of a user's: no turn was recorded, no checkpoint written (the replay builds no memory service at all).
    assert world.rows("SELECT 1 FROM chat_turns WHERE input LIKE $1", f"%{tag}") == []
    assert world.rows("SELECT 1 FROM checkpoints WHERE thread_id LIKE 'replay-%'") == []


def test_an_identical_candidate_passes(world: EvalWorld, tmp_path: Path) -> None:
    script(world)
    cases = recorded_cases(4, worse=2)
    for case in cases:
        del case["output"]  # nothing recorded: the baseline is replayed too
    path = dataset(tmp_path / "set.jsonl", cases)
    same = prompts_folder(tmp_path, "same", f"{GOOD}: the prompt of today")
    code, output, report = replay(
        world,
        str(path),
        "--prompts", str(same),
        "--baseline-prompts", str(same),
        "--metric", "relevancy",
        "--metric", "helpfulness",
        "--fail-on-regression", "relevancy=0.05,helpfulness=0.05,pairwise=0.45",
    )  # fmt: skip
    assert code == 0, output
    assert "gate passed: relevancy=0.05, helpfulness=0.05, pairwise=0.45" in output
    assert report is not None
    for metric in ("relevancy", "helpfulness"):
        found = report["metrics"][metric]
        assert (found["difference"], found["ci_low"], found["ci_high"]) == (0.0, 0.0, 0.0)
    assert report["pairwise"]["win_rate"] == 0.5
    answers = world.rows(
        "SELECT case_key, side, answer FROM eval_replay_answers WHERE run = $1", uuid.UUID(report["run_id"])
    )
    by_case: dict[str, dict[str, str]] = {}
    for row in answers:
        by_case.setdefault(row["case_key"], {})[row["side"]] = row["answer"]
    assert len(by_case) == 4
    assert all(sides["baseline"] == sides["candidate"] != "" for sides in by_case.values())
    # The same answer is judged once for both sides, and ties without a pairwise judge: no noise, no cost.
    run_id = uuid.UUID(report["run_id"])
    verdicts = world.rows("SELECT winner, judge_model FROM eval_pairwise WHERE run = $1", run_id)
    assert {(row["winner"], row["judge_model"]) for row in verdicts} == {("tie", None)}
    scores = world.rows("SELECT case_key, metric, side, quality FROM eval_scores WHERE run = $1", run_id)
    assert len(scores) == 16


def test_the_pairwise_judge_is_asked_in_both_orders_so_position_bias_cancels(world: EvalWorld, tmp_path: Path) -> None:
    # A judge that always prefers the first answer it is shown, whatever it says.
    script(world, pairwise=[{"match": "<answer_a>", "content": prefers("A")}])
    path = dataset(tmp_path / "set.jsonl", recorded_cases(3, worse=0))
    code, output, report = replay(world, str(path), "--metric", "relevancy", "--fail-on-regression", "pairwise=0.45")
    assert code == 0, output
    assert report is not None
    pairwise = report["pairwise"]
    assert (pairwise["win_rate"], pairwise["position_disagreements"], pairwise["ties"]) == (0.5, 3, 3)
    verdicts = world.rows(
        "SELECT case_key, first, winner FROM eval_pairwise WHERE run = $1", uuid.UUID(report["run_id"])
    )
    assert (
        sorted((row["first"], row["winner"]) for row in verdicts)
        == [
            ("baseline", "baseline"),
        ]
        * 3
        + [("candidate", "candidate")] * 3
    )


def test_tools_are_stubbed_and_approvals_refused(world: EvalWorld, tmp_path: Path) -> None:
    script(world)
    stubs = tmp_path / "stubs.toml"
    stubs.write_text('[tools.web_search]\nrecorded = true\nresult = "no results"\n', encoding="utf-8")
    path = dataset(
        tmp_path / "set.jsonl",
        [
            {
                "id": "searches",
                "input": 'call:web_search {"query": "weather in Paris"}',
                "output": "It is sunny.",
                "tool_calls": [
                    {"name": "web_search", "arguments": {"query": "weather in Paris"}, "result": "SUNNY-25C"}
                ],
            },
            {"id": "searches-anew", "input": 'call:web_search {"query": "news"}', "output": "No news."},
            {"id": "computes", "input": 'call:calculator {"expression": "2+2"}', "output": "4"},
        ],
    )
    code, output, report = replay(
        world,
        str(path),
        "--tool-stubs", str(stubs),
        "--settings", "AGENTCTL_AGENT__TOOLS__CALCULATOR__POLICY=approve",
        "--metric", "relevancy",
    )  # fmt: skip
    assert code == 0, output
    assert report is not None
    rows = world.rows(
        "SELECT case_key, answer, tool_calls FROM eval_replay_answers WHERE run = $1 AND side = 'candidate'",
        uuid.UUID(report["run_id"]),
    )
    answers = {row["case_key"]: row["answer"] for row in rows}
    assert "SUNNY-25C" in answers["searches"]  # the result the turn recorded, not the web
    assert "no results" in answers["searches-anew"]  # no recorded call to replay: the stub's fixed result
    assert "nobody is here to approve" in answers["computes"]  # a tool needing approval is refused, not run
    calls = {row["case_key"]: json.loads(row["tool_calls"]) for row in rows}
    assert calls["computes"][0]["approval"]["decision"] == "rejected"


def test_an_interrupted_replay_resumes_where_it_stopped(world: EvalWorld, tmp_path: Path) -> None:
    script(world, ttft_ms=400)
    path = dataset(tmp_path / "set.jsonl", recorded_cases(6, worse=0))
    environment = {
        **os.environ,
        "DATABASE_URL": world.database_url,
        "AGENTCTL_LLM__BASE_URL": world.simulator.base_url,
        "AGENTCTL_LLM__MODEL": "judge-model",
        "OPENAI_API_KEY": "sim",
        "AGENTCTL_LLM__MAX_ATTEMPTS": "1",
        "AGENTCTL_OBSERVABILITY__LOG_LEVEL": "WARNING",
    }
    command = [sys.executable, "-m", "agentctl", "--data-dir", str(world.data_dir), "eval", "replay", str(path)]
    command += ["--metric", "relevancy", "--concurrency", "1"]
    process = subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            done = world.rows(
                "SELECT count(DISTINCT a.case_key) AS n FROM eval_replay_answers a JOIN eval_runs r ON r.id = a.run "
                "WHERE r.options->>'dataset' = $1",
                str(path),
            )
            if done[0]["n"] >= 2:
                break
            time.sleep(0.1)
        else:
            pytest.fail("the replay answered nothing within 60 s")
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
    finally:
        process.kill()
    [stopped] = world.rows("SELECT id, status FROM eval_runs WHERE options->>'dataset' = $1", str(path))
    assert stopped["status"] == "interrupted"
    answered_before = world.rows("SELECT count(*) AS n FROM eval_replay_answers WHERE run = $1", stopped["id"])[0]["n"]
    assert 0 < answered_before < 12

    script(world)  # quick now
    code, output, report = replay(world, str(path), "--metric", "relevancy")
    assert code == 0, output
    assert report is not None
    assert report["resumed"] is True
    assert report["run_id"] == str(stopped["id"])
    assert "(resumed)" in output
    rows = world.rows("SELECT case_key, side FROM eval_replay_answers WHERE run = $1", stopped["id"])
    assert len(rows) == 12 == len({(row["case_key"], row["side"]) for row in rows})  # nothing answered twice
    assert report["metrics"]["relevancy"]["n"] == 6
    [finished] = world.rows("SELECT status FROM eval_runs WHERE id = $1", stopped["id"])
    assert finished["status"] == "finished"
    # Asked again from the start (--fresh), the same comparison is a new run.
    code, output, fresh = replay(world, str(path), "--metric", "relevancy", "--fresh")
    assert code == 0
    assert fresh is not None
    assert fresh["run_id"] != str(stopped["id"])
    assert fresh["resumed"] is False


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('{"input": "unfinished', "set.jsonl:2: not JSON (Unterminated string starting at, column 11)"),
        ('{"input": "hi", "outptu": "x"}', "set.jsonl:2: outptu: Extra inputs are not permitted"),
        ('{"output": "x"}', "set.jsonl:2: input: Field required"),
        ('["input"]', "set.jsonl:2: must be a JSON object, not list"),
    ],
)
def test_a_dataset_line_that_does_not_parse_is_named(world: EvalWorld, tmp_path: Path, line: str, problem: str) -> None:
    path = dataset(tmp_path / "set.jsonl", [{"input": "fine", "output": "ok"}, line])
    calls_before = world.simulator.stats()["chat_completions"]
    code, output, report = replay(world, str(path))
    assert code == 2
    assert report is None
    [message] = output.strip().splitlines()
    assert message.startswith("agentctl: ")
    assert message.endswith(problem)
    assert world.simulator.stats()["chat_completions"] == calls_before  # stopped before any model call


def test_usage_errors_are_one_line(world: EvalWorld, tmp_path: Path) -> None:
    path = dataset(tmp_path / "set.jsonl", [{"id": "q", "input": "no answer recorded"}])
    code, output, _ = replay(world, str(path))
    assert code == 2
    assert output.strip() == (
        f"agentctl: {path}: case q has no recorded output to compare with; replay a baseline too "
        "(--baseline-prompts, --baseline-models or --baseline-settings)"
    )
    good = dataset(tmp_path / "good.jsonl", [{"input": "q", "output": "a"}])
    for args, expected in [
        (["--fail-on-regression", "nonsense=0.1"], "--fail-on-regression: 'nonsense' is not a metric of this run"),
        (["--settings", "AGENTCTL_AGENT__MAX_STEPS=zero"], "the candidate's settings: AGENTCTL_AGENT__MAX_STEPS"),
        (["--prompts", str(tmp_path)], "has no system.md"),
        (["--server", "http://127.0.0.1:9", "--tool-stubs", str(good)], "--tool-stubs applies to a replay"),
    ]:
        code, output, _ = replay(world, str(good), *args)
        assert code == 2, output
        assert len(output.strip().splitlines()) == 1, output
        assert expected in output, output


def test_a_candidate_on_a_running_server(world: EvalWorld, tmp_path: Path) -> None:
    """The candidate is a deployed server (a staging replica with the new prompt): it answers through /v1 as the
    replay account, never in a user's session."""
    script(world)
    candidate = prompts_folder(tmp_path, "candidate", f"{BAD}: the candidate's prompt")
    server = serve_with_model(tmp_path, world.database_url, world.simulator, AGENTCTL_AGENT__PROMPTS_DIR=str(candidate))
    try:
        server.wait_until_healthy()
        api = ApiClient(server)
        holder = new_key(api)
        path = dataset(tmp_path / "set.jsonl", recorded_cases(4, worse=2))
        report_path = tmp_path / "server-replay.json"
        result = world.eval(
            "replay", str(path),
            "--server", server.base_url,
            "--metric", "relevancy",
            "--fail-on-regression", "pairwise=0.45",
            "--report", str(report_path),
            env={"AGENTCTL_API_KEY": holder.key},
        )  # fmt: skip
        assert result.exit_code == 1, result.output
        report = json.loads(report_path.read_text())
        assert report["pairwise"]["win_rate"] == 0.25
        assert report["metrics"]["relevancy"]["difference"] == -0.4
        assert report["compared"]["candidate"]["server"] == server.base_url
        assert report["usage"]["candidate"]["models"] == ["Agent"]
        assert report["usage"]["candidate"]["cost_usd"] is None
        turns = world.rows(
            "SELECT t.session FROM chat_turns t JOIN api_keys k ON k.owner = t.owner WHERE k.id = $1",
            uuid.UUID(holder.key_id),
        )
        assert len(turns) == 4
        assert all(row["session"] is None for row in turns)

        wrong_key = world.eval("replay", str(path), "--server", server.base_url, env={"AGENTCTL_API_KEY": "sk-wrong"})
        assert wrong_key.exit_code == 2
        assert wrong_key.output.startswith(f"agentctl: --server: {server.base_url}/v1/models: HTTP 401")
    finally:
        server.terminate()


def test_deletion_reaches_what_a_replay_made_of_recorded_turns(world: EvalWorld, tmp_path: Path) -> None:
    """A dataset exported from this deployment names its turns: a user deleted after the export takes the replay's
    answers and verdicts about their turns along, and their cases are left out of the next replay."""
    script(world)
    world.add_turns([("first user's question", "an answer"), ("first user's follow-up", "another answer")])
    leaving = world.session_id
    world.add_turns([("second user's question", "an answer")])
    path = tmp_path / "set.jsonl"
    exported = world.eval("dataset", *world.window_args(), "-o", str(path))
    assert exported.exit_code == 0, exported.output
    code, output, report = replay(world, str(path), "--metric", "relevancy")
    assert code == 0, output
    assert report is not None
    assert report["cases"] == 3
    assert report["withdrawn"] == 0
    run_id = uuid.UUID(report["run_id"])
    answers = world.rows("SELECT turn FROM eval_replay_answers WHERE run = $1", run_id)
    assert len(answers) == 6
    assert all(row["turn"] is not None for row in answers)

    world.rows("DELETE FROM users WHERE id = (SELECT owner FROM chat_sessions WHERE id = $1)", leaving)
    for table in ("eval_replay_answers", "eval_scores", "eval_pairwise"):
        assert len(world.rows(f"SELECT 1 FROM {table} WHERE run = $1", run_id)) == 2  # the second user's case only
    code, output, again = replay(world, str(path), "--metric", "relevancy", "--fresh")
    assert code == 0, output
    assert again is not None
    assert (again["cases"], again["withdrawn"]) == (1, 2)
    assert "2 cases left out: their turns were deleted since the export" in output


async def test_the_server_shows_the_latest_replay_beside_the_nightly_scores(
    world: EvalWorld, database: Database, tmp_path: Path
) -> None:
    script(world)
    path = dataset(tmp_path / "set.jsonl", recorded_cases(4, worse=2))
    candidate = prompts_folder(tmp_path, "candidate", f"{BAD}: the candidate's prompt")
    # The command runs an event loop of its own: in a thread, beside this test's.
    code, output, report = await asyncio.to_thread(
        replay, world, str(path), "--prompts", str(candidate), "--metric", "relevancy"
    )
    assert code == 0, output
    assert report is not None
    database.bind()  # the command bound the tables to its own (now closed) engine
    registry = CollectorRegistry()
    await refresh(EvalGauges(registry), ReplayGauges(registry))
    text = generate_latest(registry).decode()
    assert 'agentctl_replay_quality_mean{metric="relevancy",side="baseline"} 0.9' in text
    assert 'agentctl_replay_quality_mean{metric="relevancy",side="candidate"} 0.5' in text
    assert "agentctl_replay_win_rate 0.25" in text
    assert "agentctl_replay_cases 4.0" in text
    assert "agentctl_replay_gate_passed -1.0" in text
    nightly = await latest_finished_run()  # a replay is not the nightly evaluation of production's answers
    assert nightly is None or str(nightly["id"]) != report["run_id"]
