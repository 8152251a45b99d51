"""What a replay found: per metric, baseline against candidate on the same cases (means, the paired difference with a
bootstrap confidence interval, the cases that got worse the most); the pairwise judge's win rate with position bias
cancelled; cost and latency of both sides; and the gate.

Scores are on the quality scale (higher is better), so a negative difference is a regression whatever the metric's
direction. An answer that failed (a model error) counts as the lowest quality on every metric, and loses the pairwise
comparison: leaving it out would hide the regression that matters most.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from server.evaluation.cases import ReplayedAnswer
from server.evaluation.report import parse_bounds, percentile

PAIRWISE = "pairwise"  # the gate's name for the win rate
Side = Literal["baseline", "candidate"]
SIDES: tuple[Side, Side] = ("baseline", "candidate")
BOOTSTRAP_RESAMPLES = 2000
CONFIDENCE = 0.95
WORST_CASES = 5


@dataclass(frozen=True)
class CaseAnswers:
    """Both answers to one case, for the worst cases of the report."""

    case_key: str
    user_message: str
    baseline: str
    candidate: str


@dataclass(frozen=True)
class MetricComparison:
    metric: str
    prompt_version: str
    n: int  # cases with a score on both sides
    baseline_mean: float | None
    candidate_mean: float | None
    difference: float | None  # candidate - baseline, paired, on the quality scale
    ci_low: float | None
    ci_high: float | None
    judge_failures: dict[Side, int]  # per side
    worst_cases: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PairwiseSummary:
    prompt_version: str
    n: int  # cases with at least one verdict
    win_rate: float | None  # the candidate's: wins count 1, ties 1/2, averaged over both orders
    ci_low: float | None
    ci_high: float | None
    wins: int  # cases the candidate won in both orders (or the one judged)
    losses: int
    ties: int  # the rest: ties, and orders that disagree
    position_disagreements: int  # cases where the verdict followed the position rather than the answer
    judge_failures: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SideUsage:
    answers: int
    errors: int
    asked: int  # the agent asked the user a question instead of answering
    cost_usd: float | None  # None when not known (recorded answers without usage, a server's answers)
    input_tokens: int
    output_tokens: int
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    models: list[str]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def paired_bootstrap(differences: list[float], *, seed: int) -> tuple[float, float]:
    """The percentile bootstrap confidence interval of the mean of paired differences (cases resampled with
    replacement)."""
    values = np.asarray(differences, dtype=float)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(BOOTSTRAP_RESAMPLES, len(values)))].mean(axis=1)
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return round(float(low), 4), round(float(high), 4)


def compare_metric(
    metric: str,
    prompt_version: str,
    qualities: dict[Side, dict[str, float]],
    failures: dict[Side, int],
    answers: dict[str, CaseAnswers],
    *,
    seed: int,
) -> MetricComparison:
    """The paired comparison of one metric over the cases scored on both sides."""
    paired = sorted(qualities["baseline"].keys() & qualities["candidate"].keys())
    differences = [qualities["candidate"][key] - qualities["baseline"][key] for key in paired]
    low = high = None
    if differences:
        low, high = paired_bootstrap(differences, seed=seed)
    drops = sorted((d, key) for d, key in zip(differences, paired, strict=True) if d < 0)
    worst = []
    for difference, key in drops[:WORST_CASES]:
        case = answers.get(key)
        worst.append(
            {
                "case": key,
                "drop": round(-difference, 4),
                "baseline_quality": qualities["baseline"][key],
                "candidate_quality": qualities["candidate"][key],
                "user_message": case.user_message if case else "",
                "baseline_answer": case.baseline if case else "",
                "candidate_answer": case.candidate if case else "",
            }
        )
    return MetricComparison(
        metric=metric,
        prompt_version=prompt_version,
        n=len(paired),
        baseline_mean=_mean([qualities["baseline"][key] for key in paired]),
        candidate_mean=_mean([qualities["candidate"][key] for key in paired]),
        difference=_mean(differences),
        ci_low=low,
        ci_high=high,
        judge_failures=dict(failures),
        worst_cases=worst,
    )


def candidate_points(winner: str) -> float:
    """What one order's verdict gives the candidate: 1 it won, 1/2 a tie, 0 it lost (``winner``: the side, or tie)."""
    return {"candidate": 1.0, "tie": 0.5}.get(winner, 0.0)


def summarise_pairwise(
    prompt_version: str, verdicts: dict[str, dict[Side, float]], failures: int, *, seed: int
) -> PairwiseSummary:
    """``verdicts``: per case, the candidate's points in each order judged (keyed by the side shown first)."""
    scores, wins, losses, disagreements = [], 0, 0, 0
    for orders in verdicts.values():
        points = list(orders.values())
        score = math.fsum(points) / len(points)
        scores.append(score)
        wins += score == 1.0
        losses += score == 0.0
        disagreements += len(points) == 2 and points[0] != points[1] and 0.5 not in points
    low = high = None
    if scores:
        low, high = paired_bootstrap(scores, seed=seed)
    return PairwiseSummary(
        prompt_version=prompt_version,
        n=len(scores),
        win_rate=_mean(scores),
        ci_low=low,
        ci_high=high,
        wins=wins,
        losses=losses,
        ties=len(scores) - wins - losses,
        position_disagreements=disagreements,
        judge_failures=failures,
    )


def summarise_usage(answers: list[ReplayedAnswer]) -> SideUsage:
    """One side's answers: errors, cost, tokens and latency."""
    costs = [answer.cost_usd for answer in answers]
    latencies = sorted(answer.latency_ms for answer in answers if answer.latency_ms is not None)
    return SideUsage(
        answers=len(answers),
        errors=sum(answer.status == "error" for answer in answers),
        asked=sum(answer.status == "asked" for answer in answers),
        cost_usd=round(math.fsum(c for c in costs if c is not None), 6) if answers and None not in costs else None,
        input_tokens=sum(answer.input_tokens for answer in answers),
        output_tokens=sum(answer.output_tokens for answer in answers),
        latency_p50_ms=round(percentile(latencies, 0.5), 1) if latencies else None,
        latency_p95_ms=round(percentile(latencies, 0.95), 1) if latencies else None,
        models=sorted({answer.model for answer in answers if answer.model}),
    )


def parse_regression_gate(spec: str | None, known: set[str]) -> dict[str, float]:
    """``relevancy=0.05,pairwise=0.45``: per metric the largest drop tolerated, and the lowest win rate."""
    shape = "METRIC=MARGIN or pairwise=MIN_WIN_RATE, such as relevancy=0.05,pairwise=0.45"
    return parse_bounds(spec, known | {PAIRWISE}, flag="--fail-on-regression", shape=shape)


def regression_failures(
    metrics: dict[str, MetricComparison], pairwise: PairwiseSummary | None, gate: dict[str, float]
) -> list[str]:
    """One line per gate that fails. A metric fails when its mean dropped by more than its margin and the drop is
    significant (the whole confidence interval is below zero); the win rate fails below its bound. Nothing to
    compare fails too: nothing vouches for the candidate."""
    failures = []
    for name, bound in gate.items():
        if name == PAIRWISE:
            if pairwise is None or pairwise.win_rate is None:
                failures.append(f"{PAIRWISE}: no verdicts, needs a win rate of {bound:g}")
            elif pairwise.win_rate < bound:
                failures.append(
                    f"{PAIRWISE}: the candidate's win rate {pairwise.win_rate:.3f} "
                    f"(95% CI {pairwise.ci_low:.3f} to {pairwise.ci_high:.3f}) < {bound:g}"
                )
            continue
        found = metrics[name]
        if found.difference is None or found.ci_high is None:
            failures.append(f"{name}: no case scored on both sides")
        elif found.difference < -bound and found.ci_high < 0:
            failures.append(
                f"{name}: quality dropped {-found.difference:.3f} ({found.baseline_mean:.3f} -> "
                f"{found.candidate_mean:.3f}, 95% CI of the change {found.ci_low:+.3f} to {found.ci_high:+.3f}), "
                f"beyond the margin {bound:g}"
            )
    return failures


def _mean(values: list[float]) -> float | None:
    return round(math.fsum(values) / len(values), 4) if values else None
