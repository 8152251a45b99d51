"""`agentctl loadtest`: Locust, headless in subprocesses, against a server; a report that says whether it held.

The command reads and checks its options; agentctl.loadtest runs Locust (agentctl.loadtest.runner) and reports
(agentctl.loadtest.report).
"""

from __future__ import annotations

import contextlib
import datetime
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from agentctl.cli.usage import PlainUsageErrors
from agentctl.loadtest.runner import DEFAULT_SCENARIO, SCENARIO_FILES, LoadTestError, LoadTestRun, SimulatedDeployment


def _usage_error(message: str) -> typer.Exit:
    typer.echo(f"agentctl: {message}", err=True)
    return typer.Exit(2)


def loadtest(
    ctx: typer.Context,
    host: Annotated[
        str | None, typer.Option("--host", metavar="URL", help="The server under load (not with --simulate).")
    ] = None,
    users: Annotated[int, typer.Option("--users", "-u", min=1, help="Simulated users at full load.")] = 10,
    spawn_rate: Annotated[float, typer.Option("--spawn-rate", "-r", min=0.001, help="Users started per second.")] = 5,
    duration: Annotated[
        str, typer.Option("--duration", "-t", metavar="TIME", help="How long the load lasts: 90, 30s, 5m, 1h.")
    ] = "60s",
    scenario: Annotated[
        str,
        typer.Option("--scenario", help="'chat' (loadtests/chat_scenario.py) or the path of a Locust file."),
    ] = DEFAULT_SCENARIO,
    processes: Annotated[
        int,
        typer.Option("--processes", min=0, help="Locust worker processes under one master (0: a single process)."),
    ] = 0,
    simulate: Annotated[
        bool, typer.Option("--simulate", help="Start the LLM simulator and a server wired to it, on loopback.")
    ] = False,
    ttft_ms: Annotated[float, typer.Option("--ttft", min=0.0, help="With --simulate: time to first token, ms.")] = 0.0,
    tokens_per_second: Annotated[
        float, typer.Option("--tps", min=0.0, help="With --simulate: tokens per second (0: all at once).")
    ] = 0.0,
    server_workers: Annotated[
        int, typer.Option("--server-workers", min=1, help="With --simulate: worker processes of the server.")
    ] = 2,
    replicas: Annotated[
        int,
        typer.Option(
            "--replicas",
            min=1,
            help="With --simulate: servers sharing one PostgreSQL and Redis, behind nginx (compose/nginx/).",
        ),
    ] = 1,
    server_env: Annotated[
        list[str] | None,
        typer.Option("--server-env", metavar="NAME=VALUE", help="With --simulate: a setting of the server (repeat)."),
    ] = None,
    results_dir: Annotated[
        Path, typer.Option("--results-dir", help="Where each run's folder (JSON, HTML, CSV, logs) goes.")
    ] = Path("results"),
    fail_on: Annotated[
        str | None,
        typer.Option(
            "--fail-on",
            metavar="CONDITIONS",
            help="Exit 1 when any holds, e.g. 'p99>5s,errors>1%,shed>20%' (errors: real failures; shed: refused "
            "for load with Retry-After).",
        ),
    ] = None,
) -> None:
    """Load-test the agent with Locust and report, per endpoint, whether it held. Extra arguments after -- go
    to Locust and the scenario (e.g. -- --stream-weight 10 --think-time 0-1 --message-words 200)."""
    from rich.console import Console

    from agentctl.loadtest.report import parse_fail_on

    seconds = _parse_duration(duration)
    if simulate == (host is not None):
        raise _usage_error("give --host URL, or --simulate to load a server started here")
    if replicas > 1 and not simulate:
        raise _usage_error("--replicas starts servers of its own: give it with --simulate")
    if host is not None and not re.match(r"https?://[^/\s]+", host):
        raise _usage_error(f"--host: {host!r} is not an http:// or https:// URL")
    conditions = []
    if fail_on is not None:
        try:
            conditions = parse_fail_on(fail_on)
        except ValueError as error:
            raise _usage_error(str(error)) from None
    locustfile = _scenario_file(scenario)
    environment = _server_environment(server_env or [])

    run = LoadTestRun(
        users=users,
        spawn_rate=spawn_rate,
        seconds=seconds,
        locustfile=locustfile,
        processes=processes,
        extra_arguments=list(ctx.args),
        folder=_new_run_folder(results_dir),
    )
    # Not a terminal (CI, a pipe): wide enough for the report's table all the same.
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 140)
    try:
        with contextlib.ExitStack() as stack:
            if simulate:
                console.print(f"starting the LLM simulator (ttft {ttft_ms:g} ms, {tokens_per_second:g} tokens/s)")
                deployment = stack.enter_context(
                    SimulatedDeployment(
                        run.folder, ttft_ms, tokens_per_second, server_workers, environment, replicas=replicas
                    )
                )
                if replicas == 1:
                    console.print(
                        f"server on {deployment.base_url} ({server_workers} workers), simulator {deployment.model_url}"
                    )
                else:
                    console.print(
                        f"nginx on {deployment.base_url} in front of {replicas} servers "
                        f"({', '.join(deployment.replica_urls)}; {server_workers} workers each), "
                        f"simulator {deployment.model_url}"
                    )
                    run.replica_urls = deployment.replica_urls
                host = deployment.base_url
                run.memory_probe, run.cpu_probe = deployment.memory_mb, deployment.cpu_seconds
            assert host is not None
            report = run.execute(host.rstrip("/"), console, conditions, simulated=simulate)
    except LoadTestError as error:
        typer.echo(f"agentctl: {error}", err=True)
        raise typer.Exit(1) from None
    from agentctl.loadtest.report import print_report

    print_report(report, console)
    console.print(f"report: {run.folder / 'report.json'}  HTML: {run.folder / 'locust.html'}")
    if report["requests"]["total"]["requests"] == 0:
        typer.echo("agentctl: the run sent no request", err=True)
        raise typer.Exit(1)
    if any(check["failed"] for check in report["gate"]):
        raise typer.Exit(1)


class LoadTestCommand(PlainUsageErrors):
    """The arguments after `--` are left for Locust."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["context_settings"] = {**(kwargs.get("context_settings") or {}), "allow_extra_args": True}
        super().__init__(*args, **kwargs)


def _parse_duration(text: str) -> int:
    found = re.fullmatch(r"\s*(\d+)\s*(s|m|h)?\s*", text)
    if not found or int(found.group(1)) == 0:
        raise _usage_error(f"--duration: {text!r} is not a positive time such as 90, 30s, 5m or 1h")
    return int(found.group(1)) * {"s": 1, "m": 60, "h": 3600}[found.group(2) or "s"]


def _scenario_file(scenario: str) -> Path:
    """A built-in scenario's Locust file (shipped in the wheel, or the checkout's loadtests/), or the path given."""
    if scenario in SCENARIO_FILES:
        from agentctl.resources import bundled_dir

        return bundled_dir("loadtests") / SCENARIO_FILES[scenario]
    path = Path(scenario)
    if not path.is_file():
        raise _usage_error(f"--scenario: {scenario!r} is neither {', '.join(SCENARIO_FILES)} nor a Locust file")
    return path.resolve()


def _server_environment(pairs: Sequence[str]) -> dict[str, str]:
    environment = {}
    for pair in pairs:
        name, equals, value = pair.partition("=")
        if not equals or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise _usage_error(f"--server-env: {pair!r} is not NAME=VALUE")
        environment[name] = value
    return environment


def _new_run_folder(results_dir: Path) -> Path:
    stamp = datetime.datetime.now(tz=datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    for attempt in range(100):
        folder = results_dir / f"loadtest-{stamp}{f'-{attempt}' if attempt else ''}"
        with contextlib.suppress(FileExistsError):
            folder.mkdir(parents=True)
            return folder.resolve()
    raise _usage_error(f"--results-dir: cannot create a run folder in {results_dir}")
