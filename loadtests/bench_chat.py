"""Chat turns: the server's own time per non-streamed turn, and turns per second, against an instant model.

Targets (from the agent issue): with the simulator answering instantly, the server's own time per non-streamed
turn (the client's total less the simulator's time for the model call of that turn) has a p50 under 10 ms;
turns per second on this machine with `--workers 2` are measured and reported (no target).

    .venv/bin/python loadtests/bench_chat.py [--clients 16 --seconds 20 --no-profile]

What it does, in order:

1. Starts an embedded PostgreSQL in a fresh data dir under /tmp and migrates it (`agentctl migrate`), the LLM
   simulator (defaults: instant, 24-token answers), and a timing proxy in its own process between the server and
   the simulator. The proxy forwards bytes untouched and timestamps every model request on the machine's
   monotonic clock: first request byte in, last response byte out. It reads the turn's marker (a unique word in
   the user's message) from the request body, so each model call is paired with the turn that made it.
2. Starts `agentctl serve --workers 2` on DATABASE_URL, AGENTCTL_ENV=test, Redis db 15 under a unique key prefix,
   with the rate limits raised (one user per client sends far more than the defaults allow; limiting stays on, in
   Redis, so every request still pays for its checks); the database pool at its default size (10 per worker:
   16 turns in flight on one worker once deadlocked it, fixed since; `--pool-max-size` changes it).
3. Registers one user per client, creates the sessions up front (one turn at a time per session is enforced),
   and drives `POST /api/v1/chatbot/chat` from this process: a minimal HTTP/1.1 client on asyncio (uvloop), a
   new loopback connection per request so both workers share the load. Phases: warm-up; GET /health (the floor
   of any request here); sequential (one client, sessions of 5 turns); history (one client, sessions of 20
   turns); concurrent (16 clients, sessions of 5 turns, 20 s). Bounded in turns and seconds.
4. Server's own time per turn = client total - the proxy's time for that turn's model call(s). Also: the time
   before the model call (first request byte at the proxy - request sent) and after it; chat_turns.latency_ms
   (the service's own clock, from the turn lock to the record insert), and CPU seconds per turn of the workers,
   PostgreSQL, the simulator, the proxy and this process.
5. Replays captured model requests straight to the simulator (no proxy), as a cross-check of the proxy's times.
6. Profile (default on): a second server with one worker under `py-spy record --nonblocking`, a sequential load
   of short sessions, then of turns 16-20 of long sessions; the samples are grouped by what the turn was doing.

Prints the report and writes it under loadtests/results/ (with the server logs and py-spy's collapsed stacks).
Exits 1 when the p50 target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import datetime
import json
import math
import multiprocessing
import multiprocessing.connection
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import (  # the benchmarks' shared harness, in this folder
    OTHER,
    PROFILE_CATEGORIES,
    REDIS_URL,
    THREAD_WAITING,
    Server,
    busy_cpu_seconds,
    categorize,
    descendants,
    frame_name,
    latencies,
    migrate,
    percentile,
    process_table,
    read_collapsed,
    release,
    save_and_print,
    simulated_chat_environment,
    work_frames,
)

if TYPE_CHECKING:
    from agentctl.simulator.process import RunningSimulator

LOADTESTS = Path(__file__).resolve().parent
REPO = LOADTESTS.parent

HOST = "127.0.0.1"
RAISED_LIMIT = "100000000/hour"
PASSWORD = "correct horse 1 battery"
MARKER = re.compile(rb"chatbench-[0-9a-f]{8}-\d+")
REQUEST_TIMEOUT_SECONDS = 30
LOAD_GENERATOR = "load generator (this process)"
QUESTION = "what should I cook tonight with rice, beans and a few tomatoes?"


def main() -> int:
    options = _parse_arguments()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    started = time.monotonic()
    stamp = datetime.datetime.now(tz=datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    results_dir = Path(options.results_dir).resolve()
    results_dir.mkdir(parents=True, exist_ok=True)
    base = results_dir / f"bench-chat-{stamp}"
    data_dir = Path(tempfile.mkdtemp(prefix="agentctl-chatbench-", dir="/tmp"))
    key_prefix = f"chatbench-{uuid.uuid4().hex[:8]}"
    run_id = uuid.uuid4().hex[:8]
    load_average_before = [round(value, 2) for value in os.getloadavg()]
    print(f"chat turns: serve --workers {options.workers}, instant simulator, {os.cpu_count()} cores")

    from agentctl.simulator.process import RunningSimulator
    from server.database.embedded import EmbeddedPostgres

    report: dict[str, Any] = {}
    database = EmbeddedPostgres(data_dir)
    servers: list[ChatServer] = []
    try:
        migrate(database.url, data_dir)
        with RunningSimulator() as simulator, TimingProxy(simulator.url) as proxy:
            turns = Turns(run_id)
            server = ChatServer(
                data_dir,
                options.workers,
                key_prefix,
                Path(f"{base}.server.log"),
                database_url=database.url,
                proxy=proxy,
                pool_max_size=options.pool_max_size,
            )
            servers.append(server)
            server.start()
            server.wait_until_ready(timeout=120)
            print(f"  server ready on {server.base_url}; simulator {simulator.url}; proxy {proxy.url}")
            phases = asyncio.run(run_phases(options, server, turns, proxy, database.url, simulator))
            report["server_exit_code_after_sigterm"] = server.stop()
            report["server_log"] = _log_summary(server.log_path)
            profile = None
            if options.profile:
                profile_server = ChatServer(
                    data_dir,
                    1,
                    key_prefix,
                    Path(f"{base}.profile-server.log"),
                    database_url=database.url,
                    proxy=proxy,
                    pool_max_size=options.pool_max_size,
                )
                servers.append(profile_server)
                profile = run_profile(options, profile_server, turns, proxy, database.url, base)
        report.update(
            build_report(
                options=options,
                phases=phases,
                profile=profile,
                load_average_before=load_average_before,
                wall_seconds=time.monotonic() - started,
                raised={
                    name: value
                    for name, value in server.environment().items()
                    if name.startswith(("AGENTCTL_RATELIMIT__", "AGENTCTL_DATABASE__"))
                },
            )
        )
    finally:
        release(servers, database, key_prefix, data_dir, keep_data=options.keep_data)
    return save_and_print(report, Path(f"{base}.json"), print_report)


def _parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2, help="Worker processes of agentctl serve.")
    parser.add_argument("--clients", type=int, default=16, help="Concurrent clients in the concurrent phase.")
    parser.add_argument("--seconds", type=float, default=20.0, help="Length of the concurrent phase.")
    parser.add_argument("--max-turns", type=int, default=3000, help="Upper bound on turns in the concurrent phase.")
    parser.add_argument("--turns-per-session", type=int, default=5, help="Turns per session (sequential, concurrent).")
    parser.add_argument("--sequential-turns", type=int, default=200, help="Turns of the sequential phase.")
    parser.add_argument("--history-sessions", type=int, default=8, help="Sessions of the history phase.")
    parser.add_argument("--history-turns", type=int, default=20, help="Turns per session in the history phase.")
    parser.add_argument(
        "--pool-max-size",
        type=int,
        default=10,
        help="AGENTCTL_DATABASE__POOL_MAX_SIZE of the server (the setting's default, 10: fewer connections than "
        "clients, which once deadlocked a worker; see the README).",
    )
    parser.add_argument("--target-p50-ms", type=float, default=10.0, help="Target for the server's own p50.")
    parser.add_argument("--no-profile", dest="profile", action="store_false", help="Skip the py-spy profile.")
    parser.add_argument("--profile-rate", type=int, default=500, help="py-spy samples per second.")
    parser.add_argument("--profile-long-sessions", type=int, default=16, help="Long sessions profiled at turns 16-20.")
    parser.add_argument("--profile-blocking", action="store_true", help="Let py-spy pause the worker for each sample.")
    parser.add_argument("--results-dir", default=str(LOADTESTS / "results"), help="Where the reports go.")
    parser.add_argument("--keep-data", action="store_true", help="Keep the temporary data dir (database).")
    options = parser.parse_args()
    if min(options.workers, options.clients, options.turns_per_session, options.history_turns) < 1:
        parser.error("--workers, --clients, --turns-per-session and --history-turns must be positive")
    return options


# --- the server ---------------------------------------------------------------------------------------------


class ChatServer(Server):
    """The sign-up storm's server, on the benchmark's database and model, with the chat limits raised too."""

    def __init__(
        self,
        data_dir: Path,
        workers: int,
        key_prefix: str,
        log_path: Path,
        *,
        database_url: str,
        proxy: TimingProxy,
        pool_max_size: int,
    ) -> None:
        super().__init__(data_dir, workers, key_prefix, log_path)
        self.database_url = database_url
        self.model_url = f"{proxy.url}/v1"
        self.pool_max_size = pool_max_size

    def environment(self) -> dict[str, str]:
        environ = super().environment()
        environ.update(
            simulated_chat_environment(self.database_url, self.model_url),
            AGENTCTL_RATELIMIT__REGISTER_PER_IP=RAISED_LIMIT,
            # Turn locks have a pool of their own; the main pool may be smaller than the turns in flight.
            AGENTCTL_DATABASE__POOL_MAX_SIZE=str(self.pool_max_size),
            # The agent's own overhead; what long-term memory adds is bench_memory.py's to measure.
            AGENTCTL_MEMORY__ENABLED="false",
        )
        return environ


# --- HTTP/1.1 framing, shared by the client, the proxy and the replay ---------------------------------------


@dataclass
class HttpMessage:
    head: bytes
    body: bytes
    status: int | None


class HttpFramer:
    """Cuts a byte stream into HTTP/1.1 messages (Content-Length or chunked bodies), whatever the read sizes."""

    def __init__(self, *, keep_body: bool) -> None:
        self.keep_body = keep_body
        self._buffer = bytearray()
        self._state = "head"
        self._remaining = 0
        self._head = b""
        self._body = bytearray()

    @property
    def idle(self) -> bool:
        """Between messages: the next byte fed starts a new one."""
        return self._state == "head" and not self._buffer

    def feed(self, data: bytes) -> list[HttpMessage]:
        self._buffer += data
        done: list[HttpMessage] = []
        while True:
            if self._state == "head":
                end = self._buffer.find(b"\r\n\r\n")
                if end < 0:
                    return done
                self._head = bytes(self._buffer[: end + 4])
                del self._buffer[: end + 4]
                self._body = bytearray()
                lowered = self._head.lower()
                if b"transfer-encoding: chunked" in lowered:
                    self._state = "chunk-size"
                    continue
                found = re.search(rb"content-length:\s*(\d+)", lowered)
                self._remaining = int(found.group(1)) if found else 0
                self._state = "body"
            if self._state == "body":
                taken = min(self._remaining, len(self._buffer))
                self._take(taken)
                self._remaining -= taken
                if self._remaining:
                    return done
                done.append(self._finish())
            elif self._state == "chunk-size":
                end = self._buffer.find(b"\r\n")
                if end < 0:
                    return done
                size = int(bytes(self._buffer[:end]).split(b";")[0], 16)
                del self._buffer[: end + 2]
                self._state, self._remaining = ("trailer", 0) if size == 0 else ("chunk-data", size + 2)
            elif self._state == "chunk-data":
                taken = min(self._remaining, len(self._buffer))
                self._take(taken)
                self._remaining -= taken
                if self._remaining:
                    return done
                self._state = "chunk-size"
            elif self._state == "trailer":
                end = self._buffer.find(b"\r\n")
                if end < 0:
                    return done
                del self._buffer[: end + 2]
                if end == 0:
                    done.append(self._finish())

    def _take(self, count: int) -> None:
        if self.keep_body:
            self._body += self._buffer[:count]
        del self._buffer[:count]

    def _finish(self) -> HttpMessage:
        self._state = "head"
        status = int(self._head[9:12]) if self._head.startswith(b"HTTP/") else None
        return HttpMessage(self._head, bytes(self._body), status)


# --- the timing proxy ---------------------------------------------------------------------------------------


class TimingProxy:
    """A byte-forwarding proxy in its own process that timestamps each model request it carries."""

    def __init__(self, upstream_url: str) -> None:
        upstream_port = int(upstream_url.rsplit(":", 1)[1])
        context = multiprocessing.get_context("spawn")
        self._control, child = context.Pipe()
        self.process = context.Process(target=_proxy_main, args=(upstream_port, child), daemon=True)
        self.process.start()
        if not self._control.poll(30):
            self.process.kill()
            raise SystemExit("the timing proxy did not start")
        self.port = self._control.recv()
        self.url = f"http://{HOST}:{self.port}"

    def take_calls(self) -> list[dict[str, Any]]:
        """Every model call carried since the last take, then forgets them."""
        self._control.send("take")
        return self._control.recv()

    def stop(self) -> None:
        with contextlib.suppress(OSError, BrokenPipeError):
            self._control.send("stop")
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()

    def __enter__(self) -> TimingProxy:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def _proxy_main(upstream_port: int, control: multiprocessing.connection.Connection) -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    asyncio.run(_serve_proxy(upstream_port, control))


async def _serve_proxy(upstream_port: int, control: multiprocessing.connection.Connection) -> None:
    calls: list[dict[str, Any]] = []
    stopping = asyncio.Event()

    async def carry(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(HOST, upstream_port)
        pending: collections.deque[dict[str, Any]] = collections.deque()

        async def requests() -> None:
            framer, began = HttpFramer(keep_body=True), 0.0
            while data := await client_reader.read(65536):
                now = time.monotonic()
                if framer.idle:
                    began = now
                upstream_writer.write(data)
                for message in framer.feed(data):
                    markers = MARKER.findall(message.body)
                    pending.append(
                        {
                            "marker": markers[-1].decode() if markers else None,
                            "request_started": began,
                            "request_sent": now,
                            "request": message.head + message.body,
                        }
                    )
                await upstream_writer.drain()
            upstream_writer.close()

        async def responses() -> None:
            framer = HttpFramer(keep_body=False)
            while data := await upstream_reader.read(65536):
                now = time.monotonic()
                if framer.idle and pending:
                    pending[0].setdefault("response_started", now)
                client_writer.write(data)
                for message in framer.feed(data):
                    if pending:
                        call = pending.popleft()
                        call.update(response_ended=now, status=message.status)
                        calls.append(call)
                await client_writer.drain()
            client_writer.close()

        with contextlib.suppress(ConnectionError):
            await asyncio.gather(requests(), responses())

    loop = asyncio.get_running_loop()

    async def take() -> list[dict[str, Any]]:
        taken = list(calls)
        calls.clear()
        return taken

    def answer_control() -> None:
        # A thread of its own: the pipe stays blocking, and the records are handed over by the loop's thread.
        while control.recv() != "stop":
            control.send(asyncio.run_coroutine_threadsafe(take(), loop).result())
        loop.call_soon_threadsafe(stopping.set)

    server = await asyncio.start_server(carry, HOST, 0)
    control.send(server.sockets[0].getsockname()[1])
    threading.Thread(target=answer_control, daemon=True).start()
    async with server:
        await stopping.wait()


# --- the client ---------------------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int | None
    head: bytes
    body: bytes
    started: float
    ended: float

    def json(self) -> Any:
        return json.loads(self.body)


async def request(port: int, method: str, path: str, *, body: Any = None, token: str | None = None) -> Reply:
    """One request on a new connection (so that the workers share the load), timed from connect to last byte."""
    payload = b"" if body is None else json.dumps(body).encode()
    head = f"{method} {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: close\r\n"
    if body is not None:
        head += "Content-Type: application/json\r\n"
    if token is not None:
        head += f"Authorization: Bearer {token}\r\n"
    data = f"{head}Content-Length: {len(payload)}\r\n\r\n".encode() + payload
    started = time.monotonic()
    async with asyncio.timeout(REQUEST_TIMEOUT_SECONDS):
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            writer.write(data)
            framer = HttpFramer(keep_body=True)
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    raise ConnectionError("the server closed the connection before answering")
                messages = framer.feed(chunk)
                if messages:
                    break
        finally:
            writer.close()
    return Reply(messages[0].status, messages[0].head, messages[0].body, started, time.monotonic())


@dataclass
class Session:
    user_token: str
    session_id: str
    token: str


async def register_users(port: int, count: int) -> list[str]:
    """Access tokens of ``count`` new users (argon2 makes this the slow part of the set-up)."""

    async def one() -> str:
        email = f"chatbench-{uuid.uuid4().hex[:12]}@example.com"
        reply = await request(port, "POST", "/api/v1/auth/register", body={"email": email, "password": PASSWORD})
        if reply.status != 201:
            raise SystemExit(f"register failed: {reply.status} {reply.body[:300]!r}")
        return reply.json()["token"]["access_token"]

    return await _bounded(4, [one for _ in range(count)])


async def create_sessions(port: int, user_tokens: list[str], per_user: int) -> list[list[Session]]:
    """``per_user`` fresh sessions of each user."""

    def one(user_token: str) -> Callable[[], Any]:
        async def create() -> Session:
            reply = await request(port, "POST", "/api/v1/auth/session", token=user_token)
            if reply.status != 201:
                raise SystemExit(f"session creation failed: {reply.status} {reply.body[:300]!r}")
            created = reply.json()
            return Session(user_token, created["session_id"], created["token"]["access_token"])

        return create

    flat = await _bounded(8, [one(token) for token in user_tokens for _ in range(per_user)])
    return [flat[index * per_user : (index + 1) * per_user] for index in range(len(user_tokens))]


async def _bounded(limit: int, factories: list[Callable[[], Any]]) -> list[Any]:
    gate = asyncio.Semaphore(limit)

    async def run(factory: Callable[[], Any]) -> Any:
        async with gate:
            return await factory()

    return list(await asyncio.gather(*(run(factory) for factory in factories)))


@dataclass
class Turn:
    phase: str
    client: int
    session: str
    turn_in_session: int
    marker: str
    started: float
    ended: float
    status: int | None
    error: str | None = None
    model_calls: list[dict[str, Any]] = field(default_factory=list)
    recorded_latency_ms: float | None = None
    request_id: str | None = None
    worker_pid: str | None = None

    @property
    def total_ms(self) -> float:
        return (self.ended - self.started) * 1000

    @property
    def model_ms(self) -> float:
        return sum(call["response_ended"] - call["request_started"] for call in self.model_calls) * 1000

    @property
    def own_ms(self) -> float:
        return self.total_ms - self.model_ms

    @property
    def before_model_ms(self) -> float | None:
        return (self.model_calls[0]["request_started"] - self.started) * 1000 if self.model_calls else None

    @property
    def after_model_ms(self) -> float | None:
        return (self.ended - self.model_calls[-1]["response_ended"]) * 1000 if self.model_calls else None

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None and len(self.model_calls) == 1


class Turns:
    """Unique markers for the turns' messages, and every turn sent."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.sent: list[Turn] = []

    def next_marker(self) -> str:
        return f"chatbench-{self.run_id}-{len(self.sent) + 1}"


async def send_turn(port: int, turns: Turns, phase: str, client: int, session: Session, index: int) -> Turn:
    marker = turns.next_marker()
    turn = Turn(phase, client, session.session_id, index, marker, time.monotonic(), 0.0, None)
    turns.sent.append(turn)
    body = {"messages": [{"role": "user", "content": f"{marker} {QUESTION}"}]}
    try:
        reply = await request(port, "POST", "/api/v1/chatbot/chat", body=body, token=session.token)
    except (OSError, TimeoutError, ConnectionError) as error:
        turn.ended, turn.error = (
            time.monotonic(),
            f"{type(error).__name__}: {error}" if str(error) else type(error).__name__,
        )
        return turn
    turn.started, turn.ended, turn.status = reply.started, reply.ended, reply.status
    found = re.search(rb"(?im)^x-request-id:\s*(\S+)", reply.head)
    turn.request_id = found.group(1).decode() if found else None
    if reply.status != 200:
        turn.error = f"{reply.status} {reply.body[:200].decode(errors='replace')}"
    else:
        answer = reply.json()["messages"][0]["content"]
        if not answer:
            turn.error = "empty answer"
    return turn


@dataclass
class PhaseRun:
    name: str
    clients: int
    turns_per_session: int
    seconds: float
    turns: list[Turn]
    cpu: dict[str, Any] = field(default_factory=dict)


async def drive(
    port: int,
    turns: Turns,
    phase: str,
    sessions_by_client: list[list[Session]],
    *,
    turns_per_session: int,
    max_turns: int,
    seconds: float,
) -> PhaseRun:
    """Each client sends its sessions' turns one after another; stops at ``max_turns`` or after ``seconds``."""
    budget = [max_turns]
    deadline = time.monotonic() + seconds
    done: list[Turn] = []

    async def client(number: int, sessions: list[Session]) -> None:
        for session in sessions:
            for index in range(1, turns_per_session + 1):
                if budget[0] <= 0 or time.monotonic() >= deadline:
                    return
                budget[0] -= 1
                done.append(await send_turn(port, turns, phase, number, session, index))

    began = time.monotonic()
    await asyncio.gather(*(client(number, sessions) for number, sessions in enumerate(sessions_by_client)))
    return PhaseRun(phase, len(sessions_by_client), turns_per_session, time.monotonic() - began, done)


async def health_floor(port: int, count: int) -> list[float]:
    """GET /health on a new connection each time, one after another: the floor of any request here (ms)."""
    times = []
    for _ in range(count):
        reply = await request(port, "GET", "/health")
        if reply.status == 200:
            times.append((reply.ended - reply.started) * 1000)
    return times


# --- CPU accounting -----------------------------------------------------------------------------------------


class CpuWindow:
    """CPU seconds used during a phase by the server, PostgreSQL, the simulator, the proxy, Redis and the rest."""

    def __init__(self, roots: dict[str, int | None], alone: set[str]) -> None:
        """``roots``: a group's process, counted with its descendants unless the group's name is in ``alone``."""
        self.roots = roots
        self.alone = alone
        self._start: dict[int, tuple[int, str, float]] = {}
        self._busy = 0.0
        self._wall = 0.0

    def __enter__(self) -> CpuWindow:
        self._start = process_table()
        self._busy = busy_cpu_seconds()
        self._wall = time.monotonic()
        return self

    def __exit__(self, *_: object) -> None:
        end = process_table()
        busy = busy_cpu_seconds() - self._busy
        wall = time.monotonic() - self._wall

        def used(pids: Iterable[int]) -> float:
            return sum(end[pid][2] - self._start.get(pid, (0, "", 0.0))[2] for pid in pids if pid in end)

        groups: dict[str, set[int]] = {}
        for name, root in self.roots.items():
            groups[name] = set() if not root else {root} if name in self.alone else descendants(end, root)
        groups["server"] = groups.get("server", set()) - groups.get("postgres", set())
        groups["redis-server (shared)"] = {pid for pid, (_, name, _) in end.items() if name == "redis-server"}
        seconds = {name: used(pids) for name, pids in groups.items()}
        workers = [
            round(end[pid][2] - self._start.get(pid, (0, "", 0.0))[2], 2)
            for pid in sorted(groups["server"] - {self.roots["server"]})
        ]
        cores = os.cpu_count() or 1
        self.summary = {
            "window_seconds": round(wall, 2),
            "machine_busy_percent_of_all_cores": round(100 * busy / (wall * cores), 1),
            "cpu_seconds": {name: round(value, 2) for name, value in seconds.items()},
            "server_worker_cpu_seconds": workers,
            "everything_else_cpu_seconds": round(max(0.0, busy - sum(seconds.values())), 2),
        }


# --- the phases ---------------------------------------------------------------------------------------------


async def run_phases(
    options: argparse.Namespace,
    server: ChatServer,
    turns: Turns,
    proxy: TimingProxy,
    database_url: str,
    simulator: RunningSimulator,
) -> dict[str, Any]:
    port = server.port
    clients = options.clients
    per_session = options.turns_per_session
    concurrent_sessions = math.ceil(options.max_turns / clients / per_session) + 1
    sequential_sessions = math.ceil(options.sequential_turns / per_session)
    print(f"  registering {clients} users, creating sessions ...", flush=True)
    users = await register_users(port, clients)
    warm = await create_sessions(port, users[:2], 2)
    sequential = (await create_sessions(port, users[:1], sequential_sessions))[0]
    history = (await create_sessions(port, users[:1], options.history_sessions))[0]
    concurrent = await create_sessions(port, users, concurrent_sessions)
    roots = {
        "server": server.process.pid if server.process else None,
        "postgres": server.postmaster_pid(),
        "simulator": simulator.process.pid,
        "proxy": proxy.process.pid,
        LOAD_GENERATOR: os.getpid(),
    }

    print("  warm-up ...", flush=True)
    await drive(port, turns, "warm-up", warm, turns_per_session=3, max_turns=100, seconds=60)
    floor = await health_floor(port, 200)
    proxy.take_calls()

    runs: dict[str, PhaseRun] = {}
    plan = [
        ("sequential", [sequential], per_session, options.sequential_turns, 300.0),
        ("history", [history], options.history_turns, options.history_sessions * options.history_turns, 300.0),
        ("concurrent", concurrent, per_session, options.max_turns, options.seconds),
    ]
    for name, sessions, turns_per_session, max_turns, seconds in plan:
        print(f"  {name}: {len(sessions)} client(s), sessions of {turns_per_session} turns ...", flush=True)
        with CpuWindow(roots, alone={LOAD_GENERATOR}) as cpu:
            run = await drive(
                port, turns, name, sessions, turns_per_session=turns_per_session, max_turns=max_turns, seconds=seconds
            )
        run.cpu = cpu.summary
        _attach_model_calls(run.turns, proxy.take_calls())
        runs[name] = run

    await _attach_recorded_latencies(database_url, [turn for run in runs.values() for turn in run.turns])
    _attach_worker_pids(server.log_path, [turn for run in runs.values() for turn in run.turns])
    replay = await replay_to_simulator(simulator.url, runs["sequential"], clients)
    return {"health_floor_ms": floor, "runs": runs, "replay": replay}


def _attach_model_calls(turns: list[Turn], calls: list[dict[str, Any]]) -> None:
    by_marker: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for call in calls:
        by_marker[call["marker"]].append(call)
    for turn in turns:
        turn.model_calls = by_marker.get(turn.marker, [])


def _attach_worker_pids(log_path: Path, turns: list[Turn]) -> None:
    """Which worker served each turn, from the access log lines (they carry the pid and the request id)."""
    served = {}
    for line in log_path.read_text(errors="replace").splitlines():
        if found := re.search(r"pid=(\d+) ([0-9a-f]{32}) .*POST /api/v1/chatbot/chat", line):
            served[found.group(2)] = found.group(1)
    for turn in turns:
        turn.worker_pid = served.get(turn.request_id or "")


async def _attach_recorded_latencies(database_url: str, turns: list[Turn]) -> None:
    """chat_turns.latency_ms: the service's own measure, from the turn lock taken to the record insert."""
    import asyncpg

    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch("SELECT input, latency_ms FROM chat_turns WHERE input LIKE 'chatbench-%'")
    finally:
        await connection.close()
    recorded = {row["input"].split(" ", 1)[0]: row["latency_ms"] for row in rows}
    for turn in turns:
        turn.recorded_latency_ms = recorded.get(turn.marker)


async def replay_to_simulator(simulator_url: str, run: PhaseRun, clients: int) -> dict[str, Any]:
    """The sequential phase's model requests sent again, straight to the simulator: its own time for them."""
    port = int(simulator_url.rsplit(":", 1)[1])
    captured = [call["request"] for turn in run.turns for call in turn.model_calls]

    async def connection(requests: list[bytes], times: list[float]) -> None:
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            for data in requests:
                began = time.monotonic()
                writer.write(data)
                framer = HttpFramer(keep_body=False)
                while not framer.feed(await reader.read(65536)):
                    pass
                times.append((time.monotonic() - began) * 1000)
        finally:
            writer.close()

    results = {}
    for concurrency in (1, clients):
        times: list[float] = []
        share = [captured[index::concurrency] for index in range(concurrency)]
        await asyncio.gather(*(connection(requests, times) for requests in share if requests))
        results[f"concurrency {concurrency}"] = latencies(times)
    return results


# --- the profile --------------------------------------------------------------------------------------------


MODEL_CALL = PROFILE_CATEGORIES[3][0]
# The model call's own parts, by the same first-match rule.
MODEL_CALL_PARTS: list[tuple[str, tuple[str, ...]]] = [
    ("openai SDK: request parameters transformed (_utils/_transform.py)", ("openai/_utils/_transform.py",)),
    ("openai SDK: a pydantic object per SSE chunk (_models.py construct)", ("openai/_models.py",)),
    ("openai SDK: SSE decoding (_streaming.py)", ("openai/_streaming.py",)),
    ("httpx/httpcore/anyio: sending the request, reading the response", ("/httpx/", "/httpcore/", "/anyio/", "/h11/")),
    ("openai SDK: request building, client, the rest", ("/openai/",)),
    ("langchain-openai: chunk to message conversion, payload", ("/langchain_openai/",)),
    ("langchain-core: astream wrapper, callbacks, AIMessageChunk merging", ("/langchain_core/",)),
    ("LLMService: resilience and accumulation (server/llm)", ("server/llm/",)),
]


@dataclass
class Recording:
    label: str
    turns: list[Turn]
    samples: dict[str, int]
    worker_cpu_seconds: float
    thread_cpu_seconds: dict[str, float]
    postgres_cpu_seconds: float
    metrics_delta: dict[str, float]
    path: Path
    pyspy_output: str


def run_profile(
    options: argparse.Namespace, server: ChatServer, turns: Turns, proxy: TimingProxy, database_url: str, base: Path
) -> dict[str, Any]:
    """A single-worker server under py-spy: short sessions, then turns 16-20 of long sessions."""
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(pyspy).exists():
        return {"skipped": "py-spy is not installed (.venv/bin/pip install py-spy)"}
    server.start()
    server.wait_until_ready(timeout=120)
    print(f"  profile: one worker on {server.base_url} under py-spy ...", flush=True)
    try:
        recordings = asyncio.run(_profile_phases(options, server, turns, proxy, pyspy, base))
        exit_code = server.stop()
    finally:
        server.kill_if_running()
    asyncio.run(_attach_recorded_latencies(database_url, [turn for r in recordings for turn in r.turns]))
    return {
        "server_exit_code_after_sigterm": exit_code,
        "server_log": _log_summary(server.log_path),
        "recordings": [_summarize_recording(recording, options.profile_rate) for recording in recordings],
    }


async def _profile_phases(
    options: argparse.Namespace, server: ChatServer, turns: Turns, proxy: TimingProxy, pyspy: str, base: Path
) -> list[Recording]:
    port = server.port
    assert server.process is not None
    pid, postmaster = server.process.pid, server.postmaster_pid()
    users = await register_users(port, 1)
    short = (await create_sessions(port, users, math.ceil(options.sequential_turns / options.turns_per_session)))[0]
    long = (await create_sessions(port, users, options.profile_long_sessions))[0]
    await drive(port, turns, "profile warm-up", [short[:2]], turns_per_session=3, max_turns=6, seconds=60)
    # The long sessions get their first 15 turns unrecorded; turns 16-20 are the ones profiled.
    for session in long:
        for index in range(1, 16):
            await send_turn(port, turns, "profile set-up", 0, session, index)
    proxy.take_calls()

    recordings = []
    for label, sessions, per_session, first_turn in (
        ("short sessions (turns 1-5)", short, options.turns_per_session, 1),
        ("long sessions (turns 16-20)", long, 5, 16),
    ):
        # --nonblocking reads the running worker: its CPU stays what it is without py-spy, at the price of a few
        # stacks torn between two moments. Pausing it for every sample (--profile-blocking) gives whole stacks but
        # inflates the worker's CPU by a third and more, and shifts the shares.
        pause = [] if options.profile_blocking else ["--nonblocking"]
        path = Path(f"{base}.pyspy-{'short' if first_turn == 1 else 'long'}.txt")
        metrics_before = await _model_metrics(port)
        cpu_before, threads_before = process_table(), _thread_cpu(pid)
        recorder = await asyncio.create_subprocess_exec(
            pyspy, "record", "--pid", str(pid), "--rate", str(options.profile_rate), *pause,
            "--format", "raw", "--full-filenames", "--nolineno", "-o", str(path),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        await asyncio.sleep(1.5)  # attached
        sent: list[Turn] = []
        for session in sessions:
            for index in range(first_turn, first_turn + per_session):
                sent.append(await send_turn(port, turns, f"profile: {label}", 0, session, index))
        await asyncio.sleep(0.2)
        recorder.send_signal(signal.SIGINT)
        async with asyncio.timeout(60):
            output = (await recorder.communicate())[0].decode(errors="replace")
        cpu_after, threads_after = process_table(), _thread_cpu(pid)
        metrics_after = await _model_metrics(port)
        _attach_model_calls(sent, proxy.take_calls())

        def used(pids: set[int], before: dict = cpu_before, after: dict = cpu_after) -> float:
            return sum(after[p][2] - before.get(p, (0, "", 0.0))[2] for p in pids if p in after)

        postgres = descendants(cpu_after, postmaster) if postmaster else set()
        recordings.append(
            Recording(
                label=label,
                turns=sent,
                samples=read_collapsed(path),
                worker_cpu_seconds=used(descendants(cpu_after, pid) - postgres),
                thread_cpu_seconds={
                    "event loop thread": threads_after.get(pid, 0.0) - threads_before.get(pid, 0.0),
                    "other threads (to_thread pool)": sum(
                        seconds - threads_before.get(tid, 0.0) for tid, seconds in threads_after.items() if tid != pid
                    ),
                },
                postgres_cpu_seconds=used(postgres),
                metrics_delta={
                    key: metrics_after.get(key, 0.0) - metrics_before.get(key, 0.0) for key in metrics_after
                },
                path=path,
                pyspy_output=output.strip().splitlines()[-1] if output.strip() else "",
            )
        )
    return recordings


def _thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of each thread of ``pid``."""
    threads = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            threads[int(task.name)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return threads


async def _model_metrics(port: int) -> dict[str, float]:
    """Sums and counts of the model layer's histograms, from /metrics (one worker: all of them)."""
    reply = await request(port, "GET", "/metrics")
    values: dict[str, float] = {}
    for line in reply.body.decode().splitlines():
        for name in ("agentctl_model_call_duration_seconds", "agentctl_model_time_to_first_token_seconds"):
            for suffix in ("_sum", "_count"):
                if line.startswith(f"{name}{suffix}{{") and 'role="chat"' in line:
                    values[f"{name}{suffix}"] = values.get(f"{name}{suffix}", 0.0) + float(line.rsplit(" ", 1)[1])
    return values


def _summarize_recording(recording: Recording, rate: int) -> dict[str, Any]:
    ok = [turn for turn in recording.turns if turn.ok]
    count = len(ok) or 1
    total = sum(recording.samples.values()) or 1
    by_category: collections.Counter[str] = collections.Counter()
    model_parts: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    for stack, samples in recording.samples.items():
        category = categorize(stack)
        by_category[category] += samples
        if category == MODEL_CALL:
            inner = ";".join(work_frames(stack))
            part = next((name for name, patterns in MODEL_CALL_PARTS if any(p in inner for p in patterns)), OTHER)
            model_parts[part] += samples
        frames = work_frames(stack)
        if frames and not frames[-1].startswith("_worker ("):
            leaves[frame_name(frames[-1])] += samples
            for name in {frame_name(frame) for frame in frames}:
                inclusive[name] += samples
    cpu_ms_per_turn = recording.worker_cpu_seconds * 1000 / count
    # py-spy counts the pool's threads parked in queue.get as active; /proc says they use under a millisecond per
    # turn, so their samples are left out and the rest is scaled to the worker's measured CPU.
    parked = by_category.pop(THREAD_WAITING, 0)
    active = (total - parked) or 1
    metrics = recording.metrics_delta
    calls = metrics.get("agentctl_model_call_duration_seconds_count", 0.0)
    return {
        "label": recording.label,
        "turns": len(recording.turns),
        "ok_turns": len(ok),
        "client_total_ms": latencies([turn.total_ms for turn in ok]),
        "server_own_ms": latencies([turn.own_ms for turn in ok]),
        "model_call_at_proxy_ms": latencies([turn.model_ms for turn in ok]),
        "before_model_call_ms": latencies([turn.before_model_ms or 0.0 for turn in ok]),
        "after_model_call_ms": latencies([turn.after_model_ms or 0.0 for turn in ok]),
        "recorded_turn_latency_ms": latencies([t.recorded_latency_ms for t in ok if t.recorded_latency_ms]),
        "model_layer_mean_ms (LLMService, from /metrics)": round(
            1000 * metrics.get("agentctl_model_call_duration_seconds_sum", 0.0) / calls, 2
        )
        if calls
        else None,
        "worker_cpu_ms_per_turn": round(cpu_ms_per_turn, 2),
        "worker_cpu_ms_per_turn_by_thread": {
            name: round(seconds * 1000 / count, 2) for name, seconds in recording.thread_cpu_seconds.items()
        },
        "postgres_cpu_ms_per_turn": round(recording.postgres_cpu_seconds * 1000 / count, 2),
        "samples": total,
        "samples_left_out_parked_pool_threads": parked,
        "sampled_ms_per_turn": round((total - parked) * 1000 / rate / count, 2),
        "categories": [
            {
                "category": category,
                "percent": round(100 * samples / active, 1),
                "cpu_ms_per_turn": round(cpu_ms_per_turn * samples / active, 2),
            }
            for category, samples in by_category.most_common()
        ],
        "model_call_parts": [
            {
                "part": part,
                "percent_of_worker": round(100 * samples / active, 1),
                "cpu_ms_per_turn": round(cpu_ms_per_turn * samples / active, 2),
            }
            for part, samples in model_parts.most_common()
        ],
        "top_inclusive": [
            {"frame": name, "percent": round(100 * samples / active, 1)} for name, samples in inclusive.most_common(50)
        ],
        "top_leaves": [
            {"frame": name, "percent": round(100 * samples / active, 1)} for name, samples in leaves.most_common(25)
        ],
        "collapsed_stacks": str(recording.path),
        "py_spy": recording.pyspy_output,
    }


# --- the report ---------------------------------------------------------------------------------------------


def _log_summary(path: Path) -> dict[str, Any]:
    lines = path.read_text(errors="replace").splitlines() if path.exists() else []
    flagged = [line for line in lines if any(mark in line for mark in ("ERROR", "CRITICAL", "Traceback", "WARNING"))]
    return {"path": str(path), "lines": len(lines), "warnings_and_errors": len(flagged), "first": flagged[:10]}


def _summarize_run(run: PhaseRun) -> dict[str, Any]:
    ok = [turn for turn in run.turns if turn.ok]
    failures = collections.Counter(
        turn.error or f"{len(turn.model_calls)} model calls seen by the proxy" for turn in run.turns if not turn.ok
    )
    first = [turn for turn in ok if turn.turn_in_session == 1]
    seconds = (max(t.ended for t in run.turns) - min(t.started for t in run.turns)) if run.turns else run.seconds
    summary: dict[str, Any] = {
        "clients": run.clients,
        "turns_per_session": run.turns_per_session,
        "turns": len(run.turns),
        "ok": len(ok),
        "failures": dict(failures.most_common(10)),
        "seconds": round(seconds, 2),
        "turns_per_second": round(len(ok) / seconds, 1) if seconds else None,
        "turns_per_worker": dict(collections.Counter(turn.worker_pid or "?" for turn in run.turns).most_common()),
        "server_own_ms": latencies([turn.own_ms for turn in ok]),
        "server_own_ms_first_turn_of_session": latencies([turn.own_ms for turn in first]),
        "client_total_ms": latencies([turn.total_ms for turn in ok]),
        "model_call_at_proxy_ms": latencies([turn.model_ms for turn in ok]),
        "before_model_call_ms": latencies([turn.before_model_ms or 0.0 for turn in ok]),
        "after_model_call_ms": latencies([turn.after_model_ms or 0.0 for turn in ok]),
        "recorded_turn_latency_ms": latencies([t.recorded_latency_ms for t in ok if t.recorded_latency_ms]),
        "outside_recorded_turn_ms": latencies(
            [turn.total_ms - turn.recorded_latency_ms for turn in ok if turn.recorded_latency_ms]
        ),
        "cpu": run.cpu,
    }
    cpu_seconds = run.cpu.get("cpu_seconds", {})
    if ok and cpu_seconds:
        summary["cpu_ms_per_turn"] = {name: round(value * 1000 / len(ok), 2) for name, value in cpu_seconds.items()}
    if run.turns_per_session > 1:
        by_index: dict[int, list[float]] = collections.defaultdict(list)
        for turn in ok:
            by_index[turn.turn_in_session].append(turn.own_ms)
        summary["server_own_ms_by_turn_of_session"] = {
            index: {
                "p50": round(percentile(sorted(values), 0.5) or 0.0, 1),
                "max": round(max(values), 1),
                "n": len(values),
            }
            for index, values in sorted(by_index.items())
        }
    return summary


def build_report(
    *,
    options: argparse.Namespace,
    phases: dict[str, Any],
    profile: dict[str, Any] | None,
    load_average_before: list[float],
    wall_seconds: float,
    raised: dict[str, str],
) -> dict[str, Any]:
    runs = {name: _summarize_run(run) for name, run in phases["runs"].items()}
    sequential, concurrent = runs["sequential"], runs["concurrent"]
    p50 = sequential["server_own_ms"]["p50"]
    checks = {
        f"sequential: server's own p50 < {options.target_p50_ms:g} ms": p50 is not None and p50 < options.target_p50_ms,
        "every turn answered (200, one model call, an answer)": all(not run["failures"] for run in runs.values()),
    }
    return {
        "benchmark": "chat turns",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": datetime.datetime.now(tz=datetime.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cores": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average_before": load_average_before,
        },
        "configuration": {
            "workers": options.workers,
            "clients": options.clients,
            "turns_per_session": options.turns_per_session,
            "simulator": "defaults: instant (no ttft, no token rate), 24-token answers, streamed (the agent streams "
            "even for a non-streamed turn)",
            "raised_via_environment": raised,
            "redis": REDIS_URL,
            "database": "embedded PostgreSQL (pgserver) in a fresh temporary data dir, via DATABASE_URL",
            "client": "asyncio HTTP/1.1, a new loopback connection per request",
        },
        "health_floor_ms": latencies(phases["health_floor_ms"]),
        **runs,
        "simulator_direct_replay_ms": phases["replay"],
        "profile": profile,
        "wall_seconds": round(wall_seconds, 1),
        "verdict": {"checks": checks, "pass": all(checks.values())},
        "turns_per_second_concurrent": concurrent["turns_per_second"],
    }


def print_report(report: dict[str, Any]) -> None:
    def latency(summary: dict[str, Any]) -> str:
        return " / ".join(str(summary.get(key)) for key in ("p50", "p95", "p99", "max"))

    print()
    print("  milliseconds, p50 / p95 / p99 / max")
    print(f"  GET /health (floor)         {latency(report['health_floor_ms'])}")
    for name in ("sequential", "history", "concurrent"):
        run = report[name]
        print(
            f"  {name:<11} {run['ok']}/{run['turns']} ok in {run['seconds']} s = {run['turns_per_second']} turns/s "
            f"({run['clients']} client(s), sessions of {run['turns_per_session']})"
        )
        for label, key in (
            ("server's own", "server_own_ms"),
            ("  first turn of a session", "server_own_ms_first_turn_of_session"),
            ("client total", "client_total_ms"),
            ("model call (proxy)", "model_call_at_proxy_ms"),
            ("before the model call", "before_model_call_ms"),
            ("after the model call", "after_model_call_ms"),
            ("chat_turns.latency_ms", "recorded_turn_latency_ms"),
            ("outside chat_turns", "outside_recorded_turn_ms"),
        ):
            print(f"    {label:<26}{latency(run[key])}")
        print(f"    turns per worker pid       {run['turns_per_worker']}")
        if "cpu_ms_per_turn" in run:
            print(f"    CPU ms per turn            {run['cpu_ms_per_turn']}")
            print(f"    machine busy               {run['cpu']['machine_busy_percent_of_all_cores']}% of all cores")
        if "server_own_ms_by_turn_of_session" in run and run["turns_per_session"] > 5:
            row = run["server_own_ms_by_turn_of_session"]
            print("    own p50 by turn            " + ", ".join(f"{i}: {v['p50']}" for i, v in row.items()))
        for failure, count in run["failures"].items():
            print(f"    failure                    {count} x {failure}")
    for label, summary in report["simulator_direct_replay_ms"].items():
        print(f"  simulator direct, {label:<10}{latency(summary)}")
    profile = report.get("profile") or {}
    for recording in profile.get("recordings", []):
        print(
            f"  profile, {recording['label']}: {recording['ok_turns']} turns, own p50 "
            f"{recording['server_own_ms']['p50']} ms, worker CPU {recording['worker_cpu_ms_per_turn']} ms/turn, "
            f"PostgreSQL {recording['postgres_cpu_ms_per_turn']} ms/turn, model layer mean "
            f"{recording['model_layer_mean_ms (LLMService, from /metrics)']} ms"
        )
        print(f"    worker CPU by thread, ms/turn: {recording['worker_cpu_ms_per_turn_by_thread']}")
        for row in recording["categories"]:
            print(f"    {row['percent']:5.1f}%  {row['cpu_ms_per_turn']:6.2f} ms  {row['category']}")
            if row["category"] == MODEL_CALL:
                for part in recording["model_call_parts"]:
                    print(f"            {part['cpu_ms_per_turn']:6.2f} ms    {part['part']}")
    if profile.get("skipped"):
        print(f"  profile skipped: {profile['skipped']}")
    print()
    for check, passed in report["verdict"]["checks"].items():
        print(f"  [{'PASS' if passed else 'FAIL'}] {check}")
    print(f"  {'PASS' if report['verdict']['pass'] else 'FAIL'}")


if __name__ == "__main__":
    sys.exit(main())
