from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from agentctl.config import Settings, load_settings
from agentctl.simulator.process import RunningSimulator
from server.database.embedded import EmbeddedPostgres
from server.database.engine import Database
from server.schema import open_database
from tests.support import database_url_named, new_migrated_database, unique_database_name


@pytest.fixture(scope="session")
def postgres_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real PostgreSQL with pgvector: DATABASE_URL's when set, else an embedded one for this test run."""
    configured = load_settings().database.url
    if configured is not None:
        yield configured.get_secret_value()
        return
    embedded = EmbeddedPostgres(tmp_path_factory.mktemp("pg"))
    yield embedded.url
    embedded.stop()


@pytest.fixture
async def empty_database_url(postgres_server_url: str) -> AsyncIterator[str]:
    """A database of its own for one test, dropped afterwards."""
    name = unique_database_name()
    admin = await asyncpg.connect(postgres_server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield database_url_named(postgres_server_url, name)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture(scope="session")
async def migrated_database_url(postgres_server_url: str) -> str:
    """One database migrated once per test run; tests that write to it keep their data apart."""
    return await new_migrated_database(postgres_server_url)


@pytest.fixture
async def database(migrated_database_url: str) -> AsyncIterator[Database]:
    async with open_database(migrated_database_url, Settings(), schema="require_current") as opened:
        yield opened


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory with no .env files of the developer's, as the current directory."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="module")
def simulator() -> Iterator[RunningSimulator]:
    """The project's model simulator (one per test module), over real HTTP on loopback: the one stand-in."""
    with RunningSimulator() as running:
        yield running


@pytest.fixture(autouse=True)
def _fresh_simulator(request: pytest.FixtureRequest) -> None:
    """A test that uses the simulator starts with its defaults (instant, no faults), whatever the last one set."""
    if "simulator" in request.fixturenames:
        request.getfixturevalue("simulator").configure({})


@pytest.fixture(autouse=True)
def _no_developer_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests see only the agentctl variables they set themselves; DATABASE_URL is read once, above."""
    for key in list(os.environ):
        if key.startswith(("AGENTCTL_", "LANGFUSE_")) or key in ("DATABASE_URL", "REDIS_URL", "OPENAI_API_KEY"):
            monkeypatch.delenv(key)
