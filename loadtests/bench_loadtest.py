"""How many users one deployment holds: `agentctl loadtest --simulate` in three set-ups, with their targets.

    .venv/bin/python loadtests/bench_loadtest.py overhead     [--no-profile]
    .venv/bin/python loadtests/bench_loadtest.py concurrency
    .venv/bin/python loadtests/bench_loadtest.py soak

- overhead: the simulator answers instantly, `serve --workers 2`, 50 users thinking 0.1-0.3 s, 60 s.
  Targets: at least 150 turns/s, turn p99 under 100 ms, on this 2-core machine, load generator included.
  The think time is what makes both targets reachable at once: with none, each user sends its next turn as soon
  as the last returns, so 50 users at 150 turns/s wait 50/150 = 333 ms per turn on average (Little's law), and
  a p99 under 100 ms would need over 500 turns/s. At 0.2 s on average, 50 users offer up to ~200 turns/s.
  With the profile (default on), py-spy samples the busiest server worker for 20 s in the middle of the run.
- concurrency: 1,500 users spawned at 50/s, the simulator at 300 ms to first token and 100 tokens/s, 3 minutes.
  Targets (admission control, issue 24): no failure apart from shed requests (503 overloaded, or the production
  limits' 429s, each with Retry-After, which the users honour); every admitted turn's time to first token under
  1 s at p99; shed requests refused in under 50 ms at p99. Memory at start and end.
- soak: 30 minutes at moderate load (50 users, 1-3 s think time, 100 ms to first token). Reports memory growth
  per hour (a line fitted to the server's RSS after the first tenth) and error drift (error rate in the last
  third of the run against the first).

Every option of a mode can be reduced for a trial (--users, --duration, ...). The run itself is `agentctl
loadtest` (its report and Locust's HTML in its own folder under loadtests/results/); this script adds the
machine's CPU use, the profile and the mode's verdict, and writes results/bench-loadtest-<mode>-<time>.json.
Long-term memory is off unless --memory: these measure the chat path (bench_memory.py measures memory).
"""

from __future__ import annotations

import argparse
import collections
import csv
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from harness import (  # the benchmarks' shared harness, in this folder
    THREAD_WAITING,
    busy_cpu_seconds,
    categorize,
    descendants,
    frame_name,
    process_table,
    read_collapsed,
    save_and_print,
    work_frames,
)

LOADTESTS = Path(__file__).resolve().parent
REPO = LOADTESTS.parent

# Shared with the other benchmarks: CPU from /proc, the report's JSON, and the profile's categories.

RAISED = "100000000/hour"
MODES: dict[str, dict[str, Any]] = {
    "overhead": {
        "users": 50, "spawn_rate": 50, "duration": "60s", "ttft": 0, "tps": 0, "processes": 0,
        "think_time": "0.1-0.3", "weights": {"chat": 1, "stream": 1, "history": 0, "new_session": 0.05},
        # 50 users thinking 0.2 s send far more than 100 chats a minute each: the limits are not the subject.
        "server_env": {"AGENTCTL_RATELIMIT__CHAT": RAISED, "AGENTCTL_RATELIMIT__DEFAULT": RAISED},
    },
    "concurrency": {
        "users": 1500, "spawn_rate": 50, "duration": "3m", "ttft": 300, "tps": 100, "processes": 1,
        "think_time": "15-45", "weights": {"chat": 3, "stream": 6, "history": 1, "new_session": 0.2},
        "server_env": {},  # the production limits: their 429s are the deliberate ones
    },
    "soak": {
        "users": 50, "spawn_rate": 5, "duration": "30m", "ttft": 100, "tps": 100, "processes": 0,
        "think_time": "1-3", "weights": {"chat": 3, "stream": 6, "history": 1, "new_session": 0.2},
        "server_env": {"AGENTCTL_RATELIMIT__CHAT": RAISED, "AGENTCTL_RATELIMIT__DEFAULT": RAISED},
    },
}  # fmt: skip
TURNS = ("POST /api/v1/chatbot/chat", "POST /api/v1/chatbot/chat/stream")


def main() -> int:
    options = _parse_arguments()
    mode = MODES[options.mode]
    stamp = datetime.datetime.now(tz=datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    results_dir = Path(options.results_dir).resolve()
    runs_dir = results_dir / f"bench-loadtest-{options.mode}-{stamp}"
    command = _loadtest_command(options, mode, runs_dir)
    print(f"{options.mode}: {' '.join(command[2:])}", flush=True)
    load_before = [round(value, 2) for value in os.getloadavg()]
    speed_reference = python_speed_reference()
    busy_before, began = busy_cpu_seconds(), time.monotonic()
    process = subprocess.Popen(command, cwd=REPO, start_new_session=True)
    profile: dict[str, Any] = {}
    try:
        if options.mode == "overhead" and options.profile:
            profile = profile_busiest_worker(runs_dir, options.profile_after, options.profile_seconds)
        exit_code = process.wait()
    finally:
        if process.poll() is None:  # interrupted: the CLI tears its server down on SIGTERM
            process.send_signal(signal.SIGTERM)
            process.wait(60)
    wall = time.monotonic() - began
    busy = busy_cpu_seconds() - busy_before
    reports = sorted(runs_dir.glob("loadtest-*/report.json"))
    if not reports:
        print(f"agentctl loadtest wrote no report (exit {exit_code})")
        return 1
    run = json.loads(reports[-1].read_text())
    cores = os.cpu_count() or 1
    summary = {
        "benchmark": f"agentctl loadtest: {options.mode}",
        "command": " ".join(command[2:]),
        "date": run["date"],
        "machine": {
            "cores": cores,
            "load_average_before": load_before,
            "python_loop_seconds_before": speed_reference,
            "busy_percent_of_all_cores_during_run": round(100 * busy / (wall * cores), 1),
        },
        "loadtest_exit_code": exit_code,
        "loadtest_report": str(reports[-1]),
        "results": MODE_RESULTS[options.mode](run, options),
        "profile": profile,
    }
    summary["verdict"] = {"checks": summary["results"].pop("checks"), "pass": False}
    summary["verdict"]["pass"] = all(summary["verdict"]["checks"].values())
    return save_and_print(summary, results_dir / f"bench-loadtest-{options.mode}-{stamp}.json", print_summary)


def python_speed_reference(iterations: int = 10_000_000) -> float:
    """Seconds this interpreter takes for a plain loop: a yardstick for runs on other days. These machines are
    shared, and the same code has run three times slower on one afternoon than on the morning before."""
    started = time.perf_counter()
    total = 0
    for number in range(iterations):
        total += number
    return round(time.perf_counter() - started, 3)


def _parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=sorted(MODES))
    for name in ("users", "spawn_rate", "duration", "ttft", "tps", "processes", "think_time"):
        parser.add_argument(f"--{name.replace('_', '-')}", default=None, help="Override the mode's value.")
    parser.add_argument("--server-workers", type=int, default=2, help="Worker processes of the server.")
    parser.add_argument(
        "--weight",
        action="append",
        default=[],
        metavar="ACTION=WEIGHT",
        help="Override one action's weight (chat, stream, history, new_session, drop_rejoin); repeatable. "
        "overhead with --weight chat=0 measures streamed turns only; --weight drop_rejoin=1 measures rejoins.",
    )
    parser.add_argument("--memory", action="store_true", help="Keep long-term memory on (off by default).")
    parser.add_argument(
        "--server-env", action="append", default=[], metavar="NAME=VALUE", help="A setting of the server (repeat)."
    )
    parser.add_argument("--no-profile", dest="profile", action="store_false", help="overhead: skip py-spy.")
    parser.add_argument("--profile-after", type=float, default=20.0, help="Seconds into the run py-spy starts.")
    parser.add_argument("--profile-seconds", type=int, default=20, help="How long py-spy samples.")
    parser.add_argument("--results-dir", default=str(LOADTESTS / "results"), help="Where the reports go.")
    options = parser.parse_args()
    for name in ("users", "spawn_rate", "duration", "ttft", "tps", "processes", "think_time"):
        if getattr(options, name) is None:
            setattr(options, name, MODES[options.mode][name])
    options.weights = dict(MODES[options.mode]["weights"])
    for override in options.weight:
        action, _, weight = override.partition("=")
        try:
            options.weights[action.strip()] = float(weight)
        except ValueError:
            parser.error(f"--weight wants ACTION=NUMBER, not {override!r}")
    return options


def _loadtest_command(options: argparse.Namespace, mode: dict[str, Any], runs_dir: Path) -> list[str]:
    server_env = {**mode["server_env"], **({} if options.memory else {"AGENTCTL_MEMORY__ENABLED": "false"})}
    server_env.update(pair.split("=", 1) for pair in options.server_env)
    scenario = ["--think-time", str(options.think_time)]
    for action, weight in options.weights.items():
        scenario += [f"--{action.replace('_', '-')}-weight", str(weight)]
    return [
        sys.executable, "-m", "agentctl", "loadtest", "--simulate",
        "--users", str(options.users), "--spawn-rate", str(options.spawn_rate), "--duration", str(options.duration),
        "--ttft", str(options.ttft), "--tps", str(options.tps), "--processes", str(options.processes),
        "--server-workers", str(options.server_workers), "--results-dir", str(runs_dir),
        *(item for name, value in server_env.items() for item in ("--server-env", f"{name}={value}")),
        "--", *scenario,
    ]  # fmt: skip


# --- the mode's results --------------------------------------------------------------------------------------


def _endpoint(run: dict[str, Any], name: str) -> dict[str, Any]:
    return next((entry for entry in run["requests"]["endpoints"] if entry["name"] == name), {})


def _turn_p99(run: dict[str, Any]) -> float | None:
    values = [_endpoint(run, name).get("latency_ms", {}).get("p99") for name in TURNS]
    return max((value for value in values if value is not None), default=None)


def overhead_results(run: dict[str, Any], options: argparse.Namespace) -> dict[str, Any]:
    total = run["requests"]["total"]
    turn_p99 = _turn_p99(run)
    cpu_seconds = {"locust": run["load_generator"]["cpu_seconds"], **run["server"].get("cpu_seconds", {})}
    turns = total["turns"] or 0
    cpu_ms_per_turn = {name: round(1000 * value / turns, 2) for name, value in cpu_seconds.items()} if turns else {}
    everything = sum(cpu_ms_per_turn.values())
    return {
        "turns_per_second": total["turns_per_second"],
        "turns": total["turns"],
        "cpu_ms_per_turn": cpu_ms_per_turn,
        # What the machine could do with every core busy at that cost: the ceiling the target is set against.
        "turns_per_second_if_all_cores_were_busy": round((os.cpu_count() or 1) * 1000 / everything, 1)
        if everything
        else None,
        "turn_latency_ms": {name: _endpoint(run, name).get("latency_ms") for name in TURNS},
        # With --weight drop_rejoin=N: from the rejoin request to its first replayed event, as the client saw it.
        "rejoin_to_first_event_ms": run["requests"].get("rejoin_to_first_event_ms", []),
        "success_percent": total["success_percent"],
        "cpu_seconds": cpu_seconds,
        "server_counters": run["server"]["counter_deltas"],
        "checks": {
            "at least 150 turns/s": (total["turns_per_second"] or 0) >= 150,
            "turn p99 < 100 ms": turn_p99 is not None and turn_p99 < 100,
        },
    }


def concurrency_results(run: dict[str, Any], options: argparse.Namespace) -> dict[str, Any]:
    total = run["requests"]["total"]
    failures_by_cause: collections.Counter[str] = collections.Counter()
    for endpoint in run["requests"]["endpoints"]:
        failures_by_cause.update(endpoint["failures_by_cause"])
    failures_by_cause.update(run["requests"]["late_failures_by_cause"])
    deliberate = sum(count for cause, count in failures_by_cause.items() if cause.startswith("HTTP 429"))
    other = total["failures"] - deliberate
    ttft = run["requests"]["time_to_first_token_ms"]
    ttft_p99 = max((entry["p99"] for entry in ttft if entry["p99"] is not None), default=None)
    shed_p99 = (total.get("shed_latency_ms") or {}).get("p99")
    server_ttft = _bucket_quantiles(
        (run["server"].get("counter_deltas") or {}).get("agentctl_chat_time_to_first_token_seconds_bucket", {})
    )
    return {
        "server_time_to_first_token_s_at_most": server_ttft,
        "requests": total["requests"],
        "failures": total["failures"],
        "shed": total.get("shed", 0),
        "shed_percent": total.get("shed_percent"),
        "shed_latency_ms": total.get("shed_latency_ms"),
        "failures_apart_from_429": other,
        "deliberate_429s": deliberate,
        "success_percent_apart_from_429": round(100 * (1 - other / total["requests"]), 3)
        if total["requests"]
        else None,
        "failures_by_cause": dict(failures_by_cause.most_common()),
        "time_to_first_token_ms": ttft,
        "turns_per_second": total["turns_per_second"],
        "server_memory_mb": {key: run["server"].get("memory_mb", {}).get(key) for key in ("start", "end")},
        "server_counters": run["server"]["counter_deltas"],
        "checks": {
            "no failure apart from shed requests": total["requests"] > 0 and total["failures"] == 0,
            "admitted turns: p99 time to first token < 1 s": ttft_p99 is not None and ttft_p99 < 1000,
            "shed requests: p99 refusal < 50 ms": shed_p99 is None or shed_p99 < 50,
        },
    }


def _bucket_quantiles(cumulative: dict[str, float]) -> dict[str, float | None]:
    """p50/p95/p99 as the upper bound of the histogram bucket each falls in (cumulative counts by `le`)."""
    bounds = sorted(((float(le), count) for le, count in cumulative.items()), key=lambda item: item[0])
    total = bounds[-1][1] if bounds else 0
    quantiles: dict[str, float | None] = {}
    for name, fraction in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
        quantiles[name] = next((le for le, count in bounds if total and count >= fraction * total), None)
    return quantiles


def soak_results(run: dict[str, Any], options: argparse.Namespace) -> dict[str, Any]:
    samples = run["server"].get("memory_mb", {}).get("samples", [])
    settled = samples[len(samples) // 10 :]
    growth = _slope(settled) * 3600 if len(settled) >= 3 else None
    history = _error_history(Path(run["files"]["csv_prefix"] + "_stats_history.csv"))
    third = len(history) // 3
    first = _error_percent(history[:third])
    last = _error_percent(history[-third:]) if third else None
    return {
        "memory_mb": {"start": samples[0][1] if samples else None, "end": samples[-1][1] if samples else None},
        "memory_growth_mb_per_hour": None if growth is None else round(growth, 1),
        "error_percent_first_third": first,
        "error_percent_last_third": last,
        "success_percent": run["requests"]["total"]["success_percent"],
        "turns_per_second": run["requests"]["total"]["turns_per_second"],
        "checks": {
            "no error drift (last third's error rate not above the first's + 0.1 point)": first is not None
            and last is not None
            and last <= first + 0.1,
            "memory measured": growth is not None,
        },
    }


MODE_RESULTS = {"overhead": overhead_results, "concurrency": concurrency_results, "soak": soak_results}


def _slope(points: list[list[float]]) -> float:
    """Least-squares slope of (seconds, MB) points: MB per second."""
    count = len(points)
    mean_x = sum(x for x, _ in points) / count
    mean_y = sum(y for _, y in points) / count
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / spread if spread else 0.0


def _error_history(path: Path) -> list[tuple[float, float]]:
    """(requests/s, failures/s) of each second of the run, from Locust's aggregated stats history."""
    if not path.exists():
        return []
    with path.open(newline="", encoding="utf-8") as file:
        return [
            (float(row["Requests/s"] or 0), float(row["Failures/s"] or 0))
            for row in csv.DictReader(file)
            if row["Name"] == "Aggregated"
        ]


def _error_percent(rows: list[tuple[float, float]]) -> float | None:
    requests = sum(rate for rate, _ in rows)
    return round(100 * sum(failures for _, failures in rows) / requests, 3) if requests else None


# --- the profile ---------------------------------------------------------------------------------------------


def profile_busiest_worker(runs_dir: Path, after: float, seconds: int) -> dict[str, Any]:
    """py-spy on the server worker that used the most CPU, ``after`` seconds into the run, for ``seconds``."""
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(pyspy).exists():
        return {"skipped": "py-spy is not installed (.venv/bin/pip install py-spy)"}
    deadline = time.monotonic() + 180
    pid_files: list[Path] = []
    while not pid_files and time.monotonic() < deadline:
        pid_files = list(runs_dir.glob("loadtest-*/server.pid"))
        time.sleep(0.5)
    if not pid_files:
        return {"skipped": "the server's pid never appeared"}
    serve = int(pid_files[0].read_text())
    time.sleep(after)
    table = process_table()
    workers = [pid for pid in descendants(table, serve) if pid != serve and "python" in table[pid][1]]
    if not workers:
        return {"skipped": "no worker process found"}
    busiest = max(workers, key=lambda pid: table[pid][2])
    path = pid_files[0].parent / "pyspy-worker.txt"
    rate = 200
    done = subprocess.run(
        [pyspy, "record", "--pid", str(busiest), "--rate", str(rate), "--duration", str(seconds), "--nonblocking",
         "--format", "raw", "--full-filenames", "--nolineno", "-o", str(path)],
        capture_output=True, text=True, timeout=seconds + 60,
    )  # fmt: skip
    samples = read_collapsed(path)
    by_category: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    for stack, count in samples.items():
        by_category[categorize(stack)] += count
        frames = work_frames(stack)
        if frames and not frames[-1].startswith("_worker ("):
            leaves[frame_name(frames[-1])] += count
    parked = by_category.pop(THREAD_WAITING, 0)
    active = (sum(samples.values()) - parked) or 1
    return {
        "worker_pid": busiest,
        "seconds": seconds,
        "rate": rate,
        "samples": active,
        "collapsed_stacks": str(path),
        "py_spy_exit_code": done.returncode,
        "categories": [
            {"category": name, "percent": round(100 * count / active, 1)} for name, count in by_category.most_common()
        ],
        "top_leaves": [{"frame": name, "percent": round(100 * n / active, 1)} for name, n in leaves.most_common(15)],
    }


def print_summary(summary: dict[str, Any]) -> None:
    print()
    print(f"  {summary['benchmark']}: {summary['command']}")
    machine = summary["machine"]
    print(
        f"  machine: {machine['cores']} cores, load average before {machine['load_average_before']}, "
        f"{machine['busy_percent_of_all_cores_during_run']}% busy during the run, "
        f"python loop {machine['python_loop_seconds_before']} s"
    )
    for name, value in summary["results"].items():
        print(f"  {name}: {json.dumps(value)}")
    for category in summary["profile"].get("categories", [])[:12]:
        print(f"  profile {category['percent']:5.1f}%  {category['category']}")
    for leaf in summary["profile"].get("top_leaves", [])[:8]:
        print(f"  leaf    {leaf['percent']:5.1f}%  {leaf['frame']}")
    if "skipped" in summary["profile"]:
        print(f"  profile skipped: {summary['profile']['skipped']}")
    for check, passed in summary["verdict"]["checks"].items():
        print(f"  [{'PASS' if passed else 'FAIL'}] {check}")


if __name__ == "__main__":
    sys.exit(main())
