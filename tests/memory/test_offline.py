"""Importing and using the memory layer contacts nothing beyond loopback (mem0's telemetry stays off)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from agentctl.simulator.process import RunningSimulator
from tests.support import clean_environment

# Runs in a fresh interpreter, so that mem0 is imported there for the first time, under an audit hook that sees
# every socket connection and host-name lookup the process makes from Python.
_PROBE = textwrap.dedent(
    """
    import asyncio, json, sys, uuid
    seen = []
    def audit(event, args):
        if event == "socket.connect":
            seen.append(("connect", repr(args[1])))
        elif event == "socket.getaddrinfo":
            seen.append(("lookup", str(args[0])))
    sys.addaudithook(audit)

    from prometheus_client import CollectorRegistry
    from agentctl.config import load_settings
    from server.llm.registry import ModelRegistry
    from server.llm.service import LLMService
    from server.memory.service import MemoryService, RememberJob
    from server.observability.metrics import MemoryMetrics
    from server.users.service import create_user

    async def main():
        settings = load_settings()
        registry = ModelRegistry.from_settings(settings.llm)
        memory = await MemoryService.open(
            settings, LLMService(registry, settings.llm), settings.database.url.get_secret_value(),
            MemoryMetrics(CollectorRegistry()),
        )
        memory.start()
        # A user that exists: the writers never write for one that does not (deleted meanwhile).
        user = (await create_user(email=f"{uuid.uuid4().hex}@example.com", password_hash="x", username=None)).id
        memory.remember(RememberJob(user, uuid.uuid4(), uuid.uuid4(), "I sail on weekends."))
        for _ in range(200):
            found = [item.text for item in await memory.newest(user, limit=10)]
            if found:
                break
            await asyncio.sleep(0.1)
        found += await memory.recall(user, "what do I do on weekends?")
        await memory.close()
        await registry.aclose()
        print(json.dumps({"found": found, "seen": seen}))

    asyncio.run(main())
    """
)


def test_memory_layer_contacts_nothing_beyond_loopback(
    tmp_path: Path, migrated_database_url: str, simulator: RunningSimulator
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    result = subprocess.run(
        [sys.executable, "-c", _PROBE],
        cwd=tmp_path,
        env=clean_environment(
            HOME=str(home),
            DATABASE_URL=migrated_database_url,
            AGENTCTL_LLM__BASE_URL=simulator.base_url,
            AGENTCTL_LLM__MODEL="chat-model",
            OPENAI_API_KEY="sim",
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["found"] == ["I sail on weekends."] * 2  # remembered, listed, recalled: the layer was used
    assert report["seen"], "the audit hook saw nothing: the probe is not watching"
    for kind, target in report["seen"]:
        local_socket = target.startswith("'/")  # a Unix socket (the embedded PostgreSQL's)
        assert local_socket or any(host in target for host in ("127.0.0.1", "::1", "localhost")), (kind, target)
    assert not (home / ".mem0").exists()  # mem0's directory is under the data directory
    assert (tmp_path / ".agentctl" / "mem0").is_dir()
