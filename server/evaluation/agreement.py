"""Trust in the judge: how often its verdicts agree with human labels on a labelled set.

The set is JSON Lines, one answer per line: ``{"metric", "input", "output", "label": "good" | "bad"}``. The judge
agrees when an answer labelled good reaches the metric's threshold (quality scale) and one labelled bad does
not. With a real judge model, this is the first number to look at before trusting a gate built on it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from server.evaluation.definitions import EvalMetric
from server.evaluation.judge import Judge
from server.evaluation.service import Progress, for_each_bounded


class LabelledSetError(ValueError):
    """A labelled set that cannot be read; the message names the file and line."""


class LabelledAnswer(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metric: str
    input: str
    output: str
    label: Literal["good", "bad"]
    note: str = ""


@dataclass(frozen=True)
class Agreement:
    metric: str
    n: int
    agreement: float | None  # share of judged answers where the judge's pass/fail matches the label
    good_mean_quality: float | None
    bad_mean_quality: float | None
    judge_failures: int

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def read_labelled_set(path: Path) -> list[LabelledAnswer]:
    answers = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise LabelledSetError(f"cannot read {path}: {error.strerror or error}") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            answers.append(LabelledAnswer.model_validate(json.loads(line)))
        except (ValueError, ValidationError) as error:
            raise LabelledSetError(f"{path}:{number}: not a labelled answer: {error}") from None
    return answers


async def measure_agreement(
    judge: Judge,
    metrics: dict[str, EvalMetric],
    answers: list[LabelledAnswer],
    *,
    concurrency: int,
    progress: Progress,
) -> dict[str, Agreement]:
    """Judge every labelled answer of the given metrics and compare with its label."""
    chosen = [answer for answer in answers if answer.metric in metrics]
    qualities: dict[int, float | None] = {}

    async def judge_one(index: int) -> None:
        answer = chosen[index]
        metric = metrics[answer.metric]
        verdict = await judge.judge(metric, user_message=answer.input, answer=answer.output)
        qualities[index] = metric.quality(verdict.score) if verdict.score is not None else None
        progress.advance()

    progress.start(len(chosen))
    await for_each_bounded(range(len(chosen)), concurrency, judge_one)
    return {
        name: _agreement(metric, [(answer, qualities[i]) for i, answer in enumerate(chosen) if answer.metric == name])
        for name, metric in metrics.items()
        if any(answer.metric == name for answer in chosen)
    }


def _agreement(metric: EvalMetric, judged: list[tuple[LabelledAnswer, float | None]]) -> Agreement:
    scored = [(answer, quality) for answer, quality in judged if quality is not None]
    agreeing = sum((quality >= metric.threshold) == (answer.label == "good") for answer, quality in scored)
    good = [quality for answer, quality in scored if answer.label == "good"]
    bad = [quality for answer, quality in scored if answer.label == "bad"]
    return Agreement(
        metric=metric.name,
        n=len(judged),
        agreement=round(agreeing / len(scored), 4) if scored else None,
        good_mean_quality=round(sum(good) / len(good), 4) if good else None,
        bad_mean_quality=round(sum(bad) / len(bad), 4) if bad else None,
        judge_failures=len(judged) - len(scored),
    )
