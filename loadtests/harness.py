"""What the benchmark scripts share: the server under test, CPU accounting from /proc, percentiles, reports,
and the py-spy profile's categories. Scripts import it as `harness` (their own folder is on sys.path when run)."""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

LOADTESTS = Path(__file__).resolve().parent
REPO = LOADTESTS.parent
_TICKS = os.sysconf("SC_CLK_TCK")


RAISED_LIMIT = "100000/hour"


REDIS_URL = "redis://127.0.0.1:6379/15"


def save_and_print(report: dict[str, Any], path: Path, printer: Callable[[dict[str, Any]], None]) -> int:
    """Write the report as JSON, print it for people, and return the exit code its verdict asks for."""
    path.write_text(json.dumps(report, indent=2) + "\n")
    printer(report)
    print(f"  report: {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
    return 0 if report["verdict"]["pass"] else 1


class Server:
    """`agentctl serve` in its own session, on a fresh embedded database, with limits raised for the storm."""

    def __init__(self, data_dir: Path, workers: int, key_prefix: str, log_path: Path) -> None:
        self.data_dir = data_dir
        self.workers = workers
        from agentctl.loadtest.runner import free_loopback_port

        self.port = free_loopback_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.key_prefix = key_prefix
        self.process: subprocess.Popen[bytes] | None = None

    def environment(self) -> dict[str, str]:
        from agentctl.config import environment_without_settings

        environ = environment_without_settings(os.environ)
        environ.update(
            AGENTCTL_ENV="test",
            AGENTCTL_DATA_DIR=str(self.data_dir),
            AGENTCTL_SERVER__PORT=str(self.port),
            REDIS_URL=REDIS_URL,
            AGENTCTL_REDIS__KEY_PREFIX=self.key_prefix,
            # One IP sends the whole storm; the production defaults (10/hour, 20/minute) would refuse it.
            AGENTCTL_RATELIMIT__REGISTER_PER_IP=RAISED_LIMIT,
            AGENTCTL_RATELIMIT__LOGIN_PER_IP=RAISED_LIMIT,
            AGENTCTL_RATELIMIT__LOGIN_PER_EMAIL=RAISED_LIMIT,
        )
        return environ

    def start(self) -> None:
        from agentctl.loadtest.runner import start_serve

        self.process = start_serve(self.data_dir, self.port, self.workers, self.environment(), self.log_path)

    def wait_until_ready(self, timeout: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"serve exited with {self.process.returncode}; see {self.log_path}")
            status, _ = http_get(self.base_url, "/health/ready", timeout=2)
            if status == 200:
                return
            time.sleep(0.2)
        raise SystemExit(f"serve was not ready within {timeout} s; see {self.log_path}")

    def stop(self, timeout: float = 60) -> int | None:
        """SIGTERM, as an orchestrator sends it; the exit code, or None when it had to be killed."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill_if_running()
            return None

    def kill_if_running(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def postmaster_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.data_dir / "postgres" / "postmaster.pid").read_text().split()[0])
        return None


def http_get(base_url: str, path: str, timeout: float) -> tuple[int | None, float]:
    """(status, milliseconds) of one GET on a new connection; status None when it did not answer."""
    host, port = base_url.removeprefix("http://").split(":")
    began = time.perf_counter()
    connection = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        connection.request("GET", path, headers={"Connection": "close"})
        response = connection.getresponse()
        response.read()
        return response.status, (time.perf_counter() - began) * 1000
    except OSError:
        return None, (time.perf_counter() - began) * 1000
    finally:
        connection.close()


def delete_redis_keys(prefix: str) -> None:
    with contextlib.suppress(Exception):
        import redis

        client = redis.Redis.from_url(REDIS_URL, socket_timeout=2)
        keys = list(client.scan_iter(match=f"*{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


def process_table() -> dict[int, tuple[int, str, float]]:
    """pid -> (parent pid, name, CPU seconds) for every process now."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            raw = (entry / "stat").read_text()
            name = raw[raw.index("(") + 1 : raw.rindex(")")]
            fields = raw[raw.rindex(")") + 2 :].split()
            table[int(entry.name)] = (int(fields[1]), name, (int(fields[11]) + int(fields[12])) / _TICKS)
    return table


def descendants(table: dict[int, tuple[int, str, float]], root: int) -> set[int]:
    found, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, _, _) in table.items():
            if ppid == parent and pid not in found:
                found.add(pid)
                frontier.append(pid)
    return found & table.keys()


def busy_cpu_seconds() -> float:
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / _TICKS


def percentile(sorted_values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


def latencies(values: list[float]) -> dict[str, Any]:
    ordered = sorted(values)
    summary: dict[str, Any] = {"count": len(ordered)}
    for label, fraction in (("p50", 0.50), ("p95", 0.95), ("p99", 0.99)):
        value = percentile(ordered, fraction)
        summary[label] = None if value is None else round(value, 1)
    summary["max"] = round(ordered[-1], 1) if ordered else None
    summary["mean"] = round(statistics.fmean(ordered), 1) if ordered else None
    return summary


def release(servers: list[Any], database: Any, key_prefix: str, data_dir: Path, *, keep_data: bool) -> None:
    """Whatever happened: servers killed, the database stopped, Redis keys and the data dir removed."""
    for running in servers:
        running.kill_if_running()
    database.stop()
    delete_redis_keys(key_prefix)
    if not keep_data:
        shutil.rmtree(data_dir, ignore_errors=True)


def migrate(url: str, data_dir: Path) -> None:
    """`agentctl migrate`, as an operator runs it against an external database."""
    environ = {key: value for key, value in os.environ.items() if not key.startswith("AGENTCTL_")}
    environ.update(DATABASE_URL=url, AGENTCTL_ENV="test", AGENTCTL_DATA_DIR=str(data_dir))
    done = subprocess.run(
        [sys.executable, "-m", "agentctl", "migrate"], cwd=data_dir, env=environ, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"agentctl migrate failed:\n{done.stdout}{done.stderr}")


def simulated_chat_environment(database_url: str, model_url: str) -> dict[str, str]:
    """A benchmark server's database, its simulated chat model, and chat limits raised: a handful of users send
    far more turns than the defaults allow (100 chats a minute per user), and the server, not the limiter, is
    what is measured. Limiting stays on: every request still pays for its check."""
    return {
        "DATABASE_URL": database_url,
        "AGENTCTL_LLM__BASE_URL": model_url,
        "AGENTCTL_LLM__MODEL": "chat-model",
        "OPENAI_API_KEY": "sim",
        "AGENTCTL_RATELIMIT__CHAT": RAISED_LIMIT,
        "AGENTCTL_RATELIMIT__DEFAULT": RAISED_LIMIT,
    }


# Where a sample's time went, decided by the first rule (top to bottom) that matches a frame of its stack.
# Frames that enclose a whole request (uvicorn, Litestar, the middleware, the route, run_turn, the LangGraph
# loop) are only matched by the late, general rules, so that a specific step claims its own time first.
PROFILE_CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("logging: stdlib records routed into loguru", ("/loguru/", "/logging/__init__.py", "observability/logging.py")),
    ("trimming and token counting (context.py, trim_messages)", ("agent/context.py", "langchain_core/messages/utils")),
    ("system prompt rendering (prompts.py)", ("agent/prompts.py",)),
    (
        "model call: LLMService + langchain-openai + openai SDK + httpx",
        ("server/llm/", "/langchain_openai/", "/openai/", "/httpx/", "/httpcore/", "/h11/", "/anyio/"),
    ),
    ("checkpoint read by aget_state() before the run", ("aget_state ",)),
    (
        "checkpoint load/save in the run (checkpoint-postgres, serde, psycopg)",
        ("/langgraph/checkpoint/", "/psycopg/", "/psycopg_pool/"),
    ),
    ("turn lock: advisory lock take/release", ("_take_turn_lock ", "_release_turn_lock ")),
    ("turn record insert (chat_turns)", ("_record (",)),
    ("session ownership check", ("sessions/service.py",)),
    ("auth: bearer token and revocation check", ("server/auth/",)),
    ("rate limit (limits + Redis)", ("ratelimit/service.py", "/limits/", "/redis/")),
    ("metrics (prometheus_client)", ("/prometheus_client/",)),
    ("LangGraph runtime (pregel loop, channels, tasks, runnables, callbacks)", ("/langgraph/", "/langchain_core/")),
    ("database driver outside the above (asyncpg, piccolo)", ("/asyncpg/", "/piccolo/")),
    ("chat service: the turn's task and event queue (chat/service.py)", ("chat/service.py",)),
    (
        "HTTP: uvicorn, Litestar (routing, DI, msgspec), middleware, route",
        ("/uvicorn/", "/litestar/", "/msgspec/", "/httptools/", "server/"),
    ),
]


EVENT_LOOP = "event loop: uvloop and C-level callbacks (no Python frame of a task)"


THREAD_WAITING = "worker threads (to_thread) with no Python frame: GIL or queue waits"


OTHER = "anything else"


# Frames every sample of a thread starts with; they say nothing about the work, so they are cut off first.
_LOOP_ROOT = "Runner.run ("


_THREAD_ROOT = "_WorkItem.run ("


def work_frames(stack: str) -> list[str]:
    """The frames of a sample below the event loop's or the thread pool's own."""
    frames = stack.split(";")
    roots = [index for index, frame in enumerate(frames) if frame.startswith((_LOOP_ROOT, _THREAD_ROOT))]
    return frames[roots[-1] + 1 :] if roots else frames


def categorize(stack: str) -> str:
    frames = work_frames(stack)
    if not frames or frames[-1].startswith("_worker ("):
        return THREAD_WAITING if "_worker (" in stack else EVENT_LOOP
    inner = ";".join(frames)
    for category, patterns in PROFILE_CATEGORIES:
        if any(pattern in inner for pattern in patterns):
            return category
    return OTHER


def read_collapsed(path: Path) -> dict[str, int]:
    samples: dict[str, int] = {}
    if path.exists():
        for line in path.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if stack and count.isdigit():
                samples[stack] = samples.get(stack, 0) + int(count)
    return samples


def frame_name(frame: str) -> str:
    """``function (/long/path/site-packages/package/module.py)`` -> ``function (package/module.py)``."""
    function, _, where = frame.partition(" (")
    where = where.rstrip(")")
    for anchor in ("site-packages/", "/work/main/", str(REPO) + "/", "/lib/python3"):
        if anchor in where:
            where = where.split(anchor, 1)[1]
            break
    return f"{function} ({where})"
