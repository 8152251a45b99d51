"""The official `openai` npm package, run by Node (installed from the npm registry into the test's own folder),
against a real `agentctl serve` with the simulator as its model."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.apikeys.conftest import KeyHolder
from tests.openai_compat.conftest import AGENT, v1_url

NODE_PROJECT = Path(__file__).parent / "node"


@pytest.fixture(scope="module")
def node_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The check script with `openai` installed beside it (a copy: nothing is installed into the repository)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    assert node, "Node.js is needed for this test (the README's test command installs it)"
    assert npm, "npm is needed for this test (the README's test command installs it)"
    folder = tmp_path_factory.mktemp("node-openai")
    for name in ("package.json", "check.mjs"):
        shutil.copy(NODE_PROJECT / name, folder / name)
    installed = subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert installed.returncode == 0, installed.stderr
    return folder


def test_the_openai_npm_package_talks_to_the_agent(node_project: Path, holder: KeyHolder) -> None:
    ran = subprocess.run(
        ["node", "check.mjs"],
        cwd=node_project,
        env={
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "AGENTCTL_V1": v1_url(holder.api),
            "AGENTCTL_KEY": holder.key,
            "AGENTCTL_MODEL": AGENT,
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode == 0, ran.stderr
    result = json.loads(ran.stdout)
    assert result["models"] == [AGENT]
    assert result["whole"]["content"].startswith("hello from node")
    assert result["whole"]["finish"] == "stop"
    assert result["whole"]["usage"]["completion_tokens"] == 24
    assert result["streamed"]["content"].startswith("streaming from node")
    assert result["streamed"]["usage"]["completion_tokens"] == 24
    assert result["responses"]["first"].startswith("node remembers this")
    assert result["responses"]["second"].startswith("node asks again")
    assert result["responses"]["previous"] == result["responses"]["firstId"]
    assert result["responses"]["status"] == "completed"
    assert result["responseEvents"][0] == "response.created"
    assert result["responseEvents"][-1] == "response.completed"
    assert "response.output_text.delta" in result["responseEvents"]
    assert result["error"] == {
        "name": "NotFoundError",
        "status": 404,
        "code": "model_not_found",
        "type": "invalid_request_error",
    }
