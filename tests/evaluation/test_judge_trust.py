"""The labelled set shipped for measuring the judge, `agentctl eval agreement`, metric files, and the gauges."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from agentctl.resources import prompts_dir
from server.database.engine import Database
from server.evaluation.agreement import read_labelled_set
from server.evaluation.definitions import MetricFileError, metrics_directory, parse_metric_file, read_metrics
from server.evaluation.gauges import EvalGauges, refresh
from tests.evaluation.conftest import EvalWorld, judge_says

LABELLED_SET = Path(__file__).parent / "labelled_set.jsonl"
REQUIRED_METRICS = {"hallucination", "toxicity", "relevancy", "helpfulness", "conciseness"}
RUDE_MARKERS = ("Seriously?", "stupid question", "should not be allowed", "pathetic")


def test_shipped_metrics_and_labelled_set_cover_every_metric() -> None:
    metrics = read_metrics(metrics_directory(None))
    assert set(metrics) >= REQUIRED_METRICS
    assert {name: m.higher_is_better for name, m in metrics.items() if name in ("hallucination", "toxicity")} == {
        "hallucination": False,
        "toxicity": False,
    }
    labels = Counter((answer.metric, answer.label) for answer in read_labelled_set(LABELLED_SET))
    for metric in REQUIRED_METRICS:
        assert labels[(metric, "good")] >= 15
        assert labels[(metric, "good")] + labels[(metric, "bad")] >= 30


def test_agreement_with_labels(world: EvalWorld) -> None:
    # A judge that flags exactly the rude answers agrees fully on toxicity ...
    world.judge([{"match": marker, "content": judge_says(0.9)} for marker in RUDE_MARKERS])
    report = world.data_dir / "agreement.json"
    result = world.eval(
        "agreement", str(LABELLED_SET), "--metric", "toxicity", "--min-agreement", "0.9", "--report", str(report)
    )
    assert result.exit_code == 0, result.output
    assert "toxicity" in result.stdout
    toxicity = json.loads(report.read_text())["toxicity"]
    assert toxicity == {
        "metric": "toxicity",
        "n": 64,
        "agreement": 1.0,
        "good_mean_quality": 1.0,
        "bad_mean_quality": 0.1,
        "judge_failures": 0,
    }
    # ... and one that scores every answer 0 agrees on half of the conciseness labels: the gate says so.
    world.judge([{"match": "Metric: conciseness", "content": judge_says(0.0)}])
    low = world.eval("agreement", str(LABELLED_SET), "--metric", "conciseness", "--min-agreement", "0.9")
    assert low.exit_code == 1, low.output
    assert "conciseness: agreement 0.5 < 0.9" in low.stderr


def test_broken_metric_files_are_usage_errors(world: EvalWorld, tmp_path: Path) -> None:
    folder = tmp_path / "metrics"
    folder.mkdir()
    source = (prompts_dir() / "evals" / "relevancy.md").read_text()
    for name, text, problem in [
        ("relevancy", "no front matter", "must start with front matter"),
        ("relevancy", source.replace("threshold: 0.7", "threshold: 7"), "threshold"),
        ("other", source, "must match the file name"),
        ("relevancy", source.replace("higher_is_better: true\n", ""), "higher_is_better"),
    ]:
        path = folder / f"{name}.md"
        with pytest.raises(MetricFileError, match=problem):
            parse_metric_file(path, text.encode())
    (folder / "relevancy.md").write_text("no front matter")
    result = world.eval(*world.window_args(), env={"AGENTCTL_EVALS__METRICS_DIR": str(folder)})
    assert result.exit_code == 2
    assert "must start with front matter" in result.stderr


async def test_server_gauges_show_the_latest_run(world: EvalWorld, database: Database) -> None:
    await world.add_turns_async([("q", "x-answer")])
    world.judge([{"match": "x-answer", "content": judge_says(0.25)}])
    # The command runs an event loop of its own: in a thread, beside this test's.
    result = await asyncio.to_thread(world.eval, *world.window_args(), "--metric", "relevancy", "--metric", "toxicity")
    assert result.exit_code == 0, result.output
    database.bind()  # the command bound the tables to its own (now closed) engine
    registry = CollectorRegistry()
    gauges = EvalGauges(registry)
    await refresh(gauges)
    text = generate_latest(registry).decode()
    assert 'agentctl_eval_quality_mean{metric="relevancy"} 0.25' in text
    assert 'agentctl_eval_quality_mean{metric="toxicity"} 0.75' in text
    assert 'agentctl_eval_scored_turns{metric="toxicity"} 1.0' in text
    assert "agentctl_eval_last_run_timestamp_seconds" in text
    assert "agentctl_eval_gate_passed -1.0" in text

    # A later run that judged relevancy only: toxicity's old values give way to no value (NaN), not a stale score.
    later = {"relevancy": {"mean": 0.5, "p10": 0.5, "pass_rate": 1.0, "n": 1, "judge_failures": 0}}
    gauges.show(run_id="later", finished_at=datetime.now(UTC), summary=later, gate_passed=True)
    text = generate_latest(registry).decode()
    assert 'agentctl_eval_quality_mean{metric="relevancy"} 0.5' in text
    assert 'agentctl_eval_quality_mean{metric="toxicity"} NaN' in text
    assert "agentctl_eval_gate_passed 1.0" in text
