"""Running Locust against a server: the simulated deployment (simulator, PostgreSQL, `agentctl serve`), the
headless Locust processes, the live view and the report's raw material.

Locust is never imported into this process: `import locust` monkey-patches the whole interpreter with gevent,
which stalls asyncio's thread pool. It runs as `python -m locust` (a master plus N workers with --processes),
writes its stats to files, and this process only reads them: the live view from its CSV stats, the report
from its final JSON, the server's own counters from /metrics before and after.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from agentctl.config import environment_without_settings

DEFAULT_SCENARIO = "chat"
SCENARIO_FILES = {"chat": "chat_scenario.py"}
# One IP sends every sign-up and login of a load test; the production limits (10 sign-ups an hour) would
# refuse it. Limiting stays on, so every request still pays for its checks.
SIMULATED_SERVER_LIMITS = {
    "AGENTCTL_RATELIMIT__REGISTER_PER_IP": "100000000/hour",
    "AGENTCTL_RATELIMIT__LOGIN_PER_IP": "100000000/hour",
}
LOCAL_REDIS_URL = "redis://127.0.0.1:6379/0"  # `make services` starts it; replicas use it unless REDIS_URL is set
LOCUST_GRACE_SECONDS = 60  # past --duration (and the users' stop timeout), Locust is killed
STOP_TIMEOUT_SECONDS = 10  # users finish the request in flight (a stream) before Locust stops
MEMORY_SAMPLE_SECONDS = 10


class LoadTestError(Exception):
    """A run that could not happen or finish: one line for the operator, exit 1."""


def free_loopback_port() -> int:
    """A port nothing listens on at the moment, for a server or a Locust master started on loopback."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _stop_process_group(process: subprocess.Popen[bytes], timeout: float) -> int | None:
    """SIGTERM to the process (its own session), SIGKILL to the whole group if it has not exited in time."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(10)
    return process.returncode


# --- the simulated deployment --------------------------------------------------------------------------------


@dataclass
class Replica:
    """One `agentctl serve` of the deployment: its port, data dir and log."""

    port: int
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class SimulatedDeployment:
    """The LLM simulator and `agentctl serve` wired to it, on free loopback ports, in a temporary data dir.

    With ``replicas`` above 1: that many `agentctl serve`, sharing one PostgreSQL (DATABASE_URL's, else one embedded
    server started here and migrated once), the local Redis (REDIS_URL's, else redis://127.0.0.1:6379/0, with a key
    prefix of this run's own) and a JWT secret, behind nginx on loopback (agentctl.loadtest.proxy).
    """

    def __init__(
        self,
        folder: Path,
        ttft_ms: float,
        tokens_per_second: float,
        workers: int,
        environment: dict[str, str],
        *,
        replicas: int = 1,
    ) -> None:
        self.folder = folder
        self.simulator_args = ["--ttft-ms", f"{ttft_ms:g}", "--tokens-per-second", f"{tokens_per_second:g}"]
        self.workers = workers
        self.extra_environment = environment
        self.port = free_loopback_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.model_url = ""
        self.data_dir = Path(tempfile.mkdtemp(prefix="agentctl-loadtest-", dir="/tmp"))
        self.simulator: Any = None
        self.replicas = (
            [Replica(self.port, self.data_dir, folder / "server.log")]
            if replicas == 1
            else [
                Replica(free_loopback_port(), self.data_dir / f"replica-{index}", folder / f"server-{index}.log")
                for index in range(replicas)
            ]
        )
        self.nginx: subprocess.Popen[bytes] | None = None
        self.embedded_postgres: Any = None

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        """The first replica's serve process (the only one without --replicas)."""
        return self.replicas[0].process

    def __enter__(self) -> SimulatedDeployment:
        from agentctl.simulator.process import RunningSimulator

        try:
            self.simulator = RunningSimulator(args=self.simulator_args)
            self.model_url = self.simulator.base_url
            if len(self.replicas) == 1:
                self._start_servers({})
            else:
                self._start_servers(self._shared_environment())
                self._start_proxy()
        except BaseException:
            self.__exit__()
            raise
        return self

    def environment(self) -> dict[str, str]:
        """This process's environment without agentctl's settings, then the simulator, raised limits, extras."""
        environ = environment_without_settings(os.environ)
        environ.update(
            {
                "AGENTCTL_DATA_DIR": str(self.data_dir),
                "AGENTCTL_LLM__BASE_URL": self.model_url,
                "AGENTCTL_LLM__MODEL": "chat-model",
                "OPENAI_API_KEY": "simulated",
                **SIMULATED_SERVER_LIMITS,
                **self.extra_environment,  # --server-env wins, whatever it names (it once crashed on these names)
            }
        )
        return environ

    def _shared_environment(self) -> dict[str, str]:
        """What the replicas share: the database (migrated once, here), Redis under a prefix of this run, the JWT
        secret, and nginx on loopback as the proxy whose X-Forwarded-For they believe."""
        database_url = self.extra_environment.get("DATABASE_URL") or os.environ.get("DATABASE_URL")
        if not database_url:
            from server.database.embedded import EmbeddedPostgres

            self.embedded_postgres = EmbeddedPostgres(self.data_dir)
            database_url = self.embedded_postgres.url
            migrate = subprocess.run(
                [sys.executable, "-m", "agentctl", "migrate"],
                cwd=self.data_dir,
                env={**self.environment(), "DATABASE_URL": database_url},
                capture_output=True,
                timeout=300,
            )
            (self.folder / "migrate.log").write_bytes(migrate.stdout + migrate.stderr)
            if migrate.returncode != 0:
                raise LoadTestError(f"agentctl migrate failed; see {self.folder / 'migrate.log'}")
        redis_url = self.extra_environment.get("REDIS_URL") or os.environ.get("REDIS_URL") or LOCAL_REDIS_URL
        _require_redis(redis_url)
        return {
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "AGENTCTL_REDIS__KEY_PREFIX": f"loadtest-{self.folder.name}-{secrets.token_hex(3)}:",
            "AGENTCTL_AUTH__JWT_SECRET": secrets.token_urlsafe(48),
            "AGENTCTL_SERVER__TRUSTED_PROXIES": "127.0.0.1/32",
            **{name: value for name, value in self.extra_environment.items() if name not in ("DATABASE_URL",)},
        }

    def _start_servers(self, shared: dict[str, str], timeout: float = 120) -> None:
        for replica in self.replicas:
            replica.data_dir.mkdir(parents=True, exist_ok=True)
            environment = {**self.environment(), **shared, "AGENTCTL_DATA_DIR": str(replica.data_dir)}
            replica.process = start_serve(replica.data_dir, replica.port, self.workers, environment, replica.log_path)
        # for a profiler to attach to
        (self.folder / "server.pid").write_text("".join(f"{replica.process.pid}\n" for replica in self.replicas))  # type: ignore[union-attr]
        deadline = time.monotonic() + timeout
        waiting = list(self.replicas)
        while waiting and time.monotonic() < deadline:
            for replica in list(waiting):
                assert replica.process is not None
                if replica.process.poll() is not None:
                    raise LoadTestError(f"the server exited with {replica.process.returncode}; see {replica.log_path}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{replica.base_url}/health/ready", timeout=2).status_code == 200:
                        waiting.remove(replica)
            if waiting:
                time.sleep(0.2)
        if waiting:
            raise LoadTestError(f"the server was not ready within {timeout:g} s; see {waiting[0].log_path}")

    def _start_proxy(self) -> None:
        from agentctl.loadtest.proxy import ProxyError, start_nginx, write_config

        folder = self.folder / "nginx"
        try:
            config = write_config(
                folder,
                listen=f"127.0.0.1:{self.port}",
                upstreams=[f"127.0.0.1:{replica.port}" for replica in self.replicas],
            )
            self.nginx = start_nginx(folder, config, self.base_url)
        except ProxyError as error:
            raise LoadTestError(str(error)) from None

    @property
    def replica_urls(self) -> list[str]:
        return [replica.base_url for replica in self.replicas]

    def memory_mb(self) -> float | None:
        """Resident memory of the servers: every serve process and its workers (PostgreSQL not included)."""
        running = [replica.process for replica in self.replicas if replica.process and replica.process.poll() is None]
        if not running:
            return None
        return round(sum(_rss_kib(pid) for process in running for pid in _process_tree(process.pid)) / 1024, 1)

    def cpu_seconds(self) -> dict[str, float] | None:
        """CPU time used so far by the servers (every replica's serve and workers), PostgreSQL, the simulator and
        nginx."""
        if self.process is None or self.process.poll() is not None:
            return None
        roots: dict[str, list[int]] = {
            "server": [replica.process.pid for replica in self.replicas if replica.process is not None],
            "simulator": [self.simulator.process.pid],
        }
        if self.nginx is not None:
            roots["nginx"] = [self.nginx.pid]
        with contextlib.suppress(OSError, ValueError, IndexError):
            # The embedded PostgreSQL runs detached from serve; its postmaster is named in its data dir.
            postgres_dirs = [self.data_dir] + [replica.data_dir for replica in self.replicas]
            for data_dir in postgres_dirs:
                pid_file = data_dir / "postgres" / "postmaster.pid"
                if pid_file.exists():
                    roots["postgres"] = [int(pid_file.read_text().split()[0])]
                    break
        trees = {name: set().union(*(_process_tree(pid) for pid in pids)) for name, pids in roots.items()}
        if "postgres" in trees:
            trees["server"] -= trees["postgres"]
        return {name: round(sum(_cpu_seconds(pid) for pid in pids), 2) for name, pids in trees.items()}

    def __exit__(self, *_: object) -> None:
        if self.nginx is not None:
            _stop_process_group(self.nginx, timeout=10)
        for index, replica in enumerate(self.replicas):
            if replica.process is not None:
                exit_code = _stop_process_group(replica.process, timeout=30)
                name = "server.exit" if len(self.replicas) == 1 else f"server-{index}.exit"
                (self.folder / name).write_text(f"{exit_code}\n")
        if self.embedded_postgres is not None:
            self.embedded_postgres.stop()
        if self.simulator is not None:
            self.simulator.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)


def _require_redis(url: str) -> None:
    """Replicas share rate limits and revocations through Redis: say so at once when it does not answer."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        client.ping()
    except redis.RedisError as error:
        raise LoadTestError(
            f"replicas need Redis and {url} does not answer ({type(error).__name__}); `make services` starts one"
        ) from None
    finally:
        client.close()


def start_serve(
    data_dir: Path, port: int, workers: int, environment: dict[str, str], log_path: Path
) -> subprocess.Popen[bytes]:
    """`agentctl serve` in a session of its own (so that its whole group can be stopped), logging to ``log_path``.

    Its current directory is the data dir, so that no .env file of the caller's changes the server under test.
    """
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "agentctl", "serve", "--port", str(port), "--workers", str(workers)],
            cwd=data_dir,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _process_tree(root: int) -> set[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                raw = (entry / "stat").read_text()
                parents[int(entry.name)] = int(raw[raw.rindex(")") + 2 :].split()[1])
    found, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in found]
        found.update(children)
        frontier.extend(children)
    return found


def _cpu_seconds(pid: int) -> float:
    with contextlib.suppress(OSError, ValueError, IndexError):
        raw = Path(f"/proc/{pid}/stat").read_text()
        fields = raw[raw.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return 0.0


def _rss_kib(pid: int) -> int:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


# --- Locust --------------------------------------------------------------------------------------------------


@dataclass
class LoadTestRun:
    """One Locust run: its processes, its live view, and its report."""

    users: int
    spawn_rate: float
    seconds: int
    locustfile: Path
    processes: int
    extra_arguments: list[str]
    folder: Path
    memory_probe: Any = None
    cpu_probe: Any = None
    replica_urls: list[str] = field(default_factory=list)  # behind a proxy: each replica's /metrics is read
    locust_cpu: dict[int, float] = field(default_factory=dict)  # pid -> CPU seconds, read while it runs
    memory_samples: list[tuple[float, float]] = field(default_factory=list)  # (seconds into the run, MB)
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)
    began: float = 0.0

    def locust_commands(self) -> list[list[str]]:
        """The master's (or single process's) command, then each worker's."""
        base = [sys.executable, "-m", "locust", "-f", str(self.locustfile), "--loglevel", "WARNING"]
        main = [
            *base,
            "--headless",
            "--users", str(self.users),
            "--spawn-rate", f"{self.spawn_rate:g}",
            "--run-time", f"{self.seconds}s",
            "--stop-timeout", str(STOP_TIMEOUT_SECONDS),
            "--csv", str(self.folder / "locust"),
            "--html", str(self.folder / "locust.html"),
            "--json-file", str(self.folder / "locust"),
            "--exit-code-on-error", "0",  # failures are the report's to judge, through --fail-on
            "--only-summary",
        ]  # fmt: skip
        if self.locustfile.name in SCENARIO_FILES.values():
            main += ["--agentctl-summary", str(self.folder / "scenario-summary.json")]
        if not self.processes:
            return [[*main, *self.extra_arguments]]
        master_port = free_loopback_port()
        master = [
            *main,
            "--master",
            "--master-bind-host", "127.0.0.1",
            "--master-bind-port", str(master_port),
            "--expect-workers", str(self.processes),
            "--expect-workers-max-wait", "60",
            *self.extra_arguments,
        ]  # fmt: skip
        worker = [*base, "--worker", "--master-host", "127.0.0.1", "--master-port", str(master_port)]
        return [master, *([*worker, *self.extra_arguments] for _ in range(self.processes))]

    def execute(self, host: str, console: Any, conditions: list[Any], *, simulated: bool) -> dict[str, Any]:
        before_each = self._scrape_replicas(host)
        before = _sum_counters(before_each)
        memory_start = self.memory_probe() if self.memory_probe else None
        cpu_start = self.cpu_probe() if self.cpu_probe else None
        began = time.monotonic()
        exit_codes = self._run_locust(host, console)
        wall = time.monotonic() - began
        after_each = self._scrape_replicas(host)
        counters_after = _sum_counters(after_each)
        memory_end = self.memory_probe() if self.memory_probe else None
        cpu_end = self.cpu_probe() if self.cpu_probe else None
        report = self._report(host, conditions, before, counters_after, exit_codes, wall, simulated)
        if self.replica_urls:
            report["server"]["replicas"] = _replica_reports(self.replica_urls, before_each, after_each)
        if memory_start is not None and memory_end is not None:
            report["server"]["memory_mb"] = {"start": memory_start, "end": memory_end, "samples": self.memory_samples}
        if cpu_start is not None and cpu_end is not None:
            report["server"]["cpu_seconds"] = {
                name: round(cpu_end[name] - cpu_start.get(name, 0.0), 2) for name in cpu_end
            }
        (self.folder / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        return report

    def _scrape_replicas(self, host: str) -> list[dict[str, dict[str, float]] | None]:
        """The server's counters: through ``host``, or from each replica when there are several behind a proxy."""
        from agentctl.loadtest.report import scrape_counters

        return [scrape_counters(url) for url in (self.replica_urls or [host])]

    def _run_locust(self, host: str, console: Any) -> list[int | None]:
        from rich.live import Live

        commands = self.locust_commands()
        (self.folder / "locust-commands.json").write_text(json.dumps(commands, indent=2) + "\n")
        self.began = time.monotonic()
        deadline = self.began + self.seconds + STOP_TIMEOUT_SECONDS + LOCUST_GRACE_SECONDS
        try:
            for index, command in enumerate(commands):
                log = (self.folder / ("locust.log" if index == 0 else f"locust-worker-{index}.log")).open("wb")
                self.started.append(
                    subprocess.Popen(
                        [*command, "--host", host],
                        cwd=self.folder,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
                log.close()
            master = self.started[0]
            with Live(self._progress(), console=console, refresh_per_second=2, transient=True) as live:
                while master.poll() is None:
                    if time.monotonic() > deadline:
                        raise LoadTestError(f"Locust did not stop in time; see {self.folder / 'locust.log'}")
                    for number, worker in enumerate(self.started[1:], start=1):
                        if worker.poll() not in (None, 0):
                            raise LoadTestError(f"a Locust worker failed; see {self.folder}/locust-worker-{number}.log")
                    time.sleep(0.5)
                    live.update(self._progress())
                    self._sample_memory()
                    # Read while they run: a process's CPU time is gone from /proc once it has exited.
                    self.locust_cpu.update({process.pid: _cpu_seconds(process.pid) for process in self.started})
            for worker in self.started[1:]:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    worker.wait(15)  # the master tells its workers to quit as it does
        finally:
            exit_codes = [_stop_process_group(process, timeout=5) for process in self.started]
        return exit_codes

    def _sample_memory(self) -> None:
        """The server's memory every MEMORY_SAMPLE_SECONDS, for growth over a long run."""
        elapsed = time.monotonic() - self.began
        if self.memory_probe is None or (
            self.memory_samples and elapsed - self.memory_samples[-1][0] < MEMORY_SAMPLE_SECONDS
        ):
            return
        if (megabytes := self.memory_probe()) is not None:
            self.memory_samples.append((round(elapsed, 1), megabytes))

    def _progress(self) -> Any:
        """The live view: elapsed time, users, and per endpoint requests, failures, RPS and percentiles so far."""
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        elapsed = time.monotonic() - self.began
        users = _last_user_count(self.folder / "locust_stats_history.csv")
        generator = f"master + {self.processes} workers" if self.processes else "one process"
        header = Text(
            f"{elapsed:4.0f} / {self.seconds} s   users {'-' if users is None else users} / {self.users}   "
            f"Locust: {generator}"
        )
        table = Table(box=None, pad_edge=False)
        for column in ("endpoint", "requests", "failures", "RPS", "p50 ms", "p95 ms", "max ms"):
            table.add_column(column, justify="left" if column == "endpoint" else "right")
        for row in _csv_rows(self.folder / "locust_stats.csv"):
            table.add_row(
                _entry_label(row["Type"], row["Name"]),
                row["Request Count"],
                row["Failure Count"],
                f"{float(row['Requests/s'] or 0):.1f}",
                row["50%"],
                row["95%"],
                f"{float(row['Max Response Time'] or 0):.0f}",
            )
        return Group(header, table)

    def _report(
        self,
        host: str,
        conditions: list[Any],
        before: Any,
        after: Any,
        exit_codes: list[int | None],
        wall: float,
        simulated: bool,
    ) -> dict[str, Any]:
        from agentctl.loadtest.report import (
            counter_deltas,
            endpoint_report,
            evaluate_gate,
            failures_from_csv,
            gate_values,
        )

        try:
            stats = json.loads((self.folder / "locust.json").read_text())
        except (OSError, ValueError):
            log = self.folder / "locust.log"
            last = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
            raise LoadTestError(
                f"Locust exited with {exit_codes[0]} and no final stats ({': '.join(last) or 'no output'}); see {log}"
            ) from None
        summary_path = self.folder / "scenario-summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
        errors = summary["errors"] if summary else failures_from_csv(self.folder / "locust_failures.csv")
        requests = endpoint_report(stats, errors)
        return {
            "date": datetime.datetime.now(tz=datetime.UTC).isoformat(timespec="seconds"),
            "host": host,
            "configuration": {
                "users": self.users,
                "spawn_rate": self.spawn_rate,
                "duration_seconds": self.seconds,
                "scenario": str(self.locustfile),
                "scenario_arguments": self.extra_arguments,
                "simulated": simulated,
                "cores": os.cpu_count(),
                "load_average_at_end": [round(value, 2) for value in os.getloadavg()],
            },
            "load_generator": {
                "processes": [
                    {"role": role, "pid": process.pid, "exit_code": code}
                    for role, process, code in zip(
                        ["master" if self.processes else "standalone"] + ["worker"] * self.processes,
                        self.started,
                        exit_codes,
                        strict=True,
                    )
                ],
                "workers_connected": summary.get("workers"),
                "wall_seconds": round(wall, 2),
                "cpu_seconds": round(sum(self.locust_cpu.values()), 2),
            },
            "requests": requests,
            "server": {
                "counters_before": before,
                "counters_after": after,
                "counter_deltas": counter_deltas(before, after),
            },
            "gate": evaluate_gate(conditions, gate_values(requests)) if conditions else [],
            "files": {
                "html": str(self.folder / "locust.html"),
                "locust_json": str(self.folder / "locust.json"),
                "csv_prefix": str(self.folder / "locust"),
            },
        }


def _sum_counters(each: list[dict[str, dict[str, float]] | None]) -> dict[str, dict[str, float]] | None:
    """The counters of several replicas added up (those that did not answer left out); None if none answered."""
    answered = [counters for counters in each if counters is not None]
    if not answered:
        return None
    total: dict[str, dict[str, float]] = {}
    for counters in answered:
        for name, values in counters.items():
            for label, value in values.items():
                total.setdefault(name, {})[label] = total.get(name, {}).get(label, 0.0) + value
    return total


def _replica_reports(
    urls: list[str],
    before: list[dict[str, dict[str, float]] | None],
    after: list[dict[str, dict[str, float]] | None],
) -> list[dict[str, Any]]:
    """Per replica: the HTTP requests it served during the run by status class (None if /metrics did not answer
    at the start or the end, e.g. a replica that died)."""
    from agentctl.loadtest.report import counter_deltas

    replicas = []
    for url, start, end in zip(urls, before, after, strict=True):
        deltas = counter_deltas(start, end)
        served = None if deltas is None else deltas.get("agentctl_http_requests_total", {})
        replicas.append({"url": url, "http_requests": served, "reachable_at_end": end is not None})
    return replicas


def _csv_rows(path: Path) -> Iterator[dict[str, str]]:
    """The per-endpoint rows of Locust's _stats.csv as it stands (rewritten every second while it runs)."""
    with contextlib.suppress(OSError, csv.Error):
        with path.open(newline="", encoding="utf-8") as file:
            rows = list(csv.DictReader(file))
        yield from (row for row in rows if row.get("Name") != "Aggregated" and row.get("Request Count"))


def _entry_label(kind: str, name: str) -> str:
    """'POST', 'POST /api/v1/auth/login' -> 'POST /auth/login'; 'TTFT', 'POST /...' -> 'TTFT POST /...'."""
    label = name if name.startswith(f"{kind} ") else f"{kind} {name}".strip()
    return label.replace("/api/v1/", "/")


def _last_user_count(path: Path) -> int | None:
    with contextlib.suppress(OSError, csv.Error, ValueError, IndexError, KeyError):
        with path.open(newline="", encoding="utf-8") as file:
            rows = list(csv.DictReader(file))
        return int(rows[-1]["User Count"])
    return None
