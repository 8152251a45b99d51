"""Retention: a thread of 1,000 turns keeps a bounded number of checkpoint rows, and a sweep of 100,000 expired turn
records does not raise chat p99 by more than 10%.

    .venv/bin/python loadtests/bench_retention.py [--turns 1000 --expired 100000 --rounds 2]

One `agentctl serve --workers 1` (memory off; its own sweeper off: the benchmark sweeps when it chooses) on a fresh
embedded PostgreSQL, the simulator answering instantly.

1. One session answers ``--turns`` turns, one after another; its checkpoint, blob and write rows are counted, then
   `agentctl retention run` (the CLI, on the same database) sweeps, and they are counted again. Target: at most
   2 x AGENTCTL_RETENTION__CHECKPOINT_TURNS_KEPT + 3 checkpoints left (what recent edits and branches need).
2. The server restarts with its own sweeper on (every second, AGENTCTL_RETENTION__TURN_RECORD_DAYS=30, the default
   batches); ``--expired`` turn records of 100 days ago are inserted and, while the sweeper removes them, sequential
   chat turns (each in a session of its own, non-streamed) are timed; then as long a window with nothing to remove;
   ``--rounds`` times. Target: chat p99 while sweeping at most 1.10 x p99 without.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from bench_relay import RelayServer  # this folder's relay benchmark: the same server
from harness import latencies, migrate, release, save_and_print

LOADTESTS = Path(__file__).resolve().parent
P99_RATIO_TARGET = 1.10


class RetentionServer(RelayServer):
    """``sweeping``: its own sweeper on, every second, removing turn records older than 30 days; else off."""

    sweeping = False

    def environment(self) -> dict[str, str]:
        environ = super().environment()
        if self.sweeping:
            environ.update(AGENTCTL_RETENTION__SWEEP_INTERVAL_SECONDS="1", AGENTCTL_RETENTION__TURN_RECORD_DAYS="30")
        else:
            environ["AGENTCTL_RETENTION__ENABLED"] = "false"
        return environ


def sweep(database_url: str, data_dir: Path, **settings: str) -> dict[str, Any]:
    """`agentctl retention run`, as an operator runs it; its seconds and output."""
    environ = {key: value for key, value in os.environ.items() if not key.startswith("AGENTCTL_")}
    environ.update(DATABASE_URL=database_url, AGENTCTL_ENV="test", AGENTCTL_DATA_DIR=str(data_dir), **settings)
    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "agentctl", "retention", "run"],
        env=environ,
        capture_output=True,
        text=True,
        cwd=data_dir,
    )
    if done.returncode != 0:
        raise SystemExit(f"agentctl retention run failed:\n{done.stdout}{done.stderr}")
    return {"seconds": round(time.monotonic() - began, 2), "output": done.stdout}


async def count_thread(database_url: str, thread: str) -> dict[str, int]:
    connection = await asyncpg.connect(database_url)
    try:
        return {
            table: int(await connection.fetchval(f"SELECT count(*) FROM {table} WHERE thread_id = $1", thread))
            for table in ("checkpoints", "checkpoint_blobs", "checkpoint_writes")
        }
    finally:
        await connection.close()


async def sign_up(client: httpx.AsyncClient) -> str:
    email = f"retention-{uuid.uuid4().hex[:10]}@example.com"
    registered = await client.post("/api/v1/auth/register", json={"email": email, "password": "Retention-bench-7"})
    registered.raise_for_status()
    return registered.json()["token"]["access_token"]


async def new_session(client: httpx.AsyncClient, user: str) -> dict[str, Any]:
    created = await client.post("/api/v1/auth/session", headers={"Authorization": f"Bearer {user}"})
    created.raise_for_status()
    return created.json()


async def send(client: httpx.AsyncClient, token: str, text: str) -> float:
    began = time.perf_counter()
    response = await client.post(
        "/api/v1/chatbot/chat",
        headers={"Authorization": f"Bearer {token}"},
        json={"messages": [{"role": "user", "content": text}]},
    )
    response.raise_for_status()
    return (time.perf_counter() - began) * 1000


async def long_thread(base_url: str, database_url: str, data_dir: Path, turns: int) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        user = await sign_up(client)
        session = await new_session(client, user)
        token = session["token"]["access_token"]
        for index in range(turns):
            await send(client, token, f"turn {index}")
    thread = session["session_id"]
    before = await count_thread(database_url, thread)
    swept = await asyncio.to_thread(sweep, database_url, data_dir)
    after = await count_thread(database_url, thread)
    return {"turns": turns, "before": before, "after": after, "sweep_seconds": swept["seconds"]}


async def put_back_expired(database_url: str, owner: uuid.UUID, session: uuid.UUID, count: int) -> None:
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute("DELETE FROM chat_turns WHERE input = 'expired'")
        await connection.execute(
            "INSERT INTO chat_turns (id, session, owner, input, output, status, created_at, finished_at) "
            "SELECT gen_random_uuid(), $1, $2, 'expired', repeat('x', 200), 'done', now() - interval '100 days', "
            "now() - interval '100 days' FROM generate_series(1, $3)",
            session,
            owner,
            count,
        )
        await connection.execute("ANALYZE chat_turns")
    finally:
        await connection.close()


async def chat_window(
    client: httpx.AsyncClient, user: str, seconds: float, left: asyncpg.Connection
) -> tuple[list[float], int]:
    """Sequential turns, each in a new session (made outside the timed call), for ``seconds``; and how many expired
    records are left at the end (read in both kinds of window, so that both pay for it)."""
    times: list[float] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        session = await new_session(client, user)
        times.append(await send(client, session["token"]["access_token"], f"window {len(times)}"))
    return times, int(await left.fetchval("SELECT count(*) FROM chat_turns WHERE input = 'expired'"))


async def sweep_under_load(base_url: str, database_url: str, expired: int, rounds: int) -> dict[str, Any]:
    """The server's own sweeper (one worker, every second) removes ``expired`` old records while the chat goes on;
    windows of the same length with nothing to remove, alternating."""
    left = await asyncpg.connect(database_url)
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        user = await sign_up(client)
        owner = uuid.UUID(
            (await client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {user}"})).json()["id"]
        )
        home = uuid.UUID((await new_session(client, user))["session_id"])
        await chat_window(client, user, 3, left)  # warm
        quiet: list[float] = []
        swept: list[float] = []
        sweeps = []
        for _ in range(rounds):
            await put_back_expired(database_url, owner, home, expired)
            began = time.monotonic()
            remaining = expired
            while remaining:
                times, remaining = await chat_window(client, user, 0.5, left)
                swept.extend(times)
                if time.monotonic() - began > 600:
                    raise SystemExit("the sweeper did not remove the expired records within 10 minutes")
            sweeps.append(round(time.monotonic() - began, 1))
            quiet.extend((await chat_window(client, user, time.monotonic() - began, left))[0])
        await left.close()
        return {"expired_rows_per_sweep": expired, "sweep_seconds": sweeps, "without": latencies(quiet),
                "during_sweep": latencies(swept)}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=1000, help="Turns of the long conversation.")
    parser.add_argument("--expired", type=int, default=100_000, help="Expired turn records each sweep removes.")
    parser.add_argument("--rounds", type=int, default=2, help="Sweeping windows (each with a window without).")
    parser.add_argument("--results-dir", default=str(LOADTESTS / "results"), help="Where the reports go.")
    options = parser.parse_args()

    from agentctl.config import RetentionSettings
    from agentctl.simulator.process import RunningSimulator
    from server.database.embedded import EmbeddedPostgres

    stamp = datetime.datetime.now(tz=datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    results_dir = Path(options.results_dir).resolve()
    results_dir.mkdir(parents=True, exist_ok=True)
    base = results_dir / f"bench-retention-{stamp}"
    data_dir = Path(tempfile.mkdtemp(prefix="agentctl-retentionbench-", dir="/tmp"))
    key_prefix = f"retentionbench-{uuid.uuid4().hex[:8]}"
    database = EmbeddedPostgres(data_dir)
    servers: list[RetentionServer] = []
    report: dict[str, Any] = {"benchmark": "retention: bounded checkpoints, sweeps beside the chat", "date": stamp}
    kept = RetentionSettings().checkpoint_turns_kept
    try:
        migrate(database.url, data_dir)
        with RunningSimulator() as simulator:
            server = RetentionServer(data_dir, 1, key_prefix, Path(f"{base}.server.log"),
                                     database_url=database.url, model_url=simulator.base_url)  # fmt: skip
            servers.append(server)
            server.start()
            server.wait_until_ready(timeout=120)
            report["long_thread"] = asyncio.run(long_thread(server.base_url, database.url, data_dir, options.turns))
            server.stop()
            sweeping = RetentionServer(data_dir, 1, key_prefix, Path(f"{base}.sweeping-server.log"),
                                       database_url=database.url, model_url=simulator.base_url)  # fmt: skip
            sweeping.sweeping = True
            servers.append(sweeping)
            sweeping.start()
            sweeping.wait_until_ready(timeout=120)
            report["sweep_beside_chat"] = asyncio.run(
                sweep_under_load(sweeping.base_url, database.url, options.expired, options.rounds)
            )
            sweeping.stop()
        bound = 2 * kept + 3
        ratio = report["sweep_beside_chat"]["during_sweep"]["p99"] / report["sweep_beside_chat"]["without"]["p99"]
        report["p99_ratio"] = round(ratio, 3)
        checks = {
            f"checkpoints left <= {bound}": report["long_thread"]["after"]["checkpoints"] <= bound,
            f"chat p99 during sweeps <= {P99_RATIO_TARGET:g} x without": ratio <= P99_RATIO_TARGET,
        }
        report["verdict"] = {"checks": checks, "pass": all(checks.values())}
    finally:
        release(servers, database, key_prefix, data_dir, keep_data=False)
    return save_and_print(report, Path(f"{base}.json"), print_report)


def print_report(report: dict[str, Any]) -> None:
    thread = report["long_thread"]
    print(f"  {report['benchmark']}")
    print(f"  {thread['turns']} turns: before the sweep {thread['before']}, after {thread['after']} "
          f"(sweep {thread['sweep_seconds']} s)")  # fmt: skip
    beside = report["sweep_beside_chat"]
    print(f"  sweeps of {beside['expired_rows_per_sweep']:,} expired turn records took {beside['sweep_seconds']} s")
    for label in ("without", "during_sweep"):
        summary = beside[label]
        print(f"  chat {label:<13} {summary['count']} turns, p50 {summary['p50']} ms, p95 {summary['p95']} ms, "
              f"p99 {summary['p99']} ms")  # fmt: skip
    print(f"  p99 ratio {report['p99_ratio']}")
    for check, passed in report["verdict"]["checks"].items():
        print(f"  [{'PASS' if passed else 'FAIL'}] {check}")


if __name__ == "__main__":
    sys.exit(main())
