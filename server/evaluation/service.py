"""An evaluation run: pick the turns of a window, judge each (turn, metric) not judged yet with the same prompt
version, store every verdict as it comes, and summarise the window's scores.

Reruns are idempotent: a turn already scored by a metric's current prompt version keeps its score (reported as
reused) unless ``rescore`` is asked; judge failures are never kept as scores, so a rerun tries them again. Each
verdict is written as soon as it arrives, so an interrupted run loses only the calls in flight.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol, TypeVar

from loguru import logger

from server.evaluation.definitions import EvalMetric
from server.evaluation.judge import Judge, Verdict
from server.evaluation.report import EvalReport, gate_failures, summarise
from server.evaluation.sources import LangfuseScores, TurnToJudge
from server.evaluation.tables import EvalRun, EvalScore
from server.evaluation.window import Window

_LOOKUP_CHUNK = 1000
_FAILURE_EXAMPLES = 3  # distinct judge errors a report quotes per metric
T = TypeVar("T")

Source = Literal["database", "langfuse"]
TurnLoader = Callable[[], Awaitable[list[TurnToJudge]]]


class Progress(Protocol):
    """What a run tells its caller (a progress bar) as it goes."""

    def start(self, total: int) -> None: ...

    def advance(self) -> None: ...


class _NoProgress:
    def start(self, total: int) -> None:
        pass

    def advance(self) -> None:
        pass


@dataclass(frozen=True)
class EvalOptions:
    window: Window
    metrics: list[EvalMetric]
    source: Source = "database"
    sample: int | None = None
    seed: int = 0
    limit: int | None = None
    session_id: str | None = None
    rescore: bool = False
    concurrency: int = 8
    gate: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class _Job:
    turn: TurnToJudge
    metric: EvalMetric


@dataclass
class _Outcomes:
    """Per metric: the quality of every scored turn of the window, and this run's judge calls and failures."""

    qualities: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    judged: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    failures: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    failure_examples: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    models: set[str] = field(default_factory=set)


async def for_each_bounded(items: Sequence[T], concurrency: int, action: Callable[[T], Awaitable[None]]) -> None:
    """``action`` on every item, at most ``concurrency`` at once and none waiting on a timer: workers share one
    iterator, so each item is taken by exactly one of them (no task per item for a window of thousands)."""
    pending: Iterator[T] = iter(items)

    async def worker() -> None:
        for item in pending:
            await action(item)

    async with asyncio.TaskGroup() as group:
        for _ in range(min(concurrency, len(items))):
            group.create_task(worker())


def drawn_in_order(
    items: Sequence[T], *, sample: int | None, seed: int, order: Callable[[T], tuple[datetime, str]]
) -> list[T]:
    """``sample`` of ``items`` drawn with ``seed`` (the same items and seed give the same draw), in ``order``
    (all of them when ``sample`` is None or not smaller)."""
    ordered = sorted(items, key=order)
    if sample is not None and sample < len(ordered):
        chosen = random.Random(seed).sample(range(len(ordered)), sample)
        ordered = [ordered[index] for index in sorted(chosen)]
    return ordered


def pick_turns(turns: list[TurnToJudge], *, sample: int | None, seed: int) -> list[TurnToJudge]:
    """``sample`` turns drawn with ``seed`` (the same window and seed give the same turns), oldest first."""
    return drawn_in_order(turns, sample=sample, seed=seed, order=lambda turn: (turn.created_at, turn.key))


class EvaluationService:
    def __init__(self, *, judge: Judge, langfuse: LangfuseScores | None = None) -> None:
        self._judge = judge
        self._langfuse = langfuse

    async def run(self, options: EvalOptions, load_turns: TurnLoader, progress: Progress | None = None) -> EvalReport:
        """Judge the window's turns and return the report; the run and every verdict are stored as they happen."""
        progress = progress or _NoProgress()
        started = datetime.now(UTC)
        clock = time.perf_counter()
        run = EvalRun(
            id=uuid.uuid4(),
            source=options.source,
            window_since=options.window.since,
            window_until=options.window.until,
            options=_options_record(options),
        )
        await run.save()
        try:
            turns = pick_turns(await load_turns(), sample=options.sample, seed=options.seed)
            outcomes = _Outcomes()
            jobs = await self._jobs_to_run(turns, options, outcomes)
            progress.start(len(jobs))
            await self._judge_all(run.id, jobs, options.concurrency, outcomes, progress)
        except BaseException:
            await EvalRun.update({EvalRun.status: "failed", EvalRun.finished_at: datetime.now(UTC)}).where(
                EvalRun.id == run.id
            )
            raise
        summaries = {
            metric.name: summarise(
                metric,
                outcomes.qualities[metric.name],
                failures=outcomes.failures[metric.name],
                judged_now=outcomes.judged[metric.name],
                failure_examples=outcomes.failure_examples[metric.name],
            )
            for metric in options.metrics
        }
        failures = gate_failures(summaries, options.gate)
        finished = datetime.now(UTC)
        report = EvalReport(
            run_id=str(run.id),
            source=options.source,
            window={"since": options.window.since.isoformat(), "until": options.window.until.isoformat()},
            turns_selected=len(turns),
            started_at=started.isoformat(),
            finished_at=finished.isoformat(),
            duration_seconds=round(time.perf_counter() - clock, 3),
            judge_models=sorted(outcomes.models),
            metrics=summaries,
            gate={"thresholds": options.gate, "failures": failures, "passed": not failures} if options.gate else {},
        )
        await EvalRun.update(
            {
                EvalRun.status: "finished",
                EvalRun.finished_at: finished,
                EvalRun.turns_selected: len(turns),
                EvalRun.summary: {name: summary.as_dict() for name, summary in summaries.items()},
                EvalRun.gate_passed: (not failures) if options.gate else None,
            }
        ).where(EvalRun.id == run.id)
        return report

    async def _jobs_to_run(self, turns: list[TurnToJudge], options: EvalOptions, outcomes: _Outcomes) -> list[_Job]:
        """Every (turn, metric) to judge now; the scores kept from earlier runs go straight into ``outcomes``."""
        earlier = {} if options.rescore else await _earlier_scores(turns, options.metrics)
        jobs = []
        for metric in options.metrics:
            for turn in turns:
                quality = earlier.get((turn.key, metric.name))
                if quality is None:
                    jobs.append(_Job(turn, metric))
                else:
                    outcomes.qualities[metric.name].append(quality)
        return jobs

    async def _judge_all(
        self, run_id: uuid.UUID, jobs: list[_Job], concurrency: int, outcomes: _Outcomes, progress: Progress
    ) -> None:
        async def judge_and_record(job: _Job) -> None:
            verdict = await self._judge.judge(job.metric, user_message=job.turn.user_message, answer=job.turn.answer)
            await self._record(run_id, job, verdict, outcomes)
            progress.advance()

        await for_each_bounded(jobs, concurrency, judge_and_record)

    async def _record(self, run_id: uuid.UUID, job: _Job, verdict: Verdict, outcomes: _Outcomes) -> None:
        metric = job.metric
        quality = metric.quality(verdict.score) if verdict.score is not None else None
        outcomes.judged[metric.name] += 1
        if verdict.judge_model:
            outcomes.models.add(verdict.judge_model)
        if quality is None:
            outcomes.failures[metric.name] += 1
            examples = outcomes.failure_examples[metric.name]
            if len(examples) < _FAILURE_EXAMPLES and verdict.error not in examples:
                examples.append(str(verdict.error))
            logger.debug("judge failure on turn {} for {}: {}", job.turn.key, metric.name, verdict.error)
        else:
            outcomes.qualities[metric.name].append(quality)
        await EvalScore.insert(
            EvalScore(
                id=uuid.uuid4(),
                run=run_id,
                turn=job.turn.turn_id,
                trace_id=job.turn.trace_id,
                metric=metric.name,
                prompt_version=metric.prompt_version,
                judge_model=verdict.judge_model,
                score=verdict.score,
                quality=quality,
                reasoning=verdict.reasoning,
                error=verdict.error,
                latency_ms=verdict.latency_ms,
            )
        )
        if self._langfuse is not None and quality is not None and job.turn.trace_id:
            self._langfuse.push_score(
                trace_id=job.turn.trace_id,
                metric=metric.name,
                quality=quality,
                reasoning=verdict.reasoning,
                metadata={
                    "prompt_version": metric.prompt_version,
                    "judge_model": verdict.judge_model,
                    "score": verdict.score,
                    "run_id": str(run_id),
                },
            )


async def _earlier_scores(turns: list[TurnToJudge], metrics: list[EvalMetric]) -> dict[tuple[str, str], float]:
    """(turn key, metric) -> the latest quality given by the metric's current prompt version."""
    versions = {metric.name: metric.prompt_version for metric in metrics}
    turn_ids = [turn.turn_id for turn in turns if turn.turn_id is not None]
    trace_ids = [turn.trace_id for turn in turns if turn.turn_id is None and turn.trace_id]
    found: dict[tuple[str, str], tuple[datetime, float]] = {}
    for column, keys in ((EvalScore.turn, turn_ids), (EvalScore.trace_id, trace_ids)):
        for start in range(0, len(keys), _LOOKUP_CHUNK):
            rows = await EvalScore.select(
                EvalScore.turn,
                EvalScore.trace_id,
                EvalScore.metric,
                EvalScore.prompt_version,
                EvalScore.quality,
                EvalScore.created_at,
            ).where(
                column.is_in(keys[start : start + _LOOKUP_CHUNK])
                & EvalScore.metric.is_in(list(versions))
                & EvalScore.quality.is_not_null()
                & EvalScore.side.is_null()  # a replay's scores judged other answers
            )
            for row in rows:
                if versions[row["metric"]] != row["prompt_version"]:
                    continue
                key = str(row["turn"]) if row["turn"] is not None else f"trace:{row['trace_id']}"
                previous = found.get((key, row["metric"]))
                if previous is None or row["created_at"] > previous[0]:
                    found[(key, row["metric"])] = (row["created_at"], row["quality"])
    return {key: quality for key, (_, quality) in found.items()}


async def scores_of_turns(turn_ids: list[uuid.UUID]) -> list[dict[str, Any]]:
    """Every verdict on these turns (an export of a user's data), oldest first."""
    found: list[dict[str, Any]] = []
    for start in range(0, len(turn_ids), _LOOKUP_CHUNK):
        found += (
            await EvalScore.select(
                EvalScore.id,
                EvalScore.turn.as_alias("turn_id"),
                EvalScore.metric,
                EvalScore.prompt_version,
                EvalScore.judge_model,
                EvalScore.score,
                EvalScore.quality,
                EvalScore.reasoning,
                EvalScore.error,
                EvalScore.created_at,
            )
            .where(EvalScore.turn.is_in(turn_ids[start : start + _LOOKUP_CHUNK]))
            .order_by(EvalScore.created_at)
        )
    return found


async def forget_sessions_in_runs(session_ids: list[uuid.UUID]) -> int:
    """Deleted sessions leave the records of the runs that judged them (`agentctl eval --session`): the run keeps its
    summary, not whose session it was. How many runs named one."""
    if not session_ids:
        return 0
    updated = await EvalRun.raw(
        "UPDATE eval_runs SET options = jsonb_set(options, ARRAY['session_id'], 'null'::jsonb) "
        "WHERE options->>'session_id' = ANY({}::text[]) RETURNING id",
        [str(session_id) for session_id in session_ids],
    )
    return len(updated)


def _options_record(options: EvalOptions) -> dict[str, object]:
    return {
        "metrics": {metric.name: metric.prompt_version for metric in options.metrics},
        "sample": options.sample,
        "seed": options.seed,
        "limit": options.limit,
        "session_id": options.session_id,
        "rescore": options.rescore,
        "concurrency": options.concurrency,
        "gate": options.gate,
    }
