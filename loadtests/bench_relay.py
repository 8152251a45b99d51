"""What relaying one streamed token costs the server: sequential streamed turns at two answer lengths.

    .venv/bin/python loadtests/bench_relay.py [--turns 100 --short 24 --long 240 --workers 1 --profile]
                                               [--turns-per-session 1]

One `agentctl serve --workers 1` (long-term memory off) on a fresh embedded PostgreSQL, the simulator answering
instantly with answers of ``--short`` and then ``--long`` tokens, one client sending streamed turns one after the
other (POST /api/v1/chatbot/chat/stream, read to its last event), each in a session of its own by default (sessions
made beforehand), so that both lengths read and trim equal histories. The server's CPU (its processes, PostgreSQL
excluded) per turn at each length; their difference over the difference in tokens is the CPU per relayed token:
what a token costs from the model's stream to the client's SSE write, everything else in the turn being equal.
With ``--profile``, py-spy samples the worker during a second run of long answers, and the report lists where
those samples went (by the categories bench_chat.py uses). Target (issue 19): at most 50 µs per token.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from harness import (  # the benchmarks' shared harness, in this folder
    RAISED_LIMIT,
    Server,
    categorize,
    descendants,
    migrate,
    process_table,
    read_collapsed,
    release,
    save_and_print,
    simulated_chat_environment,
)

LOADTESTS = Path(__file__).resolve().parent
TARGET_MICROSECONDS = 50.0


class RelayServer(Server):
    def __init__(self, data_dir: Path, workers: int, key_prefix: str, log_path: Path, *, database_url: str,
                 model_url: str) -> None:  # fmt: skip
        super().__init__(data_dir, workers, key_prefix, log_path)
        self.database_url = database_url
        self.model_url = model_url

    def environment(self) -> dict[str, str]:
        environ = super().environment()
        environ.update(
            simulated_chat_environment(self.database_url, self.model_url),
            AGENTCTL_RATELIMIT__REGISTER_PER_IP=RAISED_LIMIT,
            AGENTCTL_MEMORY__ENABLED="false",
        )
        return environ


def server_cpu_seconds(server: Server, postgres_pid: int | None) -> float:
    table = process_table()
    pids = descendants(table, server.process.pid) if server.process else set()
    if postgres_pid:
        pids -= descendants(table, postgres_pid)
    return sum(table[pid][2] for pid in pids)


async def streamed_turns(base_url: str, sessions: list[str]) -> tuple[int, int]:
    """A streamed turn in each of ``sessions`` (a session's token; repeated, the session's next turn), one after
    another: (turns that ended with done, token events received)."""
    done = tokens = 0
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        for index, token in enumerate(sessions):
            async with client.stream(
                "POST",
                "/api/v1/chatbot/chat/stream",
                headers={"Authorization": f"Bearer {token}"},
                json={"messages": [{"role": "user", "content": f"relay bench {index}"}]},
            ) as response:
                async for line in response.aiter_lines():
                    if line == "event: token":
                        tokens += 1
                    elif line == "event: done":
                        done += 1
    return done, tokens


def turn_sessions(base_url: str, turns: int, per_session: int) -> list[str]:
    """Session tokens of a new user, one per turn: a session takes ``per_session`` turns before the next one."""
    with httpx.Client(base_url=f"{base_url}/api/v1", timeout=30) as client:
        email = f"relay-{uuid.uuid4().hex[:10]}@example.com"
        registered = client.post("/auth/register", json={"email": email, "password": "Relay-bench-password-7"})
        registered.raise_for_status()
        user = registered.json()["token"]["access_token"]
        sessions = []
        for _ in range(-(-turns // per_session)):
            session = client.post("/auth/session", headers={"Authorization": f"Bearer {user}"})
            session.raise_for_status()
            sessions.append(session.json()["token"]["access_token"])
    return [sessions[index // per_session] for index in range(turns)]


def measure(
    server: RelayServer, simulator: Any, postgres_pid: int | None, tokens: int, turns: int, per_session: int
) -> dict[str, Any]:
    """Sessions are made before the measured turns; with one turn per session (the default), every turn reads and
    trims the same short history at both lengths, so that the difference is the relaying, not a longer history
    (a session of 100 turns of 1,000 tokens is a 400 KB checkpoint to load and a history to count each turn)."""
    simulator.configure({"answer_tokens": tokens})
    asyncio.run(streamed_turns(server.base_url, turn_sessions(server.base_url, 3, per_session)))  # warm
    sessions = turn_sessions(server.base_url, turns, per_session)
    before, began = server_cpu_seconds(server, postgres_pid), time.monotonic()
    done, received = asyncio.run(streamed_turns(server.base_url, sessions))
    cpu = server_cpu_seconds(server, postgres_pid) - before
    return {
        "answer_tokens": tokens,
        "turns": turns,
        "turns_per_session": per_session,
        "done": done,
        "token_events": received,
        "seconds": round(time.monotonic() - began, 2),
        "server_cpu_ms_per_turn": round(1000 * cpu / turns, 3),
    }


def profile_long_answers(
    server: RelayServer, simulator: Any, tokens: int, turns: int, per_session: int, base: Path
) -> dict[str, Any]:
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(pyspy).exists():
        return {"skipped": "py-spy is not installed"}
    table = process_table()
    postgres = descendants(table, server.postmaster_pid() or -1)
    # With one worker, uvicorn serves in the process itself; with more, the busiest child served the turns.
    workers = descendants(table, server.process.pid) - postgres
    busiest = max(workers, key=lambda pid: table[pid][2])
    simulator.configure({"answer_tokens": tokens})
    sessions = turn_sessions(server.base_url, turns, per_session)
    collapsed = Path(f"{base}.relay-profile.txt")
    spy = subprocess.Popen(
        [pyspy, "record", "--pid", str(busiest), "--rate", "500", "--format", "raw", "--nonblocking",
         "--output", str(collapsed), "--duration", "600"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        time.sleep(1.0)
        asyncio.run(streamed_turns(server.base_url, sessions))
    finally:
        spy.send_signal(2)
        spy.wait(30)
    samples = read_collapsed(collapsed)
    total = sum(samples.values()) or 1
    categories: dict[str, int] = {}
    for stack, count in samples.items():
        categories[categorize(stack)] = categories.get(categorize(stack), 0) + count
    return {
        "samples": total,
        "categories": [
            {"category": name, "percent": round(100 * count / total, 1)}
            for name, count in sorted(categories.items(), key=lambda item: -item[1])
        ],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=100, help="Streamed turns at each answer length.")
    parser.add_argument("--short", type=int, default=24, help="Tokens of the short answers.")
    parser.add_argument("--long", type=int, default=240, help="Tokens of the long answers.")
    parser.add_argument("--workers", type=int, default=1, help="Worker processes of agentctl serve.")
    parser.add_argument(
        "--turns-per-session",
        type=int,
        default=1,
        help="Turns in one session before the next (1: equal histories at both lengths; --turns: one session).",
    )
    parser.add_argument("--profile", action="store_true", help="py-spy the worker during long answers.")
    parser.add_argument("--results-dir", default=str(LOADTESTS / "results"), help="Where the reports go.")
    options = parser.parse_args()

    from agentctl.simulator.process import RunningSimulator
    from server.database.embedded import EmbeddedPostgres

    stamp = datetime.datetime.now(tz=datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    results_dir = Path(options.results_dir).resolve()
    results_dir.mkdir(parents=True, exist_ok=True)
    base = results_dir / f"bench-relay-{stamp}"
    data_dir = Path(tempfile.mkdtemp(prefix="agentctl-relaybench-", dir="/tmp"))
    key_prefix = f"relaybench-{uuid.uuid4().hex[:8]}"
    database = EmbeddedPostgres(data_dir)
    servers: list[RelayServer] = []
    report: dict[str, Any] = {"benchmark": "token relay: server CPU per streamed token", "date": stamp}
    try:
        migrate(database.url, data_dir)
        with RunningSimulator() as simulator:
            server = RelayServer(data_dir, options.workers, key_prefix, Path(f"{base}.server.log"),
                                 database_url=database.url, model_url=simulator.base_url)  # fmt: skip
            servers.append(server)
            server.start()
            server.wait_until_ready(timeout=120)
            postgres_pid = server.postmaster_pid()
            per_session = max(1, options.turns_per_session)
            short = measure(server, simulator, postgres_pid, options.short, options.turns, per_session)
            long = measure(server, simulator, postgres_pid, options.long, options.turns, per_session)
            per_token_us = (
                1000
                * (long["server_cpu_ms_per_turn"] - short["server_cpu_ms_per_turn"])
                / (options.long - options.short)
            )
            report["phases"] = [short, long]
            report["server_cpu_us_per_token"] = round(per_token_us, 1)
            report["profile"] = (
                profile_long_answers(server, simulator, options.long, options.turns, per_session, base)
                if options.profile
                else {}
            )
            every_turn_done = all(phase["done"] == phase["turns"] for phase in report["phases"])
            report["verdict"] = {
                "checks": {
                    "every turn ended with done": every_turn_done,
                    f"server CPU per token <= {TARGET_MICROSECONDS:g} µs": per_token_us <= TARGET_MICROSECONDS,
                },
                "pass": False,
            }
            report["verdict"]["pass"] = all(report["verdict"]["checks"].values())
            server.stop()
    finally:
        release(servers, database, key_prefix, data_dir, keep_data=False)
    return save_and_print(report, Path(f"{base}.json"), print_report)


def print_report(report: dict[str, Any]) -> None:
    print(f"  {report['benchmark']}")
    for phase in report["phases"]:
        print(
            f"  {phase['answer_tokens']:>4} tokens: {phase['done']}/{phase['turns']} turns in {phase['seconds']} s, "
            f"server CPU {phase['server_cpu_ms_per_turn']} ms per turn"
        )
    print(f"  server CPU per relayed token: {report['server_cpu_us_per_token']} µs")
    if "skipped" in report["profile"]:
        print(f"  profile skipped: {report['profile']['skipped']}")
    for category in report["profile"].get("categories", [])[:12]:
        print(f"  profile {category['percent']:5.1f}%  {category['category']}")
    for check, passed in report["verdict"]["checks"].items():
        print(f"  [{'PASS' if passed else 'FAIL'}] {check}")


if __name__ == "__main__":
    sys.exit(main())
