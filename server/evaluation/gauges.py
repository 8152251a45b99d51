"""Prometheus gauges of the latest evaluation run, for dashboards and alerts on answer quality.

The server's /metrics shows them: each worker reads the latest finished run from eval_runs every
``evals.gauge_refresh_seconds`` (one indexed row), so the values survive restarts, need no Pushgateway, and
appear wherever `agentctl eval` ran. ``agentctl eval --metrics-file`` writes the same gauges in the text format
of node_exporter's textfile collector, for hosts that run evaluations without a server.
"""

from __future__ import annotations

import asyncio
import math
from datetime import datetime
from typing import Any

from loguru import logger
from prometheus_client import CollectorRegistry, Gauge

from server.evaluation.tables import EvalRun

REPLAY_SOURCE = "replay"  # eval_runs.source of `agentctl eval replay`

_STATS = ("mean", "p10", "pass_rate", "n", "judge_failures")


class EvalGauges:
    def __init__(self, registry: CollectorRegistry) -> None:
        def gauge(name: str, documentation: str, labels: tuple[str, ...] = ("metric",)) -> Gauge:
            # Every worker reads the same row: the most recent value is the right one.
            return Gauge(name, documentation, labels, registry=registry, multiprocess_mode="mostrecent")

        self.quality_mean = gauge("agentctl_eval_quality_mean", "Latest evaluation: mean quality (higher is better).")
        self.quality_p10 = gauge("agentctl_eval_quality_p10", "Latest evaluation: 10th percentile of the quality.")
        self.pass_rate = gauge("agentctl_eval_pass_rate", "Latest evaluation: share of turns at or above threshold.")
        self.scored = gauge("agentctl_eval_scored_turns", "Latest evaluation: turns with a score.")
        self.judge_failures = gauge("agentctl_eval_judge_failures", "Latest evaluation: judge failures.")
        self.finished_at = gauge(
            "agentctl_eval_last_run_timestamp_seconds", "When the latest evaluation run finished (Unix time).", ()
        )
        self.gate_passed = gauge(
            "agentctl_eval_gate_passed", "Latest evaluation with a gate: 1 passed, 0 failed, -1 no gate given.", ()
        )
        self._by_stat = {
            "mean": self.quality_mean,
            "p10": self.quality_p10,
            "pass_rate": self.pass_rate,
            "n": self.scored,
            "judge_failures": self.judge_failures,
        }
        self._shown: str | None = None
        self._metrics_shown: set[str] = set()

    def show(self, *, run_id: str, finished_at: datetime, summary: dict[str, Any], gate_passed: bool | None) -> None:
        """Set the gauges from one run's summary (as stored in eval_runs.summary)."""
        if run_id == self._shown:
            return
        # A metric the new run did not judge shows NaN (no value) rather than its old score. clear() would do it
        # in one process, but multiprocess mode (every served worker) cannot clear labels, and warns on stderr.
        for metric in self._metrics_shown - summary.keys():
            for stat in _STATS:
                self._by_stat[stat].labels(metric).set(math.nan)
        self._metrics_shown = set(summary)
        for metric, values in summary.items():
            for stat in _STATS:
                if values.get(stat) is not None:
                    self._by_stat[stat].labels(metric).set(values[stat])
        self.finished_at.set(finished_at.timestamp())
        self.gate_passed.set(-1 if gate_passed is None else int(gate_passed))
        self._shown = run_id


async def latest_finished_run() -> dict[str, Any] | None:
    """The latest run that finished with turns to judge (a run over an empty window leaves the gauges alone)."""
    return (
        await EvalRun.select(EvalRun.id, EvalRun.finished_at, EvalRun.summary, EvalRun.gate_passed)
        .where((EvalRun.status == "finished") & (EvalRun.turns_selected > 0) & (EvalRun.source != REPLAY_SOURCE))
        .order_by(EvalRun.finished_at, ascending=False)
        .output(load_json=True)
        .first()
    )


class ReplayGauges:
    """The latest pre-deploy replay (`agentctl eval replay`): baseline against candidate, per metric and pairwise."""

    def __init__(self, registry: CollectorRegistry) -> None:
        def gauge(name: str, documentation: str, labels: tuple[str, ...] = ("metric",)) -> Gauge:
            return Gauge(name, documentation, labels, registry=registry, multiprocess_mode="mostrecent")

        self.mean = gauge("agentctl_replay_quality_mean", "Latest replay: mean quality per side.", ("metric", "side"))
        self.difference = gauge("agentctl_replay_quality_change", "Latest replay: candidate minus baseline quality.")
        self.change_low = gauge("agentctl_replay_quality_change_ci_low", "Latest replay: 95% CI of the change, low.")
        self.change_high = gauge("agentctl_replay_quality_change_ci_high", "Latest replay: 95% CI of the change, high.")
        self.win_rate = gauge("agentctl_replay_win_rate", "Latest replay: the candidate's pairwise win rate.", ())
        self.cases = gauge("agentctl_replay_cases", "Latest replay: cases compared.", ())
        self.finished_at = gauge(
            "agentctl_replay_last_run_timestamp_seconds", "When the latest replay finished (Unix time).", ()
        )
        self.gate_passed = gauge(
            "agentctl_replay_gate_passed", "Latest replay with a gate: 1 passed, 0 failed, -1 no gate given.", ()
        )
        self._shown: str | None = None
        self._metrics_shown: set[str] = set()

    def show(self, *, run_id: str, finished_at: datetime, summary: dict[str, Any], gate_passed: bool | None) -> None:
        """Set the gauges from one replay's summary (as stored in eval_runs.summary)."""
        if run_id == self._shown:
            return
        metrics: dict[str, dict[str, Any]] = summary.get("metrics", {})
        for metric in self._metrics_shown - metrics.keys():  # as EvalGauges: NaN, since labels cannot be cleared
            for side in ("baseline", "candidate"):
                self.mean.labels(metric, side).set(math.nan)
            for gauge in (self.difference, self.change_low, self.change_high):
                gauge.labels(metric).set(math.nan)
        self._metrics_shown = set(metrics)
        for metric, values in metrics.items():
            for side in ("baseline", "candidate"):
                self.mean.labels(metric, side).set(_number(values.get(f"{side}_mean")))
            self.difference.labels(metric).set(_number(values.get("difference")))
            self.change_low.labels(metric).set(_number(values.get("ci_low")))
            self.change_high.labels(metric).set(_number(values.get("ci_high")))
        self.win_rate.set(_number(summary.get("pairwise", {}).get("win_rate")))
        self.cases.set(summary.get("cases", 0))
        self.finished_at.set(finished_at.timestamp())
        self.gate_passed.set(-1 if gate_passed is None else int(gate_passed))
        self._shown = run_id


def _number(value: float | None) -> float:
    return math.nan if value is None else value


async def latest_finished_replay() -> dict[str, Any] | None:
    return (
        await EvalRun.select(EvalRun.id, EvalRun.finished_at, EvalRun.summary, EvalRun.gate_passed)
        .where((EvalRun.status == "finished") & (EvalRun.source == REPLAY_SOURCE))
        .order_by(EvalRun.finished_at, ascending=False)
        .output(load_json=True)
        .first()
    )


async def refresh(gauges: EvalGauges, replay_gauges: ReplayGauges | None = None) -> None:
    run = await latest_finished_run()
    if run is not None:
        gauges.show(
            run_id=str(run["id"]),
            finished_at=run["finished_at"],
            summary=run["summary"],
            gate_passed=run["gate_passed"],
        )
    if replay_gauges is not None and (replay := await latest_finished_replay()) is not None:
        replay_gauges.show(
            run_id=str(replay["id"]),
            finished_at=replay["finished_at"],
            summary=replay["summary"],
            gate_passed=replay["gate_passed"],
        )


async def refresh_periodically(gauges: EvalGauges, replay_gauges: ReplayGauges, interval_seconds: float) -> None:
    """The server's loop: a failed read is logged and tried again next time, never ending the loop."""
    while True:
        try:
            await refresh(gauges, replay_gauges)
        except Exception as error:  # a database hiccup must not stop the gauges for the worker's lifetime
            logger.warning("could not read the latest evaluation run: {}: {}", type(error).__name__, error)
        await asyncio.sleep(interval_seconds)
