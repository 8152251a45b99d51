"""`agentctl eval replay`: a gate before a deploy. Recorded conversations are answered again by a candidate
configuration (prompts, models, agent settings), both answers are judged, and the report says what got worse.

Exit codes, as `agentctl eval`: 0 the comparison was written (and the gate passed), 1 the gate failed, 2 a usage or
configuration error (a dataset line that does not parse among them).
"""

from __future__ import annotations

import asyncio
import hashlib
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from agentctl.cli.context import settings_of, variant_settings
from agentctl.cli.eval import (
    _chosen_metrics,
    _judge_for,
    _model_registry,
    _number,
    _ProgressBar,
    _write_json,
    write_textfile,
)
from agentctl.cli.output import operator_database, stdout_console, usage_error
from agentctl.config import Settings, SettingsError

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from server.evaluation.cases import ReplayCase
    from server.evaluation.replay import Replayer, ToolStubs
    from server.evaluation.replay_service import ReplayOptions, ReplayReport

_SettingsPairs = Annotated[
    list[str] | None,
    typer.Option(
        "--settings",
        help="A setting of the candidate as an environment variable, NAME=VALUE (repeatable): "
        "AGENTCTL_AGENT__MAX_STEPS=4, AGENTCTL_LLM__ROLES__CHAT='[\"big\"]'...",
    ),
]


def replay(
    ctx: typer.Context,
    dataset: Annotated[Path, typer.Argument(help="JSON Lines of cases, from `agentctl eval dataset` or by hand.")],
    prompts: Annotated[
        Path | None, typer.Option("--prompts", help="The candidate's prompts folder (system.md...).")
    ] = None,
    models: Annotated[Path | None, typer.Option("--models", help="The candidate's models file (TOML).")] = None,
    settings_pairs: _SettingsPairs = None,
    tool_stubs: Annotated[
        Path | None,
        typer.Option(
            "--tool-stubs",
            help="TOML or JSON: [tools.<name>] result=, error= or recorded=true. Stubbed tools never run; tools that "
            "need approval and have no stub are refused as a person would refuse them.",
        ),
    ] = None,
    baseline_prompts: Annotated[
        Path | None,
        typer.Option("--baseline-prompts", help="Replay a baseline too, with this prompts folder (else: recorded)."),
    ] = None,
    baseline_models: Annotated[
        Path | None, typer.Option("--baseline-models", help="Replay a baseline too, with this models file.")
    ] = None,
    baseline_settings: Annotated[
        list[str] | None,
        typer.Option("--baseline-settings", help="Replay a baseline too, with this setting (NAME=VALUE, repeatable)."),
    ] = None,
    server: Annotated[
        str | None,
        typer.Option(
            "--server",
            help="Replay the candidate on this running server (its /v1 API, as the account of AGENTCTL_API_KEY) "
            "instead of in this process.",
        ),
    ] = None,
    concurrency: Annotated[
        int | None,
        typer.Option(
            "--concurrency", min=1, max=64, help="Cases replayed at once.", show_default="evals.replay_concurrency"
        ),
    ] = None,
    metric: Annotated[
        list[str] | None, typer.Option("--metric", help="Metric to judge (repeatable); default: every metric file.")
    ] = None,
    fail_on_regression: Annotated[
        str | None,
        typer.Option(
            "--fail-on-regression",
            help="Gate: METRIC=MARGIN,... fails when a metric's quality dropped by more than MARGIN and the drop is "
            "significant (its 95% CI below 0); pairwise=MIN fails when the candidate's win rate is below MIN.",
        ),
    ] = None,
    fresh: Annotated[
        bool, typer.Option("--fresh", help="Start over even if an unfinished replay of the same comparison exists.")
    ] = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the bootstrap confidence intervals.")] = 0,
    report: Annotated[
        Path | None,
        typer.Option("--report", help="JSON report file.", show_default="<data dir>/evals/replay-<run id>.json"),
    ] = None,
    metrics_file: Annotated[
        Path | None,
        typer.Option("--metrics-file", help="Also write the replay's gauges here (Prometheus textfile format)."),
    ] = None,
) -> None:
    """Answer recorded cases again with a candidate configuration, judge baseline and candidate, compare, gate."""
    from server.evaluation.cases import DatasetError, dataset_digest, read_cases
    from server.evaluation.comparison import parse_regression_gate
    from server.evaluation.definitions import prompt_version_of
    from server.evaluation.replay import StubFileError, ToolStubs
    from server.evaluation.replay_service import ReplayOptions
    from server.evaluation.report import GateSpecError
    from server.observability.logging import configure_logging

    settings = settings_of(ctx)
    configure_logging(settings)
    try:
        cases = read_cases(dataset)
    except DatasetError as error:
        usage_error(error.detail)
    replays_baseline = bool(baseline_prompts or baseline_models or baseline_settings)
    if not replays_baseline and (unanswered := next((case for case in cases if case.output is None), None)):
        usage_error(
            f"{dataset}: case {unanswered.id} has no recorded output to compare with; "
            "replay a baseline too (--baseline-prompts, --baseline-models or --baseline-settings)"
        )
    if server is not None and tool_stubs is not None:
        usage_error("--tool-stubs applies to a replay in this process; a --server runs its own tools")
    if server is not None and settings.api_key is None:
        usage_error("--server needs an API key with the chat scope: set AGENTCTL_API_KEY")
    for folder in (prompts, baseline_prompts):
        if folder is not None and not (folder / "system.md").is_file():
            usage_error(f"{folder} has no system.md: a prompts folder holds the agent's system.md")
    candidate_spec = _SideSpec("candidate", prompts, models, settings_pairs or [], tool_stubs, server)
    baseline_spec = _SideSpec("baseline", baseline_prompts, baseline_models, baseline_settings or [], tool_stubs, None)
    candidate = candidate_spec.settings(ctx) if server is None else settings
    baseline = baseline_spec.settings(ctx) if replays_baseline else None
    stubs = None
    if tool_stubs is not None:
        try:
            stubs = ToolStubs.read(tool_stubs)
        except StubFileError as error:
            usage_error(error.detail)
    metrics = _chosen_metrics(settings, metric)
    try:
        gate = parse_regression_gate(fail_on_regression, {m.name for m in metrics})
    except GateSpecError as error:
        usage_error(str(error))
    pairwise_path = _pairwise_prompt(settings)
    try:
        pairwise_raw = pairwise_path.read_bytes()
        pairwise_text = pairwise_raw.decode("utf-8").strip()
    except (OSError, UnicodeDecodeError) as error:
        usage_error(f"pairwise judge prompt {pairwise_path}: cannot be read: {error}")
    pairwise_version = prompt_version_of(pairwise_raw)
    digest = dataset_digest(cases)
    description = {
        "dataset": str(dataset),
        "dataset_digest": digest,
        "candidate": candidate_spec.described(),
        "baseline": baseline_spec.described() if replays_baseline else "recorded",
    }
    fingerprint = hashlib.sha256()
    for part in (
        digest,
        candidate_spec.content_digest(),
        baseline_spec.content_digest() if replays_baseline else "recorded",
        *(f"{m.name}:{m.prompt_version}" for m in metrics),
        pairwise_version,
    ):
        fingerprint.update(part.encode() + b"\x00")
    options = ReplayOptions(
        metrics=metrics,
        pairwise_instructions=pairwise_text,
        pairwise_version=pairwise_version,
        fingerprint=fingerprint.hexdigest(),
        description=description,
        concurrency=concurrency or settings.evals.replay_concurrency,
        gate=gate,
        seed=seed,
        fresh=fresh,
    )
    result = asyncio.run(_replay(settings, options, cases, candidate, baseline, stubs, server))
    _print(result)
    path = report or settings.data_dir / "evals" / f"replay-{result.run_id}.json"
    _write_json(path, result.as_dict(), private=True)  # the worst cases quote users' messages
    resumed = " (resumed)" if result.resumed else ""
    typer.echo(f"replay {result.run_id}{resumed}: {result.cases} cases, report {path}")
    if metrics_file is not None:
        _write_gauges(metrics_file, result)
    failures = result.gate.get("failures", [])
    if failures:
        for line in failures:
            typer.echo(f"agentctl: gate failed: {line}", err=True)
        raise typer.Exit(1)
    if gate:
        typer.echo("gate passed: " + ", ".join(f"{name}={value:g}" for name, value in gate.items()))


@dataclass(frozen=True)
class _SideSpec:
    """One side of the comparison as the flags give it: a prompts folder, a models file, settings as NAME=VALUE
    (over this invocation's settings), the tool stubs, or a server."""

    name: str  # candidate or baseline
    prompts: Path | None
    models: Path | None
    pairs: list[str]
    stubs: Path | None
    server: str | None

    def settings(self, ctx: typer.Context) -> Settings:
        variables = {}
        for pair in self.pairs:
            key, equals, value = pair.partition("=")
            if not equals or not key.strip():
                flag = "--baseline-settings" if self.name == "baseline" else "--settings"
                usage_error(f"{flag} {pair!r} must be NAME=VALUE")
            variables[key.strip()] = value
        try:
            return variant_settings(ctx, prompts_dir=self.prompts, models_file=self.models, variables=variables)
        except SettingsError as error:
            usage_error(f"the {self.name}'s settings: {error.problems[0]}")

    def described(self) -> dict[str, object]:
        """What the side is, for the record: paths and setting names, never setting values (they may be keys)."""
        return {
            "prompts": str(self.prompts) if self.prompts else None,
            "models": str(self.models) if self.models else None,
            "settings": sorted(pair.partition("=")[0].strip() for pair in self.pairs),
            "tool_stubs": str(self.stubs) if self.stubs else None,
            "server": self.server,
        }

    def content_digest(self) -> str:
        """What the side's configuration holds (files' contents, settings' values), hashed: an unfinished replay
        resumes only into the same comparison."""
        hasher = hashlib.sha256()
        files = sorted(p for p in self.prompts.rglob("*") if p.is_file()) if self.prompts else []
        files += [p for p in (self.models, self.stubs) if p is not None]
        for path in files:
            hasher.update(str(path).encode() + b"\x00")
            try:
                hasher.update(path.read_bytes())
            except OSError as error:
                usage_error(f"{path}: cannot be read: {error.strerror or error}")
        for pair in sorted(self.pairs):
            hasher.update(pair.encode() + b"\x00")
        hasher.update((self.server or "").encode())
        return hasher.hexdigest()


def _pairwise_prompt(settings: Settings) -> Path:
    from agentctl.resources import prompts_dir

    return settings.evals.pairwise_prompt or prompts_dir() / "pairwise.md"


async def _replay(
    settings: Settings,
    options: ReplayOptions,
    cases: list[ReplayCase],
    candidate: Settings,
    baseline: Settings | None,
    stubs: ToolStubs | None,
    server: str | None,
) -> ReplayReport:
    from server.evaluation.replay import ServerReplayer, ServerUnusableError
    from server.evaluation.replay_service import ReplayService

    registry = _model_registry(settings)
    progress = _ProgressBar("replaying")
    async with AsyncExitStack() as stack:
        stack.push_async_callback(registry.aclose)
        stack.callback(progress.stop)
        await stack.enter_async_context(operator_database(settings))
        candidate_side: Replayer
        if server is not None:
            assert settings.api_key is not None
            key, deadline = settings.api_key.get_secret_value(), settings.llm.call_deadline_seconds * 2
            try:
                candidate_side = await stack.enter_async_context(ServerReplayer.open(server, key, deadline))
            except ServerUnusableError as error:
                usage_error(f"--server: {error.detail}")
        else:
            candidate_side = await _in_process(stack, candidate, stubs, "candidate")
        baseline_side = await _in_process(stack, baseline, stubs, "baseline") if baseline is not None else None
        service = ReplayService(judge=_judge_for(settings, registry), candidate=candidate_side, baseline=baseline_side)
        return await service.run(options, cases, progress)


async def _in_process(stack: AsyncExitStack, settings: Settings, stubs: ToolStubs | None, side: str) -> Replayer:
    from server.agent.prompts import PromptFileError
    from server.evaluation.replay import InProcessReplayer
    from server.llm.registry import NoModelConfiguredError

    try:
        replayer, unknown = await stack.enter_async_context(InProcessReplayer.open(settings, stubs))
    except (NoModelConfiguredError, PromptFileError) as error:
        usage_error(f"the {side}: {error.detail}")
    if unknown:
        typer.echo(f"agentctl: the {side} has no tool named {', '.join(unknown)} (stubbed in --tool-stubs)", err=True)
    return replayer


def _print(result: ReplayReport) -> None:
    console = stdout_console()
    bounds = result.gate.get("bounds", {})
    failed = {line.split(":", 1)[0] for line in result.gate.get("failures", [])}
    table = Table(title=f"Baseline against candidate on {result.cases} cases (quality: higher is better)")
    for header in ("metric", "n", "baseline", "candidate", "change", "95% CI", "judge failures", "gate"):
        table.add_column(header, justify="left" if header in ("metric", "gate") else "right")

    def verdict(name: str, description: str) -> str:
        if name not in bounds:
            return ""
        return f"[red]{description} FAIL[/]" if name in failed else f"[green]{description} ok[/]"

    for name, found in result.metrics.items():
        interval = "-" if found.ci_low is None else f"{found.ci_low:+.3f} .. {found.ci_high:+.3f}"
        table.add_row(
            name,
            str(found.n),
            _number(found.baseline_mean),
            _number(found.candidate_mean),
            _number(found.difference, "{:+.3f}"),
            interval,
            f"{found.judge_failures.get('baseline', 0)} / {found.judge_failures.get('candidate', 0)}",
            verdict(name, f"drop <= {bounds.get(name, 0):g}"),
        )
    pairwise = result.pairwise
    interval = "-" if pairwise.ci_low is None else f"{pairwise.ci_low:.3f} .. {pairwise.ci_high:.3f}"
    table.add_row(
        "pairwise win rate",
        str(pairwise.n),
        "",
        _number(pairwise.win_rate),
        "",
        interval,
        str(pairwise.judge_failures),
        verdict("pairwise", f">= {bounds.get('pairwise', 0):g}"),
    )
    console.print(table)
    console.print(
        f"pairwise: candidate won {pairwise.wins}, lost {pairwise.losses}, tied {pairwise.ties}; "
        f"{pairwise.position_disagreements} verdicts followed the order the answers were shown in (cancelled)"
    )
    usage = Table(title="Cost and latency")
    for header in ("side", "answers", "errors", "asked the user", "cost (USD)", "tokens in/out", "p50 ms", "p95 ms"):
        usage.add_column(header, justify="left" if header == "side" else "right")
    for side, found_usage in result.usage.items():
        usage.add_row(
            side,
            str(found_usage.answers),
            str(found_usage.errors),
            str(found_usage.asked),
            _number(found_usage.cost_usd, "{:.4f}"),
            f"{found_usage.input_tokens}/{found_usage.output_tokens}",
            _number(found_usage.latency_p50_ms, "{:.0f}"),
            _number(found_usage.latency_p95_ms, "{:.0f}"),
        )
    console.print(usage)
    if result.withdrawn:
        console.print(f"{result.withdrawn} cases left out: their turns were deleted since the export")
    for name, found in result.metrics.items():
        if found.worst_cases:
            worst = found.worst_cases[0]
            console.print(f"{name}: worst case {worst['case']} dropped {worst['drop']:.3f} (all in the report)")


def _write_gauges(path: Path, result: ReplayReport) -> None:
    from datetime import datetime

    from server.evaluation.gauges import ReplayGauges

    def fill(registry: CollectorRegistry) -> None:
        ReplayGauges(registry).show(
            run_id=result.run_id,
            finished_at=datetime.fromisoformat(result.finished_at),
            summary=result.summary(),
            gate_passed=result.gate.get("passed"),
        )

    write_textfile(path, fill)
