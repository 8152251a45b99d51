"""What a run found: per-metric statistics on the quality scale, the gate, and the JSON report."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from server.evaluation.definitions import EvalMetric


class GateSpecError(ValueError):
    """A --fail-under value that cannot be read, or that names a metric this run does not judge."""


@dataclass(frozen=True)
class MetricSummary:
    metric: str
    prompt_version: str
    higher_is_better: bool
    threshold: float
    n: int  # turns with a score (judged now or before)
    mean: float | None  # quality: higher is better
    p10: float | None
    pass_rate: float | None  # share with quality at or above the threshold
    judge_failures: int
    judged_now: int
    reused: int  # scores from earlier runs (same prompt version), not judged again
    failure_examples: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EvalReport:
    run_id: str
    source: str
    window: dict[str, str]
    turns_selected: int
    started_at: str
    finished_at: str
    duration_seconds: float
    judge_models: list[str]
    metrics: dict[str, MetricSummary]
    gate: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["metrics"] = {name: summary.as_dict() for name, summary in self.metrics.items()}
        return data


def summarise(
    metric: EvalMetric,
    qualities: list[float],
    *,
    failures: int,
    judged_now: int,
    failure_examples: list[str] | None = None,
) -> MetricSummary:
    ordered = sorted(qualities)
    return MetricSummary(
        metric=metric.name,
        prompt_version=metric.prompt_version,
        higher_is_better=metric.higher_is_better,
        threshold=metric.threshold,
        n=len(ordered),
        mean=round(math.fsum(ordered) / len(ordered), 4) if ordered else None,
        p10=round(percentile(ordered, 0.10), 4) if ordered else None,
        pass_rate=round(sum(q >= metric.threshold for q in ordered) / len(ordered), 4) if ordered else None,
        judge_failures=failures,
        judged_now=judged_now,
        reused=len(ordered) - (judged_now - failures),
        failure_examples=list(failure_examples or []),
    )


def percentile(ordered: list[float], fraction: float) -> float:
    """Linear interpolation between the closest ranks (numpy's default), on sorted values."""
    position = (len(ordered) - 1) * fraction
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def parse_gate(spec: str | None, known: set[str]) -> dict[str, float]:
    """``relevancy=0.7,toxicity=0.9`` as {metric: lowest acceptable mean quality}."""
    return parse_bounds(spec, known, flag="--fail-under", shape="METRIC=THRESHOLD, such as relevancy=0.7")


def parse_bounds(spec: str | None, known: set[str], *, flag: str, shape: str) -> dict[str, float]:
    """A gate's ``NAME=VALUE,...`` as {name: value}, each value in 0..1 and each name one of ``known``; a
    GateSpecError names the ``flag`` and what is wrong."""
    if not spec:
        return {}
    bounds: dict[str, float] = {}
    for part in (piece.strip() for piece in spec.split(",")):
        if not part:
            continue
        name, equals, value = (piece.strip() for piece in part.partition("="))
        if not equals:
            raise GateSpecError(f"{flag}: {part!r} must be {shape}")
        try:
            bound = float(value)
        except ValueError:
            raise GateSpecError(f"{flag}: {value!r} is not a number (for {name})") from None
        if not 0 <= bound <= 1:
            raise GateSpecError(f"{flag}: {name}={bound:g} is outside 0..1")
        if name not in known:
            raise GateSpecError(f"{flag}: {name!r} is not a metric of this run ({', '.join(sorted(known))})")
        bounds[name] = bound
    return bounds


def gate_failures(summaries: dict[str, MetricSummary], gate: dict[str, float]) -> list[str]:
    """One line per metric below its threshold; a metric without a single score fails (nothing vouches for it)."""
    failures = []
    for name, threshold in gate.items():
        summary = summaries[name]
        if summary.mean is None:
            failures.append(f"{name}: no scores ({summary.judge_failures} judge failures), needs {threshold:g}")
        elif summary.mean < threshold:
            failures.append(f"{name}: mean quality {summary.mean:.3f} < {threshold:g}")
    return failures
