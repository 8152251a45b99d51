"""`agentctl eval` end to end: real database, the simulator as judge, Typer's CliRunner."""

from __future__ import annotations

import json
import shutil
import time
import uuid
from pathlib import Path

import pytest

from agentctl.resources import prompts_dir
from tests.evaluation.conftest import EvalWorld, judge_says

GOOD, BAD = "a-fine-answer", "a-poor-answer"


def _good_and_bad(world: EvalWorld, good: int, bad: int) -> None:
    world.add_turns([(f"question {i}", GOOD) for i in range(good)] + [(f"question {i}", BAD) for i in range(bad)])
    world.judge([{"match": GOOD, "content": judge_says(0.9)}, {"match": BAD, "content": judge_says(0.2)}])


def _report(world: EvalWorld, *args: str) -> dict:
    path = world.data_dir / "report.json"
    result = world.eval(*world.window_args(), "--report", str(path), *args)
    assert result.exit_code == 0, result.output
    return json.loads(path.read_text())


def _judge_calls(world: EvalWorld) -> int:
    return world.simulator.stats()["chat_completions"]


def test_scores_are_stored_and_reported_on_one_quality_scale(world: EvalWorld) -> None:
    _good_and_bad(world, good=2, bad=2)
    report_path, gauges_path = world.data_dir / "report.json", world.data_dir / "eval.prom"
    result = world.eval(
        *world.window_args(),
        "--metric", "relevancy",
        "--metric", "toxicity",
        "--report", str(report_path),
        "--metrics-file", str(gauges_path),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "relevancy" in result.stdout
    assert "pass rate" in result.stdout
    report = json.loads(report_path.read_text())
    assert report["turns_selected"] == 4
    assert report["judge_models"] == ["judge-model"]
    relevancy, toxicity = report["metrics"]["relevancy"], report["metrics"]["toxicity"]
    # relevancy: higher is better, so the judge's score is the quality; toxicity: lower is better, so 1 - score.
    assert (relevancy["mean"], relevancy["pass_rate"], relevancy["n"]) == (0.55, 0.5, 4)
    assert relevancy["p10"] == pytest.approx(0.2)
    assert (toxicity["mean"], toxicity["higher_is_better"], toxicity["threshold"]) == (0.45, False, 0.9)
    assert toxicity["pass_rate"] == 0.0  # 0.8 and 0.1 are both under toxicity's 0.9
    assert relevancy["judge_failures"] == 0
    assert len(relevancy["prompt_version"]) == 12

    rows = world.rows(
        "SELECT s.metric, s.prompt_version, s.judge_model, s.score, s.quality, s.reasoning, s.error, s.turn, r.status"
        " FROM eval_scores s JOIN eval_runs r ON r.id = s.run WHERE r.id = $1",
        uuid.UUID(report["run_id"]),
    )
    assert len(rows) == 8
    assert {row["status"] for row in rows} == {"finished"}
    assert all(row["judge_model"] == "judge-model" and row["reasoning"] == "scripted" for row in rows)
    assert all(row["error"] is None and row["turn"] is not None for row in rows)
    assert {(row["metric"], row["score"], row["quality"]) for row in rows} == {
        ("relevancy", 0.9, 0.9),
        ("relevancy", 0.2, 0.2),
        ("toxicity", 0.9, 0.1),
        ("toxicity", 0.2, 0.8),
    }
    gauges = gauges_path.read_text()
    assert 'agentctl_eval_quality_mean{metric="relevancy"} 0.55' in gauges
    assert 'agentctl_eval_pass_rate{metric="toxicity"} 0.0' in gauges


def test_rerun_skips_scored_turns_and_rescore_judges_again(world: EvalWorld) -> None:
    _good_and_bad(world, good=2, bad=1)
    first = _report(world, "--metric", "relevancy")
    calls = _judge_calls(world)

    again = _report(world, "--metric", "relevancy")
    assert _judge_calls(world) == calls, "a rerun must not call the judge for turns already scored"
    summary = again["metrics"]["relevancy"]
    assert (summary["judged_now"], summary["reused"], summary["mean"]) == (0, 3, first["metrics"]["relevancy"]["mean"])

    world.judge([{"match": GOOD, "content": judge_says(1.0)}, {"match": BAD, "content": judge_says(0.4)}])
    rescored = _report(world, "--metric", "relevancy", "--rescore")
    assert _judge_calls(world) == calls + 3
    assert rescored["metrics"]["relevancy"]["judged_now"] == 3
    assert rescored["metrics"]["relevancy"]["mean"] == 0.8  # the new scores, not the old ones
    total = world.rows("SELECT count(*) FROM eval_scores WHERE turn IN (SELECT id FROM chat_turns WHERE session = $1)",
                       world.session_id)  # fmt: skip
    assert total[0][0] == 6

    # An edited metric file is a new prompt version: its scores start afresh.
    edited = world.data_dir / "metrics"
    shutil.copytree(prompts_dir() / "evals", edited)
    (edited / "relevancy.md").write_text((edited / "relevancy.md").read_text() + "\nBe strict.\n")
    path = world.data_dir / "edited.json"
    result = world.eval(*world.window_args(), "--metric", "relevancy", "--report", str(path),
                        env={"AGENTCTL_EVALS__METRICS_DIR": str(edited)})  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(path.read_text())["metrics"]["relevancy"]
    assert summary["judged_now"] == 3
    assert summary["prompt_version"] != first["metrics"]["relevancy"]["prompt_version"]


def test_invalid_judge_output_is_retried_then_a_failure_never_a_score(world: EvalWorld) -> None:
    world.add_turns([("q1", "answer-garbled"), ("q2", "answer-out-of-range"), ("q3", "answer-shapeless"), ("q4", GOOD)])
    world.judge(
        [
            # Not JSON at all, whatever JSON mode asked for: a model that breaks it.
            {"match": "answer-garbled", "content": '{"score": 0.9, "reasoning": "cut sh', "verbatim": True},
            {"match": "answer-out-of-range", "content": judge_says(7)},  # JSON, but the score is outside 0..1
            {"match": "answer-shapeless", "content": '{"verdict": "fine"}'},  # JSON, but not the schema
            {"match": GOOD, "content": judge_says(0.8)},
        ]
    )
    calls = _judge_calls(world)
    report = _report(world, "--metric", "helpfulness")
    summary = report["metrics"]["helpfulness"]
    assert (summary["n"], summary["judge_failures"], summary["mean"]) == (1, 3, 0.8)
    assert _judge_calls(world) == calls + 1 + 3 * 2  # each invalid answer asked twice (evals.judge_attempts)
    assert len(summary["failure_examples"]) == 3
    failures = world.rows(
        "SELECT score, quality, error FROM eval_scores WHERE run = $1 AND error IS NOT NULL",
        uuid.UUID(report["run_id"]),
    )
    assert len(failures) == 3
    assert all(row["score"] is None for row in failures)
    assert all(row["quality"] is None for row in failures)
    assert all(row["error"].startswith("invalid judge answer after 2 attempt(s)") for row in failures)

    # Failures are not scores: a rerun tries them again and keeps the one real score.
    rerun = _report(world, "--metric", "helpfulness")["metrics"]["helpfulness"]
    assert (rerun["judged_now"], rerun["reused"], rerun["judge_failures"]) == (3, 1, 3)


def test_gate_exit_codes(world: EvalWorld) -> None:
    world.add_turns([("q", GOOD)] * 3)
    world.judge([{"match": GOOD, "content": judge_says(0.8)}])
    window = world.window_args()

    passed = world.eval(*window, "--metric", "relevancy", "--fail-under", "relevancy=0.7")
    assert passed.exit_code == 0, passed.output
    assert "gate passed: relevancy >= 0.7" in passed.stdout

    failed = world.eval(*window, "--metric", "relevancy", "--metric", "toxicity", "--fail-under",
                        "relevancy=0.9,toxicity=0.1")  # fmt: skip
    assert failed.exit_code == 1, failed.output
    # relevancy 0.8 < 0.9 fails; toxicity's quality is 1 - 0.8 = 0.2 >= 0.1 and passes: only relevancy is named.
    assert "gate failed: relevancy: mean quality 0.800 < 0.9" in failed.stderr
    assert "toxicity" not in failed.stderr

    for bad_gate in ("relevancy=abc", "relevancy=1.5", "nonsense=0.5", "relevancy"):
        usage = world.eval(*window, "--metric", "relevancy", "--fail-under", bad_gate)
        assert usage.exit_code == 2, (bad_gate, usage.output)
        assert usage.stderr.startswith("agentctl: --fail-under")

    for args, message in [
        (["--metric", "nope"], "unknown metric nope"),
        (["--since", "soon"], "'soon' is not a time"),
        (["--since", "2h", "--until", "3h"], "window is empty"),
        (["--source", "langfuse"], "--source langfuse needs Langfuse configured"),
        (["--source", "elsewhere"], "--source must be database or langfuse"),
        (["--session", "not-a-uuid"], "not a session id"),
    ]:
        usage = world.eval(*([] if "--since" in args else window), *args)
        assert usage.exit_code == 2, (args, usage.output)
        assert message in usage.stderr

    empty_since = (world.since.replace(year=1999)).isoformat()
    empty = world.eval("--since", empty_since, "--until", world.since.replace(year=1999, hour=23).isoformat(),
                       "--fail-under", "relevancy=0.99")  # fmt: skip
    assert empty.exit_code == 0, empty.output
    assert "no turns to evaluate" in empty.stdout


@pytest.mark.slow
def test_judge_calls_overlap(world: EvalWorld) -> None:
    """50 turns against a judge taking 200 ms per call: 10 s one after another, about 1 s ten at a time."""
    world.add_turns([(f"question {i}", GOOD) for i in range(50)])
    world.judge([{"match": GOOD, "content": judge_says(0.9)}], ttft_ms=200)
    started = time.perf_counter()
    report = _report(world, "--metric", "relevancy", "--concurrency", "10")
    wall = time.perf_counter() - started
    assert report["metrics"]["relevancy"]["n"] == 50
    print(f"50 judge calls at 200 ms, concurrency 10: run {report['duration_seconds']:.2f} s, command {wall:.2f} s")
    assert report["duration_seconds"] < 3.0
    assert wall < 5.0


def test_session_limit_and_seeded_sample_choose_turns(world: EvalWorld) -> None:
    world.add_turns([(f"question {i}", GOOD) for i in range(6)])
    first_session = world.session_id
    world.add_turns([("other session", GOOD)])
    world.judge([{"match": GOOD, "content": judge_says(0.9)}])
    assert _report(world, "--metric", "conciseness", "--session", str(first_session))["turns_selected"] == 6
    assert _report(world, "--metric", "conciseness", "--limit", "2")["turns_selected"] == 2

    def sampled(seed: str) -> set[str]:
        run_id = _report(world, "--metric", "relevancy", "--sample", "3", "--seed", seed, "--rescore")["run_id"]
        rows = world.rows("SELECT turn FROM eval_scores WHERE run = $1", uuid.UUID(run_id))
        return {str(row["turn"]) for row in rows}

    assert len(sampled("1")) == 3
    assert sampled("1") == sampled("1")
    assert any(sampled(str(seed)) != sampled("1") for seed in range(2, 6))


def test_report_file_defaults_to_the_data_directory(world: EvalWorld, tmp_path: Path) -> None:
    world.add_turns([("q", GOOD)])
    world.judge([{"match": GOOD, "content": judge_says(0.5)}])
    result = world.eval(*world.window_args(), "--metric", "relevancy")
    assert result.exit_code == 0, result.output
    reports = list((world.data_dir / "evals").glob("eval-*.json"))
    assert len(reports) == 1
    assert str(reports[0]) in result.stdout


def test_a_judge_that_is_down_fails_the_gate_rather_than_passing_it(world: EvalWorld) -> None:
    world.add_turns([("q", GOOD)] * 2)
    world.simulator.configure({"faults": {"*": {"rate_500": 1.0}}})
    result = world.eval(*world.window_args(), "--metric", "relevancy", "--fail-under", "relevancy=0.5")
    assert result.exit_code == 1, result.output
    assert "gate failed: relevancy: no scores (2 judge failures), needs 0.5" in result.stderr
    errors = world.rows(
        "SELECT error FROM eval_scores WHERE turn IN (SELECT id FROM chat_turns WHERE session = $1)", world.session_id
    )
    assert [row["error"].split(":")[0] for row in errors] == ["judge unavailable"] * 2
