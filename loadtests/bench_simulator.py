"""Requests per second the LLM simulator serves on ONE core, so a load test knows it is never the bottleneck.

    .venv/bin/python loadtests/bench_simulator.py [--seconds 10] [--connections 64] [--wrk]

The simulator runs as `agentctl llm simulate` pinned to core 0 (taskset); this process, the load generator, pins
itself to the other cores. The generator is a minimal HTTP/1.1 client on raw asyncio streams (uvloop when
installed) with keep-alive connections, because httpx would saturate its own core long before the server's.
Scenarios: non-streaming chat completions, streaming ones (24 tokens + usage chunk + [DONE]) and embeddings
(one 384-dim input). ``--wrk`` cross-checks the non-streaming figure with wrk when it is installed. Loopback only,
bounded in time; the report is printed and written to loadtests/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from agentctl.simulator import RunningSimulator

REPO_ROOT = Path(__file__).resolve().parent.parent

CHAT_BODY = {
    "model": "gpt-4o-mini",
    "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What should I cook tonight with rice, beans and a few tomatoes?"},
    ],
}
SCENARIOS = {
    "chat": ("/v1/chat/completions", CHAT_BODY),
    "stream": ("/v1/chat/completions", {**CHAT_BODY, "stream": True, "stream_options": {"include_usage": True}}),
    "embeddings": ("/v1/embeddings", {"model": "text-embedding-3-small", "input": "rice, beans and tomatoes"}),
}


@dataclass
class Result:
    scenario: str
    seconds: float
    ok: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)
    server_cpu_seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.ok / self.seconds

    def percentile(self, share: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))] * 1000 if ordered else float("nan")

    def as_dict(self) -> dict[str, object]:
        return {
            "scenario": self.scenario,
            "requests_per_second": round(self.rate),
            "ok": self.ok,
            "errors": self.errors,
            "seconds": round(self.seconds, 2),
            "p50_ms": round(self.percentile(0.50), 2),
            "p99_ms": round(self.percentile(0.99), 2),
            "server_cpu_share": round(self.server_cpu_seconds / self.seconds, 2),
        }


async def _read_response(reader: asyncio.StreamReader) -> int:
    """Status of one HTTP/1.1 response, its body read (Content-Length or chunked)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lowered = head.lower()
    marker = lowered.find(b"content-length:")
    if marker >= 0:
        length = int(lowered[marker + 15 : lowered.index(b"\r\n", marker)])
        await reader.readexactly(length)
        return status
    while True:  # chunked
        size = int((await reader.readuntil(b"\r\n"))[:-2], 16)
        await reader.readexactly(size + 2)
        if size == 0:
            return status


async def _connection(port: int, request: bytes, deadline: float, result: Result) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    clock = time.perf_counter
    try:
        while clock() < deadline:
            started = clock()
            writer.write(request)
            status = await _read_response(reader)
            if status == 200:
                result.ok += 1
                result.latencies.append(clock() - started)
            else:
                result.errors += 1
    finally:
        writer.close()


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run_scenario(name: str, port: int, pid: int, seconds: float, connections: int) -> Result:
    path, body = SCENARIOS[name]
    payload = json.dumps(body).encode()
    request = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer sim\r\nContent-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload
    warmup = Result(name, 1.0)
    await asyncio.gather(*(_connection(port, request, time.perf_counter() + 1.0, warmup) for _ in range(8)))
    result = Result(name, seconds)
    cpu_before = _cpu_seconds(pid)
    started = time.perf_counter()
    await asyncio.gather(*(_connection(port, request, started + seconds, result) for _ in range(connections)))
    result.seconds = time.perf_counter() - started
    result.server_cpu_seconds = _cpu_seconds(pid) - cpu_before
    return result


def run_wrk(port: int, seconds: float, connections: int, generator_cores: str) -> dict[str, object] | None:
    """wrk's figure for non-streaming chat, as a cross-check of the Python generator."""
    if shutil.which("wrk") is None:
        return None
    path, body = SCENARIOS["chat"]
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(
            f'wrk.method = "POST"\nwrk.body = {json.dumps(json.dumps(body))}\n'
            'wrk.headers["Content-Type"] = "application/json"\n'
        )
    try:
        command = ["wrk", "-t1", f"-c{connections}", f"-d{int(seconds)}s", "-s", script.name]
        if shutil.which("taskset"):
            command = ["taskset", "-c", generator_cores, *command]
        output = subprocess.run(
            [*command, f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True, timeout=seconds + 30
        ).stdout
    finally:
        os.unlink(script.name)
    rate = next((line.split()[1] for line in output.splitlines() if line.startswith("Requests/sec:")), None)
    return {"requests_per_second": round(float(rate)) if rate else None, "output": output}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="Measured seconds per scenario.")
    parser.add_argument("--connections", type=int, default=64, help="Keep-alive connections of the generator.")
    parser.add_argument(
        "--scenarios", default="chat,stream,embeddings", help="Comma-separated: chat,stream,embeddings."
    )
    parser.add_argument("--wrk", action="store_true", help="Also measure non-streaming chat with wrk, if installed.")
    arguments = parser.parse_args()

    cores = sorted(os.sched_getaffinity(0))
    server_core, generator_cores = cores[0], set(cores[1:]) or {cores[0]}
    prefix = ("taskset", "-c", str(server_core)) if shutil.which("taskset") and len(cores) > 1 else ()
    os.sched_setaffinity(0, generator_cores)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    report: dict[str, object] = {
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "server_core": server_core if prefix else "unpinned",
        "generator_cores": sorted(generator_cores),
        "connections": arguments.connections,
        "results": [],
    }
    print(
        f"LLM simulator on core {report['server_core']}, generator on cores {sorted(generator_cores)}, "
        f"{arguments.connections} keep-alive connections, {arguments.seconds:g} s per scenario"
    )
    with RunningSimulator(prefix=prefix) as simulator:
        port = int(simulator.url.rsplit(":", 1)[1])
        for name in arguments.scenarios.split(","):
            result = asyncio.run(
                run_scenario(name, port, simulator.process.pid, arguments.seconds, arguments.connections)
            )
            report["results"].append(result.as_dict())  # type: ignore[attr-defined]
            print(
                f"  {name:<11} {result.rate:>8.0f} req/s   p50 {result.percentile(0.5):6.2f} ms   "
                f"p99 {result.percentile(0.99):6.2f} ms   errors {result.errors}   "
                f"server CPU {result.server_cpu_seconds / result.seconds:.0%} of a core"
            )
        if arguments.wrk:
            wrk = run_wrk(port, arguments.seconds, arguments.connections, ",".join(map(str, sorted(generator_cores))))
            report["wrk_chat"] = wrk
            print(f"  wrk chat    {wrk['requests_per_second'] if wrk else 'wrk not installed'} req/s")
        stats = simulator.stats()
        report["simulator_stats"] = {"requests": stats["requests"], "outcomes": stats["outcomes"]}
    results_dir = REPO_ROOT / "loadtests" / "results"
    results_dir.mkdir(exist_ok=True)
    path = results_dir / f"bench-simulator-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"report: {path.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
