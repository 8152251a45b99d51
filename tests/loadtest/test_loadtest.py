"""`agentctl loadtest` end to end: Locust in subprocesses against a real server and the project's simulator."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agentctl.cli import app
from agentctl.simulator.process import RunningSimulator
from tests.chat.conftest import serve_with_model
from tests.support import ServeProcess

# Short turns between actions, so that a few users make dozens of requests in a few seconds.
FAST_USERS = ["--", "--think-time", "0.1-0.3"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, migrated_database_url: str) -> Iterator[ServeProcess]:
    with RunningSimulator() as simulator:
        running = serve_with_model(tmp_path_factory.mktemp("loadtest"), migrated_database_url, simulator)
        try:
            running.wait_until_healthy()
            yield running
        finally:
            running.terminate()


def run_loadtest(*args: str) -> tuple[int, str, dict | None]:
    """(exit code, output, the run's report or None) of `agentctl loadtest ARGS`."""
    result = CliRunner().invoke(app, ["loadtest", *args])
    results_dir = Path(args[args.index("--results-dir") + 1]) if "--results-dir" in args else None
    reports = sorted(results_dir.glob("loadtest-*/report.json")) if results_dir else []
    return result.exit_code, result.output, json.loads(reports[-1].read_text()) if reports else None


@pytest.mark.slow
def test_a_short_run_reports_every_endpoint_and_exits_0(server: ServeProcess, tmp_path: Path) -> None:
    code, output, report = run_loadtest(
        "--host", server.base_url, "-u", "3", "-r", "3", "-t", "4s", "--results-dir", str(tmp_path), *FAST_USERS
    )

    assert code == 0, output
    assert report is not None
    total = report["requests"]["total"]
    assert total["requests"] > 10
    assert total["failures"] == 0
    assert total["turns"] > 0
    names = {endpoint["name"] for endpoint in report["requests"]["endpoints"]}
    assert {"POST /api/v1/auth/register", "POST /api/v1/chatbot/chat/stream"} <= names
    assert report["requests"]["time_to_first_token_ms"][0]["count"] > 0
    assert report["server"]["counter_deltas"]["agentctl_chat_turns_total"]["done"] >= total["turns"]
    assert Path(report["files"]["html"]).stat().st_size > 0
    assert "success rate 100%" in output


@pytest.mark.slow
def test_an_impossible_fail_on_threshold_exits_1(server: ServeProcess, tmp_path: Path) -> None:
    code, output, report = run_loadtest(
        "--host", server.base_url, "-u", "2", "-r", "2", "-t", "3s", "--results-dir", str(tmp_path),
        "--fail-on", "p99>60s,rps<1000000", *FAST_USERS,
    )  # fmt: skip

    assert code == 1, output
    assert report is not None
    assert [check["failed"] for check in report["gate"]] == [False, True]
    assert "gate rps<1000000: FAIL" in output


@pytest.mark.slow
def test_processes_2_runs_a_master_and_two_workers_against_a_simulated_deployment(tmp_path: Path) -> None:
    code, output, report = run_loadtest(
        "--simulate", "--server-workers", "1", "--processes", "2", "-u", "2", "-r", "2", "-t", "4s",
        "--results-dir", str(tmp_path), *FAST_USERS,
    )  # fmt: skip

    assert code == 0, output
    assert report is not None
    generator = report["load_generator"]
    assert [process["role"] for process in generator["processes"]] == ["master", "worker", "worker"]
    assert [process["exit_code"] for process in generator["processes"]] == [0, 0, 0]
    assert generator["workers_connected"] == 2
    assert report["requests"]["total"]["turns"] > 0
    assert report["server"]["memory_mb"]["end"] > 0
    run_folder = Path(report["files"]["html"]).parent
    assert (run_folder / "server.exit").read_text().strip() == "0"  # the simulated server stopped cleanly


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--simulate", "--host", "http://127.0.0.1:9"], "give --host URL, or --simulate"),
        (["--host", "http://127.0.0.1:9", "--fail-on", "p99>5%"], "p99 is a latency"),
        (["--host", "http://127.0.0.1:9", "--duration", "soon"], "--duration"),
        (["--host", "http://127.0.0.1:9", "--users", "0"], "--users"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(args: list[str], message: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["loadtest", *args, "--results-dir", str(tmp_path)])

    assert result.exit_code == 2
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())  # nothing started, nothing written


def test_server_env_overrides_what_the_simulated_deployment_sets(tmp_path: Path) -> None:
    """--server-env may name what the deployment sets itself (a model, its key): the operator's value wins, where it
    once crashed the command with a traceback."""
    from agentctl.loadtest.runner import SimulatedDeployment

    deployment = SimulatedDeployment(
        tmp_path, 0, 0, 1, {"OPENAI_API_KEY": "mine", "AGENTCTL_LLM__MODELS_FILE": "/etc/models.toml"}
    )
    environment = deployment.environment()
    assert environment["OPENAI_API_KEY"] == "mine"
    assert environment["AGENTCTL_LLM__MODELS_FILE"] == "/etc/models.toml"
    assert environment["AGENTCTL_DATA_DIR"] == str(deployment.data_dir)
    deployment.data_dir.rmdir()
