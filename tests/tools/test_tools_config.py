"""The MCP servers file (JSON in the mcpServers shape, or TOML), the per-tool rules, and `agentctl tools`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agentctl.cli import app
from agentctl.config import SettingsError, environment_without_settings, load_settings
from tests.tools.conftest import TIME_SERVER, NotesServer, write_servers_file

runner = CliRunner()


def settings_with(tmp_path: Path, text: str, name: str = "mcp.json", **environ: str):  # type: ignore[no-untyped-def]
    path = tmp_path / name
    path.write_text(text)
    return load_settings(environ={"AGENTCTL_AGENT__MCP_SERVERS_FILE": str(path), **environ}, env_file_dir=tmp_path)


def test_the_mcp_servers_shape_of_other_clients_is_read_with_secrets_from_the_environment(tmp_path: Path) -> None:
    document = {
        "mcpServers": {
            "files": {
                "command": "npx",
                "args": ["-y", "files-server", "${HOME_DIR:-/srv}"],
                "env": {"KEY": "${FILES_KEY}"},
            },
            "remote": {
                "type": "http",
                "url": "https://mcp.example.com/mcp",
                "headers": {"Authorization": "Bearer ${TOKEN}"},
            },
            "old": {"command": "legacy", "disabled": True},
        },
        "tools": {"files__delete": {"policy": "deny"}, "web_search": {"policy": "approve", "timeout_seconds": 5}},
    }
    settings = settings_with(tmp_path, json.dumps(document), FILES_KEY="k-123", TOKEN="t-456").agent
    files, remote, old = settings.mcp_servers["files"], settings.mcp_servers["remote"], settings.mcp_servers["old"]
    assert (files.transport, files.args, files.env["KEY"].get_secret_value()) == (
        "stdio",
        ["-y", "files-server", "/srv"],
        "k-123",
    )
    assert remote.transport == "streamable_http"
    assert remote.headers["Authorization"].get_secret_value() == "Bearer t-456"
    assert remote.policy == "approve"  # an MCP server's tools wait for the user unless the operator trusts them
    assert old.enabled is False
    assert settings.tools["files__delete"].policy == "deny"
    assert settings.tools["web_search"].timeout_seconds == 5


def test_the_same_in_toml(tmp_path: Path) -> None:
    text = """
[mcp_servers.time]
command = "mcp-server-time"
policy = "allow"
timeout_seconds = 3

[tools.time__convert_time]
policy = "approve"
"""
    settings = settings_with(tmp_path, text, "mcp.toml").agent
    assert settings.mcp_servers["time"].timeout_seconds == 3
    assert settings.tools["time__convert_time"].policy == "approve"


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ({"mcpServers": {"a": {"url": "https://x/${NOT_SET}"}}}, "server a: ${NOT_SET} is not set in the environment"),
        ({"mcpServers": {"a": {"type": "sse", "url": "https://x"}}}, "the SSE transport is deprecated"),
        ({"mcpServers": {"a__b": {"command": "x"}}}, "server name 'a__b'"),
        ({"mcpServers": {"a": {"command": "x", "url": "https://x"}}}, "give either command"),
        ({"mcpServers": {"a": {"url": "file:///etc/passwd"}}}, "url must be http or https"),
        ({"servers": {}}, "unknown keys ['servers']"),
        ({"mcpServers": {"a": {"command": "x", "policy": "maybe"}}}, "__A__POLICY from"),
    ],
)
def test_a_bad_servers_file_is_one_clear_line(tmp_path: Path, document: dict, expected: str) -> None:
    with pytest.raises(SettingsError) as raised:
        settings_with(tmp_path, json.dumps(document))
    assert expected in str(raised.value)


def test_a_servers_file_that_does_not_parse_names_itself(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"mcp.json: not valid JSON"):
        settings_with(tmp_path, '{"mcpServers": ')


def test_config_show_never_prints_header_or_environment_secrets(tmp_path: Path) -> None:
    path = write_servers_file(
        tmp_path / "mcp.json",
        {
            "remote": {"url": "https://x/mcp", "headers": {"Authorization": "Bearer ${TOKEN}"}},
            "local": {"command": "x", "env": {"KEY": "plain-key-value"}},
        },
    )
    result = runner.invoke(
        app, ["config", "show"], env={"AGENTCTL_AGENT__MCP_SERVERS_FILE": str(path), "TOKEN": "secret-token-value"}
    )
    assert result.exit_code == 0, result.output
    assert "secret-token-value" not in result.output
    assert "plain-key-value" not in result.output
    assert "Authorization=********" in result.output


def test_agentctl_tools_lists_every_tool_with_its_source_and_policy(tmp_path: Path) -> None:
    path = write_servers_file(
        tmp_path / "mcp.json",
        {"time": {"command": TIME_SERVER, "policy": "allow"}},
        tools={"web_search": {"policy": "deny"}, "time__convert_time": {"policy": "approve"}},
    )
    result = runner.invoke(app, ["tools"], env={"AGENTCTL_AGENT__MCP_SERVERS_FILE": str(path), "COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): line for line in result.output.splitlines() if line.startswith("│")}
    assert "deny" in rows["web_search"]
    assert "built-in" in rows["web_search"]
    assert "allow" in rows["calculator"]
    assert "not checked" in rows["time__*"]
    assert "approve" in rows["time__convert_time"]


@pytest.mark.slow
def test_agentctl_tools_check_lists_each_servers_tools_and_fails_on_a_server_that_does_not_answer(
    tmp_path: Path, notes_http: NotesServer
) -> None:
    """Talks to the reference stdio server from PyPI (mcp-server-time) and the tests' streamable-HTTP server."""
    path = write_servers_file(
        tmp_path / "mcp.json",
        {
            "time": {"command": TIME_SERVER, "policy": "allow"},
            "notes": {"url": notes_http.url},
            "gone": {"url": "http://127.0.0.1:9/mcp", "connect_timeout_seconds": 2},
        },
        tools={"notes__whoami": {"policy": "deny"}, "notes__typo": {"policy": "deny"}},
    )
    # A process of its own: a stdio server's stderr is the command's own (CliRunner's capture has no file descriptor).
    result = subprocess.run(
        [sys.executable, "-m", "agentctl", "tools", "--check"],
        env={
            **environment_without_settings(os.environ),
            "AGENTCTL_AGENT__MCP_SERVERS_FILE": str(path),
            "COLUMNS": "200",
        },
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    rows = {line.split("│")[1].strip(): line for line in result.stdout.splitlines() if line.startswith("│")}
    assert "ok" in rows["time__get_current_time"]
    assert "allow" in rows["time__get_current_time"]
    assert "approve" in rows["notes__write_note"]
    assert "mcp notes (http)" in rows["notes__write_note"]
    assert "deny" in rows["notes__whoami"]
    assert "FAIL" in rows["gone__*"]
    assert "the rule for tool notes__typo matches no tool" in result.stderr
