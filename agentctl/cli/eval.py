"""`agentctl eval`: LLM-as-a-judge over recent conversations, as nightly scores and as a gate before a deploy.

Exit codes: 0 scores or cases written (or the window had no turns), 1 the gate failed (or the judge agreed too
little with the labels), 2 a usage or configuration error.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from agentctl.cli.context import settings_of
from agentctl.cli.output import SinceOption, UntilOption, operator_database, stdout_console, usage_error
from agentctl.config import Settings

if TYPE_CHECKING:
    from collections.abc import Callable
    from datetime import datetime

    from prometheus_client import CollectorRegistry

    from server.evaluation.agreement import Agreement, LabelledAnswer
    from server.evaluation.dataset import DatasetExport
    from server.evaluation.definitions import EvalMetric
    from server.evaluation.judge import Judge
    from server.evaluation.report import EvalReport
    from server.evaluation.service import EvalOptions
    from server.evaluation.sources import TurnToJudge
    from server.evaluation.window import Window
    from server.llm.registry import ModelRegistry

app = typer.Typer(help="Judge recorded conversations with a model: scores, reports and a quality gate.")


@app.callback(invoke_without_command=True)
def evaluate(
    ctx: typer.Context,
    since: SinceOption = "24h",
    until: UntilOption = None,
    sample: Annotated[
        int | None, typer.Option("--sample", min=1, help="Judge this many turns of the window, drawn at random.")
    ] = None,
    seed: Annotated[
        int, typer.Option("--seed", help="Seed of --sample: the same window and seed, the same turns.")
    ] = 0,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Take at most the newest N turns.")] = None,
    metric: Annotated[
        list[str] | None, typer.Option("--metric", help="Metric to judge (repeatable); default: every metric file.")
    ] = None,
    session: Annotated[str | None, typer.Option("--session", help="Only the turns of this session id.")] = None,
    rescore: Annotated[
        bool, typer.Option("--rescore", help="Judge again turns already scored by the same metric prompt version.")
    ] = False,
    concurrency: Annotated[
        int | None,
        typer.Option("--concurrency", min=1, max=256, help="Judge calls at once.", show_default="evals.concurrency"),
    ] = None,
    source: Annotated[
        str, typer.Option("--source", help="database (the chat_turns records) or langfuse (traced turns).")
    ] = "database",
    fail_under: Annotated[
        str | None,
        typer.Option(
            "--fail-under", help="Gate: METRIC=MIN,... on mean quality (higher is better); exit 1 when any is below."
        ),
    ] = None,
    report: Annotated[
        Path | None,
        typer.Option("--report", help="JSON report file.", show_default="<data dir>/evals/eval-<run id>.json"),
    ] = None,
    metrics_file: Annotated[
        Path | None,
        typer.Option("--metrics-file", help="Also write the run's gauges here (Prometheus textfile format)."),
    ] = None,
) -> None:
    """Judge the turns of a window with each metric; skip turns already scored unless --rescore."""
    if ctx.invoked_subcommand is not None:
        return
    from server.evaluation.report import GateSpecError, parse_gate
    from server.evaluation.service import EvalOptions, Source
    from server.evaluation.window import WindowError, parse_window
    from server.observability.logging import configure_logging

    settings = settings_of(ctx)
    configure_logging(settings)
    try:
        window = parse_window(since, until)
    except WindowError as error:
        usage_error(str(error))
    if source not in ("database", "langfuse"):
        usage_error(f"--source must be database or langfuse, not {source!r}")
    chosen_source: Source = "langfuse" if source == "langfuse" else "database"
    if source == "langfuse" and not settings.observability.tracing_enabled:
        usage_error("--source langfuse needs Langfuse configured: set LANGFUSE_PUBLIC_KEY and LANGFUSE_SECRET_KEY")
    if session is not None and source == "database":
        try:
            uuid.UUID(session)
        except ValueError:
            usage_error(f"--session {session!r} is not a session id (a UUID)")
    metrics = _chosen_metrics(settings, metric)
    try:
        gate = parse_gate(fail_under, {m.name for m in metrics})
    except GateSpecError as error:
        usage_error(str(error))
    options = EvalOptions(
        window=window,
        metrics=metrics,
        source=chosen_source,
        sample=sample,
        seed=seed,
        limit=limit,
        session_id=session,
        rescore=rescore,
        concurrency=concurrency or settings.evals.concurrency,
        gate=gate,
    )
    result = asyncio.run(_run(settings, options))
    console = stdout_console()
    if result.turns_selected == 0:
        typer.echo(f"no turns to evaluate from {window.describe()}: nothing scored")
        return
    console.print(_summary_table(result))
    path = report or settings.data_dir / "evals" / f"eval-{result.run_id}.json"
    _write_json(path, result.as_dict())
    typer.echo(f"run {result.run_id}: {result.turns_selected} turns, report {path}")
    if metrics_file is not None:
        _write_gauges(metrics_file, result)
    failures = result.gate.get("failures", [])
    if failures:
        for line in failures:
            typer.echo(f"agentctl: gate failed: {line}", err=True)
        raise typer.Exit(1)
    if gate:
        typer.echo("gate passed: " + ", ".join(f"{name} >= {value:g}" for name, value in gate.items()))


@app.command("agreement")
def agreement(
    ctx: typer.Context,
    labelled_set: Annotated[Path, typer.Argument(help="JSON Lines: {metric, input, output, label: good|bad}.")],
    metric: Annotated[list[str] | None, typer.Option("--metric", help="Only this metric (repeatable).")] = None,
    concurrency: Annotated[
        int | None,
        typer.Option("--concurrency", min=1, max=256, help="Judge calls at once.", show_default="evals.concurrency"),
    ] = None,
    min_agreement: Annotated[
        float | None, typer.Option("--min-agreement", min=0.0, max=1.0, help="Exit 1 when a metric agrees less.")
    ] = None,
    report: Annotated[Path | None, typer.Option("--report", help="Also write the results as JSON here.")] = None,
) -> None:
    """Measure how often the judge agrees with human good/bad labels (the first number to check for a judge)."""
    from server.evaluation.agreement import LabelledSetError, read_labelled_set
    from server.observability.logging import configure_logging

    settings = settings_of(ctx)
    configure_logging(settings)
    try:
        answers = read_labelled_set(labelled_set)
    except LabelledSetError as error:
        usage_error(str(error))
    metrics = {m.name: m for m in _chosen_metrics(settings, metric)}
    unknown = sorted({answer.metric for answer in answers} - set(metrics))
    if unknown and not metric:
        usage_error(f"{labelled_set} labels metrics with no metric file: {', '.join(unknown)}")
    results = asyncio.run(_agree(settings, metrics, answers, concurrency or settings.evals.concurrency))
    stdout_console().print(_agreement_table(results))
    if report is not None:
        _write_json(report, {name: result.as_dict() for name, result in results.items()})
    if min_agreement is not None:
        low = [r for r in results.values() if r.agreement is None or r.agreement < min_agreement]
        for result in low:
            typer.echo(f"agentctl: {result.metric}: agreement {result.agreement} < {min_agreement:g}", err=True)
        if low:
            raise typer.Exit(1)


@app.command("dataset")
def dataset(
    ctx: typer.Context,
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            help="JSON Lines file of replay cases. It holds users' conversations: it is written readable by you only "
            "(mode 0600); keep it so.",
        ),
    ],
    since: SinceOption = "7d",
    until: UntilOption = None,
    sample: Annotated[
        int | None, typer.Option("--sample", min=1, help="Export this many turns of the window, drawn at random.")
    ] = None,
    seed: Annotated[
        int, typer.Option("--seed", help="Seed of --sample: the same window and seed, the same turns.")
    ] = 0,
    context_messages: Annotated[
        int,
        typer.Option("--context-messages", min=0, help="Messages of the conversation before each turn, at most."),
    ] = 20,
    exclude_user: Annotated[
        list[str] | None,
        typer.Option(
            "--exclude-user",
            help="Leave out this account's turns, by email or id (repeatable): the account `eval replay --server` "
            "runs as, test accounts.",
        ),
    ] = None,
) -> None:
    """Export recorded turns as replay cases for `agentctl eval replay`: each message with the conversation before
    it and what the agent answered (tool calls, model, cost, latency). Resumed runs and turns retention is about to
    delete are left out."""
    from datetime import UTC, datetime

    from server.evaluation.cases import write_cases
    from server.evaluation.window import WindowError, parse_window
    from server.observability.logging import configure_logging

    settings = settings_of(ctx)
    configure_logging(settings)
    now = datetime.now(UTC)
    try:
        window = parse_window(since, until, now=now)
    except WindowError as error:
        usage_error(str(error))
    export = asyncio.run(
        _export(settings, window, now=now, sample=sample, seed=seed, context=context_messages, excluded=exclude_user)
    )
    notes = [f"{export.skipped_resumed} resumed runs left out"]
    if export.clamped_since is not None:
        notes.append(f"window start moved to {export.clamped_since:%Y-%m-%d %H:%M:%S} UTC by retention")
    if not export.cases:
        typer.echo(f"no turns to export from {window.describe()} ({'; '.join(notes)}): nothing written")
        return
    try:
        written = write_cases(output, export.cases)
    except OSError as error:
        usage_error(f"cannot write {output}: {error.strerror or error}")
    context = f"context: {export.context_from_checkpoint} from checkpoints, {export.context_from_records} from records"
    typer.echo(f"{written} cases written to {output} ({'; '.join([context, *notes])})")


async def _export(
    settings: Settings,
    window: Window,
    *,
    now: datetime,
    sample: int | None,
    seed: int,
    context: int,
    excluded: list[str] | None,
) -> DatasetExport:
    from server.evaluation.dataset import checkpoint_reader, export_cases
    from server.users.service import UserNotFoundError, find_user

    async with operator_database(settings) as database, checkpoint_reader(database.url) as checkpoints:
        try:
            excluded_owners = [(await find_user(account)).id for account in excluded or []]
        except UserNotFoundError as error:
            usage_error(f"--exclude-user: {error.detail}")
        return await export_cases(
            since=window.since,
            until=window.until,
            sample=sample,
            seed=seed,
            context_messages=context,
            now=now,
            turn_record_days=settings.retention.turn_record_days,
            checkpoints=checkpoints,
            excluded_owners=excluded_owners,
        )


def _chosen_metrics(settings: Settings, names: list[str] | None) -> list[EvalMetric]:
    from server.evaluation.definitions import MetricFileError, metrics_directory, read_metrics

    try:
        available = read_metrics(metrics_directory(settings.evals.metrics_dir))
    except MetricFileError as error:
        usage_error(error.detail)
    if not names:
        return list(available.values())
    unknown = [name for name in names if name not in available]
    if unknown:
        usage_error(f"unknown metric {', '.join(unknown)}; metric files define: {', '.join(available)}")
    return [available[name] for name in dict.fromkeys(names)]


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.1f}/s" if speed else "-/s", style="progress.data.speed")


class _ProgressBar:
    """The service's Progress, drawn by rich on stderr: done/total, rate and time left."""

    def __init__(self, description: str) -> None:
        self._bar = Progress(
            TextColumn(description),
            BarColumn(),
            MofNCompleteColumn(),
            _RateColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        self._task = self._bar.add_task(description, total=None, start=False)

    def start(self, total: int) -> None:
        self._bar.update(self._task, total=total)
        self._bar.start_task(self._task)
        if total:
            self._bar.start()

    def advance(self) -> None:
        self._bar.advance(self._task)

    def stop(self) -> None:
        self._bar.stop()


def _judge_for(settings: Settings, registry: ModelRegistry) -> Judge:
    from server.evaluation.judge import Judge
    from server.llm.service import LLMService

    return Judge(
        LLMService(registry, settings.llm),
        attempts=settings.evals.judge_attempts,
        max_chars=settings.evals.judge_max_chars,
    )


def _model_registry(settings: Settings) -> ModelRegistry:
    from server.llm.registry import ModelRegistry, NoModelConfiguredError

    try:
        return ModelRegistry.from_settings(settings.llm)
    except NoModelConfiguredError as error:
        usage_error(error.detail)


async def _run(settings: Settings, options: EvalOptions) -> EvalReport:
    from server.evaluation.service import EvaluationService
    from server.evaluation.sources import LangfuseScores, LangfuseUnavailableError, turns_from_database

    try:
        langfuse = await asyncio.to_thread(LangfuseScores.from_settings, settings.observability)
    except LangfuseUnavailableError as error:
        usage_error(error.detail)
    registry = _model_registry(settings)
    progress = _ProgressBar("judging")
    session_uuid = uuid.UUID(options.session_id) if options.session_id and options.source == "database" else None

    async def load_turns() -> list[TurnToJudge]:
        if options.source == "langfuse":
            assert langfuse is not None
            return await langfuse.turns(options.window, session_id=options.session_id, limit=options.limit)
        return await turns_from_database(options.window, session_id=session_uuid, limit=options.limit)

    async with AsyncExitStack() as stack:
        if langfuse is not None:
            stack.push_async_callback(langfuse.close)
        stack.push_async_callback(registry.aclose)
        stack.callback(progress.stop)
        await stack.enter_async_context(operator_database(settings))
        service = EvaluationService(judge=_judge_for(settings, registry), langfuse=langfuse)
        return await service.run(options, load_turns, progress)


async def _agree(
    settings: Settings, metrics: dict[str, EvalMetric], answers: list[LabelledAnswer], concurrency: int
) -> dict[str, Agreement]:
    from server.evaluation.agreement import measure_agreement

    registry = _model_registry(settings)
    progress = _ProgressBar("judging labelled answers")
    try:
        return await measure_agreement(
            _judge_for(settings, registry), metrics, answers, concurrency=concurrency, progress=progress
        )
    finally:
        progress.stop()
        await registry.aclose()


def _number(value: float | None, pattern: str = "{:.3f}") -> str:
    return "-" if value is None else pattern.format(value)


def _summary_table(result: EvalReport) -> Table:
    gate = result.gate.get("thresholds", {})
    table = Table(title=f"Quality from {result.window['since']} to {result.window['until']} (higher is better)")
    for header in ("metric", "n", "mean", "p10", "pass rate", "threshold", "judge failures", "judged / reused"):
        table.add_column(header, justify="left" if header == "metric" else "right")
    table.add_column("gate")
    for name, summary in result.metrics.items():
        verdict = ""
        if name in gate:
            ok = summary.mean is not None and summary.mean >= gate[name]
            verdict = f"[green]>= {gate[name]:g} ok[/]" if ok else f"[red]< {gate[name]:g} FAIL[/]"
        table.add_row(
            name,
            str(summary.n),
            _number(summary.mean),
            _number(summary.p10),
            _number(summary.pass_rate, "{:.0%}"),
            f"{summary.threshold:g}",
            str(summary.judge_failures),
            f"{summary.judged_now} / {summary.reused}",
            verdict,
        )
    return table


def _agreement_table(results: dict[str, Agreement]) -> Table:
    table = Table(title="Judge agreement with the labels")
    for header in ("metric", "n", "agreement", "mean quality (good)", "mean quality (bad)", "judge failures"):
        table.add_column(header, justify="left" if header == "metric" else "right")
    for result in results.values():
        table.add_row(
            result.metric,
            str(result.n),
            _number(result.agreement, "{:.0%}"),
            _number(result.good_mean_quality),
            _number(result.bad_mean_quality),
            str(result.judge_failures),
        )
    return table


def _write_json(path: Path, data: object, *, private: bool = False) -> None:
    """``private``: it quotes users' conversations, so only its owner may read it (as a dataset file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if private:
        path.touch(mode=0o600)
        path.chmod(0o600)  # a file that was there already
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _write_gauges(path: Path, result: EvalReport) -> None:
    from datetime import datetime

    from server.evaluation.gauges import EvalGauges

    def fill(registry: CollectorRegistry) -> None:
        EvalGauges(registry).show(
            run_id=result.run_id,
            finished_at=datetime.fromisoformat(result.finished_at),
            summary={name: summary.as_dict() for name, summary in result.metrics.items()},
            gate_passed=result.gate.get("passed"),
        )

    write_textfile(path, fill)


def write_textfile(path: Path, fill: Callable[[CollectorRegistry], None]) -> None:
    """Gauges in the text format of node_exporter's textfile collector, for hosts that run evaluations without a
    server: ``fill`` sets them on a registry of their own."""
    from prometheus_client import CollectorRegistry, write_to_textfile

    registry = CollectorRegistry()
    fill(registry)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_to_textfile(str(path), registry)
