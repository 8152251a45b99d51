"""What the OpenAI-compatible route costs the server beside the native chat route: sequential turns, whole and
streamed, in alternating rounds so that every mode is measured in the same window.

    .venv/bin/python loadtests/bench_openai.py [--turns 40 --rounds 5 --workers 1]

One `agentctl serve` (long-term memory off, Redis for revocations and limits, as in production) on a fresh embedded
PostgreSQL, the simulator answering instantly with 24-token answers; one user with a session token per native turn
(sessions made beforehand, one turn each, so that every turn reads an empty history) and an API key. Modes:

- native whole: POST /api/v1/chatbot/chat (session token)
- native stream: POST /api/v1/chatbot/chat/stream (session token)
- v1 whole / v1 stream: POST /v1/chat/completions with the key, the request's one message as the conversation (no
  stored thread: the turn runs on an in-memory checkpointer and is recorded)
- v1 whole in a session / v1 stream in a session: the same with X-Agentctl-Session (a fresh session each turn),
  the stored-conversation path, like the native route

Each round runs ``--turns`` turns of every mode, the order rotated from round to round. Reported per mode: the
server's CPU per turn (its processes, PostgreSQL excluded) and PostgreSQL's, summed over the rounds. Target (issue
21): each /v1 mode costs the server at most 1 ms of CPU per turn more than the native route of the same kind.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from bench_relay import RelayServer, server_cpu_seconds  # this folder's relay benchmark: the same server
from harness import descendants, migrate, process_table, release, save_and_print

LOADTESTS = Path(__file__).resolve().parent
TARGET_MS = 1.0
MODEL = "Agent"  # the agent's default name: the one model /v1 answers as


class Bench:
    """The user, their key, and one client for the whole run."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.client = httpx.AsyncClient(base_url=base_url, timeout=60)
        self.user_token = ""
        self.key = ""

    async def sign_up(self) -> None:
        email = f"openai-bench-{uuid.uuid4().hex[:10]}@example.com"
        registered = await self.client.post(
            "/api/v1/auth/register", json={"email": email, "password": "Openai-bench-password-7"}
        )
        registered.raise_for_status()
        self.user_token = registered.json()["token"]["access_token"]
        created = await self.client.post(
            "/api/v1/auth/api-keys", headers=self._user(), json={"name": "bench", "scopes": ["chat"]}
        )
        created.raise_for_status()
        self.key = created.json()["key"]

    def _user(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.user_token}"}

    async def sessions(self, count: int) -> list[tuple[str, str]]:
        """(session id, session token) of ``count`` new sessions."""
        made = []
        for _ in range(count):
            response = await self.client.post("/api/v1/auth/session", headers=self._user())
            response.raise_for_status()
            body = response.json()
            made.append((body["session_id"], body["token"]["access_token"]))
        return made

    async def native(self, session: tuple[str, str], text: str, *, stream: bool) -> bool:
        headers = {"Authorization": f"Bearer {session[1]}"}
        body = {"messages": [{"role": "user", "content": text}]}
        if not stream:
            return (await self.client.post("/api/v1/chatbot/chat", headers=headers, json=body)).status_code == 200
        async with self.client.stream("POST", "/api/v1/chatbot/chat/stream", headers=headers, json=body) as response:
            return any([line == "event: done" async for line in response.aiter_lines()])

    async def openai(self, session: tuple[str, str] | None, text: str, *, stream: bool) -> bool:
        headers = {"Authorization": f"Bearer {self.key}"}
        if session is not None:
            headers["X-Agentctl-Session"] = session[0]
        body: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": text}]}
        if not stream:
            return (await self.client.post("/v1/chat/completions", headers=headers, json=body)).status_code == 200
        body.update(stream=True, stream_options={"include_usage": True})
        async with self.client.stream("POST", "/v1/chat/completions", headers=headers, json=body) as response:
            return any([line == "data: [DONE]" async for line in response.aiter_lines()])


Turn = Callable[[int], Awaitable[bool]]


async def run_mode(bench: Bench, mode: str, turns: int) -> Turn:
    """The mode's turn function, with its sessions made beforehand (outside the measured window)."""
    stream = mode.endswith("stream")
    if mode.startswith("native"):
        sessions = await bench.sessions(turns)
        return lambda index: bench.native(sessions[index], f"bench {index}", stream=stream)
    if "session" in mode:
        sessions = await bench.sessions(turns)
        return lambda index: bench.openai(sessions[index], f"bench {index}", stream=stream)
    return lambda index: bench.openai(None, f"bench {index}", stream=stream)


MODES = ["native whole", "v1 whole", "v1 whole in a session", "native stream", "v1 stream", "v1 stream in a session"]


def postgres_cpu_seconds(postgres_pid: int | None) -> float:
    table = process_table()
    return sum(table[pid][2] for pid in descendants(table, postgres_pid)) if postgres_pid else 0.0


async def measure(server: RelayServer, turns: int, rounds: int) -> dict[str, dict[str, Any]]:
    bench = Bench(server.base_url)
    await bench.sign_up()
    totals = {
        mode: {"turns": 0, "answered": 0, "server_cpu": 0.0, "postgres_cpu": 0.0, "seconds": 0.0} for mode in MODES
    }
    postgres_pid = server.postmaster_pid()
    for warm in MODES:  # every path warmed before anything is counted
        turn = await run_mode(bench, warm, 3)
        for index in range(3):
            await turn(index)
    for round_index in range(rounds):
        order = MODES[round_index % len(MODES) :] + MODES[: round_index % len(MODES)]
        for mode in order:
            turn = await run_mode(bench, mode, turns)
            cpu, pg, began = (
                server_cpu_seconds(server, postgres_pid),
                postgres_cpu_seconds(postgres_pid),
                time.monotonic(),
            )
            answered = 0
            for index in range(turns):
                answered += await turn(index)
            entry = totals[mode]
            entry["server_cpu"] += server_cpu_seconds(server, postgres_pid) - cpu
            entry["postgres_cpu"] += postgres_cpu_seconds(postgres_pid) - pg
            entry["seconds"] += time.monotonic() - began
            entry["turns"] += turns
            entry["answered"] += answered
    await bench.client.aclose()
    return {
        mode: {
            "turns": entry["turns"],
            "answered": entry["answered"],
            "seconds": round(entry["seconds"], 2),
            "server_cpu_ms_per_turn": round(1000 * entry["server_cpu"] / entry["turns"], 3),
            "postgres_cpu_ms_per_turn": round(1000 * entry["postgres_cpu"] / entry["turns"], 3),
        }
        for mode, entry in totals.items()
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=40, help="Turns of each mode in one round.")
    parser.add_argument("--rounds", type=int, default=5, help="Rounds (every mode once per round, order rotated).")
    parser.add_argument("--workers", type=int, default=1, help="Worker processes of agentctl serve.")
    parser.add_argument("--results-dir", default=str(LOADTESTS / "results"), help="Where the reports go.")
    options = parser.parse_args()

    from agentctl.simulator.process import RunningSimulator
    from server.database.embedded import EmbeddedPostgres

    stamp = datetime.datetime.now(tz=datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    results_dir = Path(options.results_dir).resolve()
    results_dir.mkdir(parents=True, exist_ok=True)
    base = results_dir / f"bench-openai-{stamp}"
    data_dir = Path(tempfile.mkdtemp(prefix="agentctl-openaibench-", dir="/tmp"))
    key_prefix = f"openaibench-{uuid.uuid4().hex[:8]}"
    database = EmbeddedPostgres(data_dir)
    servers: list[RelayServer] = []
    report: dict[str, Any] = {"benchmark": "/v1/chat/completions against the native chat route", "date": stamp}
    try:
        migrate(database.url, data_dir)
        with RunningSimulator() as simulator:
            server = RelayServer(data_dir, options.workers, key_prefix, Path(f"{base}.server.log"),
                                 database_url=database.url, model_url=simulator.base_url)  # fmt: skip
            servers.append(server)
            server.start()
            server.wait_until_ready(timeout=120)
            modes = asyncio.run(measure(server, options.turns, options.rounds))
            report["modes"] = modes
            checks: dict[str, bool] = {
                "every turn answered": all(mode["answered"] == mode["turns"] for mode in modes.values())
            }
            for kind in ("whole", "stream"):
                native = modes[f"native {kind}"]["server_cpu_ms_per_turn"]
                for variant in (f"v1 {kind}", f"v1 {kind} in a session"):
                    extra = modes[variant]["server_cpu_ms_per_turn"] - native
                    report.setdefault("extra_server_cpu_ms_per_turn", {})[variant] = round(extra, 3)
                    checks[f"{variant}: at most {TARGET_MS:g} ms of server CPU per turn more than native"] = (
                        extra <= TARGET_MS
                    )
            report["verdict"] = {"checks": checks, "pass": all(checks.values())}
            server.stop()
    finally:
        release(servers, database, key_prefix, data_dir, keep_data=False)
    return save_and_print(report, Path(f"{base}.json"), print_report)


def print_report(report: dict[str, Any]) -> None:
    print(f"  {report['benchmark']}")
    for name, mode in report["modes"].items():
        print(
            f"  {name:<24} {mode['answered']}/{mode['turns']} turns in {mode['seconds']} s; CPU per turn: server "
            f"{mode['server_cpu_ms_per_turn']} ms, PostgreSQL {mode['postgres_cpu_ms_per_turn']} ms"
        )
    for check, passed in report["verdict"]["checks"].items():
        print(f"  [{'PASS' if passed else 'FAIL'}] {check}")


if __name__ == "__main__":
    sys.exit(main())
