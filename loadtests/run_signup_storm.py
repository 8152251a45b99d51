"""Sign-up storm benchmark: N users register and log in against `agentctl serve --workers 2`.

Targets (from the identity-layer issue): every sign-up and login succeeds, their p99 stays under 2 s, and
GET /health answers in under 50 ms throughout, i.e. argon2 never blocks a worker's event loop.

    .venv/bin/python loadtests/run_signup_storm.py [--users 500 --spawn-rate 20 --workers 2]

What it does, in order: times argon2 with the project's default parameters; starts `agentctl serve` on a free
loopback port with a fresh embedded database under /tmp, Redis db 15 under a unique key prefix, and the sign-up
and login rate limits raised (the defaults would refuse a storm from one IP); runs Locust headless in a
subprocess (never imported here: its gevent monkey-patching stalls asyncio thread work); stops the server with
SIGTERM; prints a report and writes it as JSON under loadtests/results/. Exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import (  # the benchmarks' shared harness, in this folder
    RAISED_LIMIT,
    REDIS_URL,
    Server,
    busy_cpu_seconds,
    delete_redis_keys,
    descendants,
    http_get,
    latencies,
    process_table,
    save_and_print,
)

LOADTESTS = Path(__file__).resolve().parent
REPO = LOADTESTS.parent
LOCUSTFILE = LOADTESTS / "signup_storm.py"

REGISTER = "POST /api/v1/auth/register"
LOGIN = "POST /api/v1/auth/login"
HEALTH = "GET /health (probe)"
HEALTH_PROBE_USERS = 1  # HealthProbe.fixed_count in the locustfile


def main() -> int:
    options = _parse_arguments()
    started = time.monotonic()
    stamp = datetime.datetime.now(tz=datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    results_dir = Path(options.results_dir).resolve()
    results_dir.mkdir(parents=True, exist_ok=True)
    base_name = f"signup-storm-{stamp}-u{options.users}"

    print(f"sign-up storm: {options.users} users at {options.spawn_rate}/s against serve --workers {options.workers}")
    hashing = measure_hashing(options.hash_calls)
    print(
        f"  argon2id default parameters: {hashing['hash_ms_per_call']['mean']:.1f} ms per hash (mean of "
        f"{options.hash_calls}), {hashing['verify_ms_per_call']['mean']:.1f} ms per verify"
    )

    run_time = options.run_time or math.ceil(options.users / options.spawn_rate) + 60
    data_dir = Path(tempfile.mkdtemp(prefix="agentctl-storm-", dir="/tmp"))
    key_prefix = f"storm-{uuid.uuid4().hex[:8]}"
    server = Server(data_dir, options.workers, key_prefix, results_dir / f"{base_name}.server.log")
    load_average_before = _load_average()
    try:
        server.start()
        server.wait_until_ready(timeout=120)
        print(f"  server ready on {server.base_url} (data dir {data_dir})")
        prober = IndependentHealthProbe(server.base_url, interval=0.1)
        cpu = CpuAccounting(server)
        prober.start()
        cpu.begin()
        locust = run_locust(options, server.base_url, run_time, results_dir / base_name, cpu.sample_locust)
        cpu.end()
        prober.stop()
        server_exit_code = server.stop()
    finally:
        server.kill_if_running()
        delete_redis_keys(key_prefix)
        if not options.keep_data:
            shutil.rmtree(data_dir, ignore_errors=True)

    report = build_report(
        options=options,
        hashing=hashing,
        locust=locust,
        prober=prober,
        cpu=cpu.summary(),
        server_exit_code=server_exit_code,
        server_log=server.log_path,
        load_average_before=load_average_before,
        wall_seconds=time.monotonic() - started,
        run_time=run_time,
    )
    return save_and_print(report, results_dir / f"{base_name}.json", print_report)


def _parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=500, help="Sign-up users (each registers and logs in once).")
    parser.add_argument("--spawn-rate", type=float, default=20, help="Users started per second.")
    parser.add_argument("--workers", type=int, default=2, help="Worker processes of agentctl serve.")
    parser.add_argument(
        "--run-time",
        type=int,
        default=0,
        help="Upper bound on the Locust run, seconds "
        "(default: users / spawn rate + 60). The run normally stops once every user is done.",
    )
    parser.add_argument("--hash-calls", type=int, default=50, help="argon2 hashes timed before the storm.")
    parser.add_argument("--p99-target-ms", type=float, default=2000.0, help="Register and login p99 target.")
    parser.add_argument("--health-target-ms", type=float, default=50.0, help="GET /health maximum target.")
    parser.add_argument("--results-dir", default=str(LOADTESTS / "results"), help="Where the JSON report goes.")
    parser.add_argument("--keep-data", action="store_true", help="Keep the temporary data dir (embedded database).")
    options = parser.parse_args()
    if options.users < 1 or options.spawn_rate <= 0 or options.workers < 1:
        parser.error("--users, --spawn-rate and --workers must be positive")
    return options


# --- argon2 -------------------------------------------------------------------------------------------------


def measure_hashing(calls: int) -> dict[str, Any]:
    """Time argon2id hash and verify with the project's default parameters, in this (quiet) process."""
    from agentctl.config import Settings
    from server.auth.passwords import PasswordHashing

    settings = Settings().auth
    hasher = PasswordHashing(settings)._hasher
    password = "Storm-password-7"
    for _ in range(3):
        hasher.hash(password)
    hash_times, verify_times = [], []
    stored = hasher.hash(password)
    for _ in range(calls):
        began = time.perf_counter()
        hasher.hash(password)
        hash_times.append((time.perf_counter() - began) * 1000)
        began = time.perf_counter()
        hasher.verify(stored, password)
        verify_times.append((time.perf_counter() - began) * 1000)
    return {
        "parameters": {
            "time_cost": settings.argon2_time_cost,
            "memory_kib": settings.argon2_memory_kib,
            "parallelism": settings.argon2_parallelism,
        },
        "calls": calls,
        "hash_ms_per_call": _spread(hash_times),
        "verify_ms_per_call": _spread(verify_times),
    }


def _spread(values: list[float]) -> dict[str, float]:
    return {
        "mean": round(statistics.fmean(values), 2),
        "median": round(statistics.median(values), 2),
        "min": round(min(values), 2),
        "max": round(max(values), 2),
    }


# --- the server ---------------------------------------------------------------------------------------------


# --- measurements besides Locust ----------------------------------------------------------------------------


class IndependentHealthProbe(threading.Thread):
    """GET /health every ``interval`` from this process (plain threads, no gevent), as a cross-check.

    Locust's probe shares its process, and the two cores, with 500 simulated users; this one does not share
    a process with them, so a difference between the two shows how much of a slow probe is the client's.
    """

    def __init__(self, base_url: str, interval: float) -> None:
        super().__init__(daemon=True)
        self.base_url = base_url
        self.interval = interval
        self.samples: list[tuple[float, float]] = []
        self.failures = 0
        self._stopping = threading.Event()

    def run(self) -> None:
        while not self._stopping.is_set():
            began = time.monotonic()
            status, elapsed = http_get(self.base_url, "/health", timeout=5)
            if status == 200:
                self.samples.append((time.time(), elapsed))
            else:
                self.failures += 1
            self._stopping.wait(max(0.0, self.interval - (time.monotonic() - began)))

    def stop(self) -> None:
        self._stopping.set()
        self.join(10)


class CpuAccounting:
    """CPU seconds used during the Locust run by Locust, the server (serve + workers), PostgreSQL, and the rest."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self._start: dict[int, tuple[int, str, float]] = {}
        self._end: dict[int, tuple[int, str, float]] = {}
        self._locust_cpu = 0.0
        self._busy = 0.0
        self._wall = 0.0
        self._serve: int | None = None
        self._postmaster: int | None = None

    def begin(self) -> None:
        self._serve = self.server.process.pid if self.server.process else None
        self._postmaster = self.server.postmaster_pid()
        self._start = process_table()
        self._busy = busy_cpu_seconds()
        self._wall = time.monotonic()

    def sample_locust(self, pid: int) -> None:
        """Called while Locust runs: its CPU time is gone from /proc once it exits."""
        with contextlib.suppress(OSError, ValueError, IndexError):
            raw = Path(f"/proc/{pid}/stat").read_text()
            fields = raw[raw.rindex(")") + 2 :].split()
            self._locust_cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def end(self) -> None:
        self._end = process_table()
        self._busy = busy_cpu_seconds() - self._busy
        self._wall = time.monotonic() - self._wall

    def _used(self, pids: set[int]) -> float:
        return sum(self._end[pid][2] - self._start.get(pid, (0, "", 0.0))[2] for pid in pids if pid in self._end)

    def summary(self) -> dict[str, Any]:
        if not self._end:
            return {}
        serve, postmaster = self._serve, self._postmaster
        server_pids = descendants(self._end, serve) if serve else set()
        postgres_pids = descendants(self._end, postmaster) if postmaster else set()
        server_pids -= postgres_pids
        workers = sorted(
            (pid for pid in server_pids if pid != serve),
            key=lambda pid: -(self._end[pid][2] - self._start.get(pid, (0, "", 0.0))[2]),
        )
        server_cpu, postgres_cpu = self._used(server_pids), self._used(postgres_pids)
        ours = server_cpu + postgres_cpu + self._locust_cpu
        cores = os.cpu_count() or 1
        return {
            "window_seconds": round(self._wall, 2),
            "cores": cores,
            "machine_busy_cpu_seconds": round(self._busy, 2),
            "machine_busy_percent_of_all_cores": round(100 * self._busy / (self._wall * cores), 1),
            "locust_cpu_seconds": round(self._locust_cpu, 2),
            "server_cpu_seconds": round(server_cpu, 2),
            "server_worker_cpu_seconds": [
                round(self._end[pid][2] - self._start.get(pid, (0, "", 0.0))[2], 2) for pid in workers
            ],
            "postgres_cpu_seconds": round(postgres_cpu, 2),
            "everything_else_cpu_seconds": round(max(0.0, self._busy - ours), 2),
        }


# --- Locust -------------------------------------------------------------------------------------------------


@dataclass
class LocustRun:
    exit_code: int | None
    seconds: float
    stats: list[dict[str, Any]]
    storm: dict[str, Any]
    log_path: Path
    timed_out: bool = False
    problems: list[str] = field(default_factory=list)


def run_locust(
    options: argparse.Namespace, host: str, run_time: int, base: Path, while_running: Callable[[int], None]
) -> LocustRun:
    """Locust headless in its own process; ``while_running`` gets its pid every half second."""
    stats_path = Path(f"{base}.locust.json")  # given to Locust without .json, which it appends
    storm_path = Path(f"{base}.samples.json")
    log_path = Path(f"{base}.locust.log")
    command = [
        sys.executable, "-m", "locust",
        "-f", str(LOCUSTFILE),
        "--headless", "--only-summary",
        "-u", str(options.users + HEALTH_PROBE_USERS),
        "-r", str(options.spawn_rate),
        "--host", host,
        "--run-time", f"{run_time}s",
        "--json-file", str(stats_path.with_suffix("")),
        "--storm-report", str(storm_path),
        "--loglevel", "WARNING",
    ]  # fmt: skip
    began = time.monotonic()
    timed_out = False
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = began + run_time + 60
        try:
            while process.poll() is None:
                while_running(process.pid)
                if time.monotonic() > deadline:
                    timed_out = True
                    break
                time.sleep(0.5)
        finally:
            # Past its own bound, or this runner interrupted: Locust is in its own session, so stop it here.
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
    seconds = time.monotonic() - began
    problems = []
    stats: list[dict[str, Any]] = []
    storm: dict[str, Any] = {}
    try:
        stats = json.loads(stats_path.read_text())
    except (OSError, ValueError) as error:
        problems.append(f"no Locust stats ({error})")
    try:
        storm = json.loads(storm_path.read_text())
    except (OSError, ValueError) as error:
        problems.append(f"no storm samples ({error})")
    return LocustRun(process.returncode, seconds, stats, storm, log_path, timed_out, problems)


# --- the report ---------------------------------------------------------------------------------------------


def _locust_entry(stats: list[dict[str, Any]], name: str) -> dict[str, Any]:
    for entry in stats:
        if entry.get("name") == name:
            return entry
    return {}


def _server_log_summary(path: Path) -> dict[str, Any]:
    lines = path.read_text(errors="replace").splitlines() if path.exists() else []
    flagged = [line for line in lines if any(mark in line for mark in ("ERROR", "CRITICAL", "Traceback", "WARNING"))]
    return {"lines": len(lines), "warnings_and_errors": len(flagged), "first_flagged": flagged[:10]}


def build_report(
    *,
    options: argparse.Namespace,
    hashing: dict[str, Any],
    locust: LocustRun,
    prober: IndependentHealthProbe,
    cpu: dict[str, Any],
    server_exit_code: int | None,
    server_log: Path,
    load_average_before: list[float],
    wall_seconds: float,
    run_time: int,
) -> dict[str, Any]:
    samples = locust.storm.get("samples", {})
    failures = locust.storm.get("failures", {})
    endpoints: dict[str, Any] = {}
    for label, name in (("register", REGISTER), ("login", LOGIN), ("health", HEALTH)):
        entry = _locust_entry(locust.stats, name)
        requests = entry.get("num_requests", 0)
        failed = entry.get("num_failures", 0)
        endpoints[label] = {
            "name": name,
            "requests": requests,
            "successes": requests - failed,
            "failures": failed,
            "failure_reasons": failures.get(name, {}),
            "latency_ms": latencies([ms for _, ms in samples.get(name, [])]),
            "locust_max_ms": round(entry["max_response_time"], 1) if entry.get("max_response_time") else None,
        }

    first, last = locust.storm.get("first_signup_at"), locust.storm.get("last_signup_at")
    slow_health = [
        {"seconds_into_storm": round(at - first, 2) if first else None, "ms": round(ms, 1)}
        for at, ms in samples.get(HEALTH, [])
        if ms >= options.health_target_ms
    ]
    independent = [ms for _, ms in prober.samples]
    independent_storm = [ms for at, ms in prober.samples if first and last and first <= at <= last]

    register, login, health = endpoints["register"], endpoints["login"], endpoints["health"]
    checks = {
        f"all {options.users} registrations succeed": register["successes"] == options.users
        and register["failures"] == 0,
        f"all {options.users} logins succeed": login["successes"] == options.users and login["failures"] == 0,
        f"register p99 < {options.p99_target_ms:g} ms": _below(register["latency_ms"]["p99"], options.p99_target_ms),
        f"login p99 < {options.p99_target_ms:g} ms": _below(login["latency_ms"]["p99"], options.p99_target_ms),
        f"/health max < {options.health_target_ms:g} ms (Locust probe)": health["failures"] == 0
        and _below(health["latency_ms"]["max"], options.health_target_ms),
        "the run stopped by itself (not by the time bound)": locust.storm.get("finished_signups") == options.users
        and not locust.timed_out,
        "the server stopped cleanly on SIGTERM (exit 0)": server_exit_code == 0,
    }
    return {
        "benchmark": "sign-up storm",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": datetime.datetime.now(tz=datetime.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cores": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average_before": load_average_before,
        },
        "configuration": {
            "users": options.users,
            "spawn_rate_per_second": options.spawn_rate,
            "workers": options.workers,
            "locust_users_including_health_probe": options.users + HEALTH_PROBE_USERS,
            "locust_run_time_bound_seconds": run_time,
            "rate_limits_raised_via_environment": {
                "AGENTCTL_RATELIMIT__REGISTER_PER_IP": RAISED_LIMIT,
                "AGENTCTL_RATELIMIT__LOGIN_PER_IP": RAISED_LIMIT,
                "AGENTCTL_RATELIMIT__LOGIN_PER_EMAIL": RAISED_LIMIT,
            },
            "redis": REDIS_URL,
            "database": "embedded PostgreSQL (pgserver) in a fresh temporary data dir",
        },
        "argon2": hashing,
        "register": register,
        "login": login,
        "health": health,
        "health_slow_samples": slow_health[:50],
        "health_independent_probe": {
            "note": "GET /health every 100 ms from the runner process (not Locust), new connection each time",
            "whole_run": latencies(independent),
            "during_storm": latencies(independent_storm),
            "failures": prober.failures,
        },
        "storm": {
            "finished_signups": locust.storm.get("finished_signups"),
            "signup_phase_seconds": round(last - first, 2) if first and last else None,
            "locust_seconds": round(locust.seconds, 2),
            "locust_exit_code": locust.exit_code,
            "locust_timed_out": locust.timed_out,
            "locust_problems": locust.problems,
            "locust_log": str(locust.log_path),
        },
        "cpu_during_run": cpu,
        "server": {
            "exit_code_after_sigterm": server_exit_code,
            "log": str(server_log),
            **_server_log_summary(server_log),
        },
        "wall_seconds": round(wall_seconds, 1),
        "verdict": {"checks": checks, "pass": all(checks.values())},
    }


def _below(value: float | None, limit: float) -> bool:
    return value is not None and value < limit


def _load_average() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def print_report(report: dict[str, Any]) -> None:
    def latency(summary: dict[str, Any]) -> str:
        return "  ".join(f"{key} {summary[key]}" for key in ("p50", "p95", "p99", "max") if key in summary)

    configuration = report["configuration"]
    print()
    print(
        f"  users            {configuration['users']} at {configuration['spawn_rate_per_second']}/s, "
        f"{configuration['workers']} workers, {report['machine']['cores']} cores"
    )
    for label in ("register", "login"):
        section = report[label]
        print(
            f"  {label:<16} {section['successes']} ok, {section['failures']} failed;  "
            f"ms: {latency(section['latency_ms'])}"
        )
        for reason, count in list(section["failure_reasons"].items())[:5]:
            print(f"                     {count} x {reason}")
    health = report["health"]
    print(
        f"  /health (Locust) {health['latency_ms']['count']} probes, {health['failures']} failed;  ms: "
        f"{latency(health['latency_ms'])}"
    )
    independent = report["health_independent_probe"]
    print(
        f"  /health (runner) {independent['whole_run']['count']} probes, {independent['failures']} failed;  ms: "
        f"{latency(independent['whole_run'])}"
    )
    if report["health_slow_samples"]:
        slow = ", ".join(f"{s['ms']} ms at {s['seconds_into_storm']} s" for s in report["health_slow_samples"][:8])
        print(f"  slow /health     {slow}")
    argon2, per_hash = report["argon2"], report["argon2"]["hash_ms_per_call"]
    print(
        f"  argon2id         {per_hash['mean']} ms/hash (median {per_hash['median']}), "
        f"{argon2['verify_ms_per_call']['mean']} ms/verify; m={argon2['parameters']['memory_kib']} KiB "
        f"t={argon2['parameters']['time_cost']} p={argon2['parameters']['parallelism']}"
    )
    cpu = report["cpu_during_run"]
    if cpu:
        print(
            f"  CPU during run   {cpu['window_seconds']} s: machine {cpu['machine_busy_percent_of_all_cores']}% of "
            f"{cpu['cores']} cores; locust {cpu['locust_cpu_seconds']} s, server {cpu['server_cpu_seconds']} s "
            f"(workers {cpu['server_worker_cpu_seconds']}), postgres {cpu['postgres_cpu_seconds']} s, "
            f"other {cpu['everything_else_cpu_seconds']} s"
        )
    storm = report["storm"]
    print(
        f"  storm            {storm['finished_signups']} users finished in {storm['signup_phase_seconds']} s; "
        f"Locust ran {storm['locust_seconds']} s (exit {storm['locust_exit_code']})"
    )
    server = report["server"]
    print(
        f"  server           exit {server['exit_code_after_sigterm']} after SIGTERM; "
        f"{server['warnings_and_errors']} warning/error lines in its log"
    )
    print(f"  wall time        {report['wall_seconds']} s")
    for problem in storm["locust_problems"]:
        print(f"  problem          {problem}")
    print()
    for check, passed in report["verdict"]["checks"].items():
        print(f"  [{'PASS' if passed else 'FAIL'}] {check}")
    print(f"  {'PASS' if report['verdict']['pass'] else 'FAIL'}")


if __name__ == "__main__":
    sys.exit(main())
