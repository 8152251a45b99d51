from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import free_port

NOTES_SERVER = Path(__file__).with_name("notes_server.py")
# The reference stdio server from PyPI (mcp-server-time), installed beside agentctl.
TIME_SERVER = str(Path(sys.executable).with_name("mcp-server-time"))


@dataclass
class NotesServer:
    """The tests' MCP server (notes_server.py) over streamable HTTP, with the journal of the calls it ran."""

    url: str
    journal: Path
    process: subprocess.Popen[bytes]

    def calls(self, tool: str | None = None) -> list[dict[str, Any]]:
        if not self.journal.exists():
            return []
        lines = [json.loads(line) for line in self.journal.read_text().splitlines() if line]
        return [line for line in lines if tool is None or line["tool"] == tool]


@pytest.fixture(scope="module")
def notes_http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NotesServer]:
    """notes_server.py served over streamable HTTP by the `mcp` SDK, on loopback."""
    journal = tmp_path_factory.mktemp("notes") / "calls.jsonl"
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            str(NOTES_SERVER),
            "--transport",
            "streamable-http",
            "--port",
            str(port),
            "--journal",
            str(journal),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/mcp"
    deadline = time.monotonic() + 20
    while True:
        try:
            httpx.get(url, timeout=1)
            break
        except httpx.TransportError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError("the notes MCP server did not start") from None
            time.sleep(0.1)
    try:
        yield NotesServer(url, journal, process)
    finally:
        process.terminate()
        process.wait(timeout=10)


def notes_stdio(journal: Path) -> dict[str, Any]:
    """notes_server.py as a stdio server (started and supervised by agentctl)."""
    return {"command": sys.executable, "args": [str(NOTES_SERVER), "--transport", "stdio", "--journal", str(journal)]}


def write_servers_file(path: Path, servers: dict[str, Any], tools: dict[str, Any] | None = None) -> Path:
    """An MCP servers file in the mcpServers shape other clients use."""
    path.write_text(json.dumps({"mcpServers": servers, "tools": tools or {}}, indent=2))
    return path
