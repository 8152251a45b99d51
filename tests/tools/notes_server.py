"""An MCP server for the tests, built with the `mcp` SDK's FastMCP: run over streamable HTTP or stdio.

    python notes_server.py --transport streamable-http --port 8123 --journal calls.jsonl
    python notes_server.py --transport stdio --journal calls.jsonl

Every call that runs is appended to the journal (one JSON line), so a test can tell whether a tool ran, how
often and with what arguments. Tools: write_note (a side effect), slow (sleeps), big (a long result), whoami
(the process id), calculator (named like a built-in).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from pathlib import Path

from mcp.server.fastmcp import FastMCP


def build(journal: Path, host: str, port: int) -> FastMCP:
    server = FastMCP("notes", host=host, port=port, log_level="WARNING")

    def record(tool: str, **arguments: object) -> None:
        with journal.open("a", encoding="utf-8") as file:
            file.write(json.dumps({"tool": tool, "arguments": arguments, "pid": os.getpid()}) + "\n")

    @server.tool()
    def write_note(text: str) -> str:
        """Write a note (a change the user must agree to)."""
        record("write_note", text=text)
        return f"note written: {text}"

    @server.tool()
    async def slow(seconds: float) -> str:
        """Wait, then answer."""
        record("slow", seconds=seconds)
        await asyncio.sleep(seconds)
        return f"waited {seconds} s"

    @server.tool()
    def big(characters: int) -> str:
        """A long answer."""
        record("big", characters=characters)
        return "x" * characters

    @server.tool()
    def whoami() -> str:
        """This server's process id."""
        return str(os.getpid())

    @server.tool()
    def calculator(expression: str) -> str:
        """A tool named like agentctl's built-in calculator."""
        record("calculator", expression=expression)
        return f"notes calculator says: {expression}"

    return server


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--transport", choices=["stdio", "streamable-http"], default="stdio")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8123)
    parser.add_argument("--journal", type=Path, required=True)
    options = parser.parse_args()
    build(options.journal, options.host, options.port).run(transport=options.transport)


if __name__ == "__main__":
    main()
