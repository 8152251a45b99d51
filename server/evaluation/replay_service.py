"""A replay run: answer every case with the candidate (and the baseline, when it is replayed too), judge both answers
with every metric and with the pairwise judge in both orders, and compare.

Everything is stored as it happens (answers in eval_replay_answers, scores in eval_scores with their case and side,
verdicts in eval_pairwise), and the report is computed from what is stored. So a replay that stops (Ctrl-C, a crash,
a lost connection) resumes where it was: running the same command again finds the unfinished run with the same
fingerprint (dataset, candidate, baseline, metrics, judge prompts) and does only what is missing.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from loguru import logger

from server.chat.records import existing_turn_ids
from server.evaluation.cases import ReplayCase, ReplayedAnswer
from server.evaluation.comparison import (
    SIDES,
    CaseAnswers,
    MetricComparison,
    PairwiseSummary,
    Side,
    SideUsage,
    candidate_points,
    compare_metric,
    regression_failures,
    summarise_pairwise,
    summarise_usage,
)
from server.evaluation.definitions import EvalMetric
from server.evaluation.gauges import REPLAY_SOURCE
from server.evaluation.judge import Judge, Verdict
from server.evaluation.replay import Replayer, recorded_answer
from server.evaluation.service import Progress, for_each_bounded
from server.evaluation.tables import EvalPairwise, EvalReplayAnswer, EvalRun, EvalScore

_CONTEXT_LINE_CHARS = 2000


@dataclass(frozen=True)
class ReplayOptions:
    metrics: list[EvalMetric]
    pairwise_instructions: str
    pairwise_version: str
    fingerprint: str
    description: dict[str, Any]  # what the run compared, for the record and the report (no secret values)
    concurrency: int = 4
    gate: dict[str, float] = field(default_factory=dict)
    seed: int = 0  # of the bootstrap
    fresh: bool = False  # start a new run even when an unfinished one has the same fingerprint


@dataclass
class ReplayReport:
    run_id: str
    resumed: bool
    cases: int
    withdrawn: int  # cases whose recorded turn was deleted since the export (by its user, or retention)
    started_at: str
    finished_at: str
    duration_seconds: float
    compared: dict[str, Any]
    metrics: dict[str, MetricComparison]
    pairwise: PairwiseSummary
    usage: dict[Side, SideUsage]
    judge_models: list[str]
    gate: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["metrics"] = {name: summary.as_dict() for name, summary in self.metrics.items()}
        data["pairwise"] = self.pairwise.as_dict()
        data["usage"] = {side: usage.as_dict() for side, usage in self.usage.items()}
        return data

    def summary(self) -> dict[str, Any]:
        """What eval_runs.summary keeps (and the server's gauges show): the numbers, not the answers."""
        metrics = {}
        for name, found in self.metrics.items():
            numbers = found.as_dict()
            numbers.pop("worst_cases")
            metrics[name] = numbers
        return {
            "kind": REPLAY_SOURCE,
            "cases": self.cases,
            "metrics": metrics,
            "pairwise": self.pairwise.as_dict(),
            "usage": {side: usage.as_dict() for side, usage in self.usage.items()},
        }


class ReplayService:
    def __init__(self, *, judge: Judge, candidate: Replayer, baseline: Replayer | None) -> None:
        self._judge = judge
        self._candidate = candidate
        self._baseline = baseline

    async def run(self, options: ReplayOptions, cases: list[ReplayCase], progress: Progress) -> ReplayReport:
        started = datetime.now(UTC)
        clock = time.perf_counter()
        run, resumed = await self._run_to_use(options, len(cases))
        try:
            cases, withdrawn, kept_turns = await _without_withdrawn(cases)
            done = await _stored(run.id)
            todo = [case for case in cases if not done.complete(case.id, options)]
            progress.start(len(cases))
            for _ in range(len(cases) - len(todo)):
                progress.advance()

            async def replay_case(case: ReplayCase) -> None:
                turn = case.turn_id if case.turn_id in kept_turns else None
                await self._replay_case(run.id, case, turn, done, options)
                progress.advance()

            await for_each_bounded(todo, options.concurrency, replay_case)
        except BaseException as error:
            status = "interrupted" if isinstance(error, KeyboardInterrupt | asyncio.CancelledError) else "failed"
            await EvalRun.update({EvalRun.status: status, EvalRun.finished_at: datetime.now(UTC)}).where(
                EvalRun.id == run.id
            )
            raise
        report = await self._report(run.id, cases, withdrawn, resumed, options, started, clock)
        await EvalRun.update(
            {
                EvalRun.status: "finished",
                EvalRun.finished_at: datetime.now(UTC),
                EvalRun.turns_selected: len(cases),
                EvalRun.summary: report.summary(),
                EvalRun.gate_passed: report.gate.get("passed"),
            }
        ).where(EvalRun.id == run.id)
        return report

    async def _run_to_use(self, options: ReplayOptions, cases: int) -> tuple[EvalRun, bool]:
        if not options.fresh:
            unfinished = (
                await EvalRun.select(EvalRun.id, EvalRun.options)
                .where((EvalRun.source == REPLAY_SOURCE) & (EvalRun.status != "finished"))
                .order_by(EvalRun.created_at, ascending=False)
                .output(load_json=True)
            )
            found = next((row for row in unfinished if row["options"].get("fingerprint") == options.fingerprint), None)
            earlier = await EvalRun.objects().get(EvalRun.id == found["id"]) if found is not None else None
            if earlier is not None:
                await EvalRun.update({EvalRun.status: "running", EvalRun.finished_at: None}).where(
                    EvalRun.id == earlier.id
                )
                return earlier, True
        run = EvalRun(
            id=uuid.uuid4(),
            source=REPLAY_SOURCE,
            options={
                "fingerprint": options.fingerprint,
                **options.description,
                "metrics": {metric.name: metric.prompt_version for metric in options.metrics},
                "pairwise_prompt_version": options.pairwise_version,
                "concurrency": options.concurrency,
                "gate": options.gate,
                "cases": cases,
            },
        )
        await run.save()
        return run, False

    async def _replay_case(
        self, run_id: uuid.UUID, case: ReplayCase, turn: uuid.UUID | None, done: _Stored, options: ReplayOptions
    ) -> None:
        answers: dict[Side, ReplayedAnswer] = {}
        for side in SIDES:
            stored = done.answers.get((case.id, side))
            if stored is not None:
                answers[side] = stored
                continue
            answer = await self._answer(side, case)
            await EvalReplayAnswer.insert(
                EvalReplayAnswer(
                    id=uuid.uuid4(),
                    run=run_id,
                    turn=turn,
                    case_key=case.id,
                    side=side,
                    answer=answer.answer,
                    status=answer.status,
                    error=answer.error,
                    model=answer.model,
                    input_tokens=answer.input_tokens,
                    output_tokens=answer.output_tokens,
                    cost_usd=answer.cost_usd,
                    latency_ms=answer.latency_ms,
                    tool_calls=answer.tool_calls,
                )
            )
            answers[side] = answer
        context = conversation_text(case)
        # The same answer on both sides gets one verdict for both: a judge's noise cannot make a change of nothing.
        baseline, candidate = answers["baseline"], answers["candidate"]
        same = baseline.answer == candidate.answer and baseline.status == candidate.status
        jobs = []
        for metric in options.metrics:
            sides = [side for side in SIDES if not done.scored(case.id, side, metric.name)]
            groups = [sides] if same else [[side] for side in sides]
            jobs += [
                self._score(run_id, case, turn, group, metric, answers[group[0]], context) for group in groups if group
            ]
        jobs += [
            self._prefer(run_id, case, turn, first, answers, context, options, same=same)
            for first in SIDES
            if not done.preferred(case.id, first)
        ]
        await asyncio.gather(*jobs)

    async def _answer(self, side: Side, case: ReplayCase) -> ReplayedAnswer:
        if side == "candidate":
            return await self._candidate.answer(case)
        if self._baseline is not None:
            return await self._baseline.answer(case)
        return recorded_answer(case)

    async def _score(
        self,
        run_id: uuid.UUID,
        case: ReplayCase,
        turn: uuid.UUID | None,
        sides: list[Side],
        metric: EvalMetric,
        answer: ReplayedAnswer,
        context: str,
    ) -> None:
        """Judge ``answer`` by ``metric`` and store the verdict for each of ``sides`` (both when they gave it)."""
        if answer.status == "error":  # no answer: the lowest quality, without asking the judge
            lowest = 0.0 if metric.higher_is_better else 1.0
            verdict = Verdict(lowest, f"no answer: {answer.error}", None, None, 0.0)
        else:
            verdict = await self._judge.judge(metric, user_message=case.input, answer=answer.answer, context=context)
            if verdict.error:
                logger.debug("judge failure on case {} ({}) for {}: {}", case.id, sides, metric.name, verdict.error)
        await EvalScore.insert(
            *(
                EvalScore(
                    id=uuid.uuid4(),
                    run=run_id,
                    turn=turn,
                    case_key=case.id,
                    side=side,
                    metric=metric.name,
                    prompt_version=metric.prompt_version,
                    judge_model=verdict.judge_model,
                    score=verdict.score,
                    quality=metric.quality(verdict.score) if verdict.score is not None else None,
                    reasoning=verdict.reasoning,
                    error=verdict.error,
                    latency_ms=verdict.latency_ms,
                )
                for side in sides
            )
        )

    async def _prefer(
        self,
        run_id: uuid.UUID,
        case: ReplayCase,
        turn: uuid.UUID | None,
        first: Side,
        answers: dict[Side, ReplayedAnswer],
        context: str,
        options: ReplayOptions,
        *,
        same: bool,
    ) -> None:
        second: Side = "candidate" if first == "baseline" else "baseline"
        failed = {side for side, answer in answers.items() if answer.status == "error"}
        winner: str | None
        if same:
            winner, reasoning, error, model, latency = "tie", "the same answer", None, None, 0.0
        elif failed:  # an answer that failed loses without a judge (both failed: a tie)
            winner = "tie" if len(failed) == 2 else ("B" if first in failed else "A")
            reasoning, error, model, latency = "an answer failed", None, None, 0.0
        else:
            verdict = await self._judge.compare(
                options.pairwise_instructions,
                user_message=case.input,
                context=context,
                answer_a=answers[first].answer,
                answer_b=answers[second].answer,
            )
            winner, reasoning, error = verdict.winner, verdict.reasoning, verdict.error
            model, latency = verdict.judge_model, verdict.latency_ms
        await EvalPairwise.insert(
            EvalPairwise(
                id=uuid.uuid4(),
                run=run_id,
                turn=turn,
                case_key=case.id,
                first=first,
                winner=_side_of(winner, first),
                prompt_version=options.pairwise_version,
                judge_model=model,
                reasoning=reasoning,
                error=error,
                latency_ms=latency,
            )
        )

    async def _report(
        self,
        run_id: uuid.UUID,
        cases: list[ReplayCase],
        withdrawn: int,
        resumed: bool,
        options: ReplayOptions,
        started: datetime,
        clock: float,
    ) -> ReplayReport:
        keys = {case.id for case in cases}
        stored = await _stored(run_id)
        answers = {
            case.id: CaseAnswers(
                case_key=case.id,
                user_message=case.input,
                baseline=stored.answer_text(case.id, "baseline"),
                candidate=stored.answer_text(case.id, "candidate"),
            )
            for case in cases
        }
        metrics = {}
        for metric in options.metrics:
            qualities: dict[Side, dict[str, float]] = {"baseline": {}, "candidate": {}}
            failures: dict[Side, int] = {"baseline": 0, "candidate": 0}
            for (key, side, name), quality in stored.scores.items():
                if name != metric.name or key not in keys:
                    continue
                if quality is None:
                    failures[side] += 1
                else:
                    qualities[side][key] = quality
            metrics[metric.name] = compare_metric(
                metric.name, metric.prompt_version, qualities, failures, answers, seed=options.seed
            )
        verdicts: dict[str, dict[Side, float]] = defaultdict(dict)
        pairwise_failures = 0
        for (key, first), winner in stored.pairwise.items():
            if key not in keys:
                continue
            if winner is None:
                pairwise_failures += 1
            else:
                verdicts[key][first] = candidate_points(winner)
        pairwise = summarise_pairwise(options.pairwise_version, verdicts, pairwise_failures, seed=options.seed)
        usage = {
            side: summarise_usage([answer for (key, s), answer in stored.answers.items() if s == side and key in keys])
            for side in SIDES
        }
        gate_failures = regression_failures(metrics, pairwise, options.gate)
        return ReplayReport(
            run_id=str(run_id),
            resumed=resumed,
            cases=len(cases),
            withdrawn=withdrawn,
            started_at=started.isoformat(),
            finished_at=datetime.now(UTC).isoformat(),
            duration_seconds=round(time.perf_counter() - clock, 3),
            compared=options.description,
            metrics=metrics,
            pairwise=pairwise,
            usage=usage,
            judge_models=sorted(stored.judge_models),
            gate={"bounds": options.gate, "failures": gate_failures, "passed": not gate_failures}
            if options.gate
            else {},
        )


@dataclass
class _Stored:
    """What a run has stored so far, keyed by case (and side, metric, order)."""

    answers: dict[tuple[str, Side], ReplayedAnswer] = field(default_factory=dict)
    scores: dict[tuple[str, Side, str], float | None] = field(default_factory=dict)
    pairwise: dict[tuple[str, Side], str | None] = field(default_factory=dict)
    judge_models: set[str] = field(default_factory=set)

    def answer_text(self, key: str, side: Side) -> str:
        found = self.answers.get((key, side))
        return found.answer if found is not None else ""

    def scored(self, key: str, side: Side, metric: str) -> bool:
        return self.scores.get((key, side, metric)) is not None

    def preferred(self, key: str, first: Side) -> bool:
        return self.pairwise.get((key, first)) is not None

    def complete(self, key: str, options: ReplayOptions) -> bool:
        return (
            all((key, side) in self.answers for side in SIDES)
            and all(self.scored(key, side, metric.name) for metric in options.metrics for side in SIDES)
            and all(self.preferred(key, side) for side in SIDES)
        )


async def _stored(run_id: uuid.UUID) -> _Stored:
    """The run's answers, scores and verdicts. A judge failure is not kept as done: a resumed run asks again."""
    stored = _Stored()
    for row in await EvalReplayAnswer.select().where(EvalReplayAnswer.run == run_id).output(load_json=True):
        side: Side = row["side"]
        stored.answers[(row["case_key"], side)] = ReplayedAnswer(
            answer=row["answer"],
            status=row["status"],
            error=row["error"],
            model=row["model"],
            input_tokens=row["input_tokens"],
            output_tokens=row["output_tokens"],
            cost_usd=row["cost_usd"],
            latency_ms=row["latency_ms"],
            tool_calls=row["tool_calls"],
        )
    scores = await EvalScore.select(
        EvalScore.case_key, EvalScore.side, EvalScore.metric, EvalScore.quality, EvalScore.judge_model
    ).where(EvalScore.run == run_id)
    for row in scores:  # a judge failure is retried on resume; a later verdict replaces it
        key = (row["case_key"], row["side"], row["metric"])
        if stored.scores.get(key) is None:
            stored.scores[key] = row["quality"]
        if row["judge_model"]:
            stored.judge_models.add(row["judge_model"])
    verdicts = await EvalPairwise.select(
        EvalPairwise.case_key, EvalPairwise.first, EvalPairwise.winner, EvalPairwise.judge_model
    ).where(EvalPairwise.run == run_id)
    for row in verdicts:
        if stored.pairwise.get((row["case_key"], row["first"])) is None:
            stored.pairwise[(row["case_key"], row["first"])] = row["winner"]
        if row["judge_model"]:
            stored.judge_models.add(row["judge_model"])
    return stored


async def _without_withdrawn(cases: list[ReplayCase]) -> tuple[list[ReplayCase], int, set[uuid.UUID]]:
    """The cases still allowed, how many were withdrawn, and the recorded turns that exist here.

    A case exported from this deployment names its turn; a turn that is gone was deleted with its user or session,
    or by retention, since the export, and its case is not replayed. A dataset none of whose turns exist here came
    from another deployment (or was written by hand) and is replayed whole."""
    named = [case.turn_id for case in cases if case.turn_id is not None]
    kept = await existing_turn_ids(named) if named else set()
    if not kept:
        return cases, 0, set()
    allowed = [case for case in cases if case.turn_id is None or case.turn_id in kept]
    return allowed, len(cases) - len(allowed), kept


def conversation_text(case: ReplayCase) -> str:
    """The case's conversation before its message, as the judge reads it."""
    lines = []
    for message in case.context:
        if message.role == "tool":
            lines.append(f"[tool {message.name or ''} result] {message.content[:_CONTEXT_LINE_CHARS]}")
        elif message.tool_calls:
            names = ", ".join(call.name for call in message.tool_calls)
            lines.append(f"assistant: {message.content} [called {names}]".replace(":  [", ": ["))
        else:
            lines.append(f"{message.role}: {message.content[:_CONTEXT_LINE_CHARS]}")
    return "\n".join(lines)


def _side_of(winner: str | None, first: Side) -> str | None:
    """The judge's letter as the side it names (A is the side shown first)."""
    if winner is None or winner == "tie":
        return winner
    second: Side = "candidate" if first == "baseline" else "baseline"
    return first if winner == "A" else second
