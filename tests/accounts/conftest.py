"""Accounts as a whole over two real `agentctl serve` replicas (one of two workers) sharing PostgreSQL, Redis and a
data directory (one host: one Mem0 history file), the simulator as their model; `agentctl users` and `agentctl eval`
through Typer's CliRunner against the same database and Redis."""

from __future__ import annotations

import contextlib
import sqlite3
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
import pytest
from typer.testing import CliRunner, Result

from agentctl.cli import app
from agentctl.simulator.process import RunningSimulator
from tests.apikeys.conftest import new_key
from tests.chat.conftest import Conversation, serve_with_model
from tests.evaluation.conftest import judge_says
from tests.memory.test_memory import wait_for_memories
from tests.support import ApiClient, fetch_rows

JWT_SECRET = "accounts-test-signing-key-" + "k" * 40


@dataclass
class Replicas:
    """Two replicas of one deployment: ``first`` runs two workers, ``second`` one."""

    first: ApiClient
    second: ApiClient
    workdir: Path
    env: dict[str, str]
    database_url: str
    simulator: RunningSimulator

    @property
    def data_dir(self) -> Path:
        return self.workdir / ".agentctl"

    @property
    def history_file(self) -> Path:
        return self.data_dir / "mem0" / "history.db"

    def cli(self, *args: str, input: str | None = None) -> Result:
        """`agentctl ...` as the operator runs it on this host: same database, Redis and data directory."""
        return CliRunner().invoke(
            app,
            ["--data-dir", str(self.data_dir), *args],
            input=input,
            env={**self.env, "AGENTCTL_LLM__MODEL": "judge-model", "AGENTCTL_OBSERVABILITY__LOG_LEVEL": "WARNING"},
        )

    def rows(self, query: str, *args: object) -> list[asyncpg.Record]:
        return fetch_rows(self.database_url, query, *args)


@pytest.fixture(scope="module")
def replicas(
    tmp_path_factory: pytest.TempPathFactory, migrated_database_url: str, simulator: RunningSimulator
) -> Iterator[Replicas]:
    workdir = tmp_path_factory.mktemp("accounts")
    env = {
        "DATABASE_URL": migrated_database_url,
        "REDIS_URL": "redis://127.0.0.1:6379/15",
        "AGENTCTL_REDIS__KEY_PREFIX": f"test-{uuid.uuid4().hex[:8]}",
        "AGENTCTL_AUTH__JWT_SECRET": JWT_SECRET,
        "AGENTCTL_LLM__BASE_URL": simulator.base_url,
        "OPENAI_API_KEY": "sim",
        "AGENTCTL_LLM__MAX_ATTEMPTS": "1",
    }
    servers = [
        serve_with_model(workdir, migrated_database_url, simulator, "--workers", "2", **env),
        serve_with_model(workdir, migrated_database_url, simulator, **env),
    ]
    try:
        for server in servers:
            server.wait_until_healthy()
        yield Replicas(ApiClient(servers[0]), ApiClient(servers[1]), workdir, env, migrated_database_url, simulator)
    finally:
        for server in servers:
            server.terminate()


@dataclass
class UserWithData:
    """A user with something of every kind: two sessions with turns and memories, a turn through /v1 with an API key,
    evaluation scores on the turns, daily usage. ``marker`` is in everything they said; each of ``facts`` (one a
    session, the last through /v1) is a memory."""

    email: str
    user_id: str
    user_token: str
    refresh_token: str
    conversations: list[Conversation]
    key: str
    key_id: str
    marker: str
    facts: list[str] = field(default_factory=list)

    @property
    def session_ids(self) -> list[str]:
        return [conversation.session_id for conversation in self.conversations]


def user_with_data(replicas: Replicas) -> UserWithData:
    api = replicas.first
    marker = f"zebra{uuid.uuid4().hex[:10]}"
    email = f"{marker}@example.com"
    registered = api.register(email)
    user_token = registered["token"]["access_token"]
    facts = [f"My locker code is {marker}.", f"I grow {marker} tomatoes."]
    conversations = [Conversation(api, user_token=user_token) for _ in range(2)]
    for conversation, fact in zip(conversations, facts, strict=True):
        assert conversation.send(fact).status_code == 200
    holder = new_key(api, user_token, scopes=["chat", "memories"])
    asked = f"My cat is called {marker}."  # remembered too, from no session
    completion = holder.openai(
        "POST", "/chat/completions", json={"model": "Agent", "messages": [{"role": "user", "content": asked}]}
    )
    assert completion.status_code == 200, completion.text
    facts.append(asked)
    wait_for_memories(api, user_token, lambda found: {m["memory"] for m in found} == set(facts))
    # Scores on the user's turns: the operator's evaluation of one of their sessions, the simulator judging.
    replicas.simulator.configure({"script": [{"match": marker, "content": judge_says(0.8, f"fine {marker}")}]})
    judged = replicas.cli("eval", "--since", "1h", "--session", conversations[0].session_id, "--metric", "relevancy")
    assert judged.exit_code == 0, judged.output
    replicas.simulator.configure({})
    return UserWithData(
        email=email,
        user_id=registered["id"],
        user_token=user_token,
        refresh_token=registered["refresh_token"],
        conversations=conversations,
        key=holder.key,
        key_id=holder.key_id,
        marker=marker,
        facts=facts,
    )


def refused_everywhere(replicas: Replicas, method: str, path: str, token: str, *, tries: int = 6) -> list[int]:
    """The statuses of a request sent to both replicas, several times (the first replica's two workers share it)."""
    statuses = []
    for attempt in range(tries):
        api = replicas.first if attempt % 2 == 0 else replicas.second
        statuses.append(api.request(method, path, token=token).status_code)
    return statuses


def openai_status(replicas: Replicas, key: str, *, tries: int = 4) -> list[int]:
    """GET /v1/models with an API key, on both replicas, several times."""
    return [
        httpx.get(
            f"{(replicas.first if attempt % 2 == 0 else replicas.second).server.base_url}/v1/models",
            headers={"Authorization": f"Bearer {key}"},
            timeout=10,
        ).status_code
        for attempt in range(tries)
    ]


def rows_mentioning(replicas: Replicas, needle: str) -> dict[str, int]:
    """Every table of the public schema, every row cast to text: how many rows of each mention ``needle``."""
    tables = [row["tablename"] for row in replicas.rows("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
    assert {"users", "chat_turns", "checkpoints", "checkpoint_writes", "memories", "revoked_tokens"} <= set(tables)
    found = {}
    for table in tables:
        (row,) = replicas.rows(f'SELECT count(*) AS n FROM "{table}" AS t WHERE t::text LIKE $1', f"%{needle}%")
        if row["n"]:
            found[table] = row["n"]
    return found


def history_rows_mentioning(history_file: Path, *needles: str) -> int:
    """Rows of every table of Mem0's SQLite history that mention any of ``needles``."""
    with contextlib.closing(sqlite3.connect(history_file)) as history:
        tables = [row[0] for row in history.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        found = 0
        for table in tables:
            columns = [row[1] for row in history.execute(f'PRAGMA table_info("{table}")')]
            text = " || ' ' || ".join(f"COALESCE(CAST(\"{column}\" AS TEXT), '')" for column in columns)
            for needle in needles:
                found += history.execute(
                    f'SELECT count(*) FROM "{table}" WHERE {text} LIKE ?', (f"%{needle}%",)
                ).fetchone()[0]
        return found


def wait_until(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.05)
