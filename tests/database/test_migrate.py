"""`agentctl migrate`: idempotent, --check lists what is pending, replicas cannot migrate twice."""

from __future__ import annotations

import asyncio
import importlib.util

import asyncpg
import pytest
from typer.testing import CliRunner

from agentctl.cli import app
from agentctl.config import Settings
from agentctl.resources import migrations_dir
from server.schema import known_migrations, open_database, pending_work

runner = CliRunner()
_EMAIL_MIGRATION = "agentctl_2026_12_02t05_00_00_000000.py"


def test_check_then_migrate_then_nothing_left(empty_database_url: str) -> None:
    env = {"DATABASE_URL": empty_database_url}

    before = runner.invoke(app, ["migrate", "--check"], env=env)
    assert before.exit_code == 1
    assert "extension: vector" in before.stdout
    for migration_id in known_migrations():
        assert f"migration: {migration_id}" in before.stdout
    assert "checkpointer: schema version 0-" in before.stdout

    first = runner.invoke(app, ["migrate"], env=env)
    assert first.exit_code == 0, first.output
    assert "applied extension: vector" in first.stdout
    assert "schema is current" in first.stdout

    second = runner.invoke(app, ["migrate"], env=env)
    assert second.exit_code == 0
    assert "applied" not in second.stdout
    assert "nothing to do" in second.stdout

    after = runner.invoke(app, ["migrate", "--check"], env=env)
    assert after.exit_code == 0
    assert after.stdout.strip() == "schema is current"


async def test_migrated_schema_has_every_table(migrated_database_url: str) -> None:
    connection = await asyncpg.connect(migrated_database_url)
    try:
        tables = {
            row["tablename"]
            for row in await connection.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        }
        extensions = {row["extname"] for row in await connection.fetch("SELECT extname FROM pg_extension")}
    finally:
        await connection.close()
    assert {"users", "chat_sessions", "migration", "checkpoints", "checkpoint_blobs", "checkpoint_writes"} <= tables
    assert "vector" in extensions


async def test_concurrent_migrations_apply_once(empty_database_url: str) -> None:
    async def migrate() -> list[str]:
        async with open_database(empty_database_url, Settings(), schema="migrate") as database:
            return database.schema_changes

    results = await asyncio.gather(migrate(), migrate())
    assert sorted(len(steps) > 0 for steps in results) == [False, True]
    async with open_database(empty_database_url, Settings(), schema="as_is") as database:
        assert not await pending_work(database)


def test_unreachable_database_is_one_line_without_the_password(workdir: object) -> None:
    result = runner.invoke(app, ["migrate"], env={"DATABASE_URL": "postgresql://app:hunter2@127.0.0.1:1/agent"})
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("agentctl: cannot connect to PostgreSQL at postgresql://app:***@127.0.0.1:1/agent")
    assert "hunter2" not in result.output


@pytest.mark.usefixtures("workdir")
def test_serve_refuses_an_external_database_with_pending_migrations(empty_database_url: str) -> None:
    result = runner.invoke(app, ["serve"], env={"DATABASE_URL": empty_database_url})
    assert result.exit_code == 1
    assert "run `agentctl migrate`" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


async def test_the_email_migration_normalises_addresses_whose_normal_form_is_free(empty_database_url: str) -> None:
    """Accounts made before emails were normalised (NFKC): each takes its normal form when nobody has it, the oldest
    first; a look-alike of an existing account is left as it was, never merged or deleted."""
    migration = importlib.util.spec_from_file_location("emails", migrations_dir() / _EMAIL_MIGRATION)
    assert migration is not None
    assert migration.loader is not None
    module = importlib.util.module_from_spec(migration)
    migration.loader.exec_module(module)
    async with (
        open_database(empty_database_url, Settings(), schema="migrate") as database,
        database.pool.acquire() as connection,
    ):
        await connection.execute("ALTER TABLE users DROP CONSTRAINT users_email_normalised")
        for email, age in (
            ("ｂ2@x.com", 0),  # full-width b: becomes b2@x.com
            ("ｃ3@x.com", 0),  # a look-alike of an existing account: left
            ("c3@x.com", 0),
            ("ａ9@x.com", 2),  # two look-alikes of a free address: the older one takes it
            ("ª9@x.com", 1),
        ):
            await connection.execute(
                "INSERT INTO users (id, email, password_hash, created_at) "
                "VALUES (gen_random_uuid(), $1, 'hash', now() - make_interval(days => $2))",
                email,
                age,
            )
        await module.normalise_emails()
        emails = {row["email"] for row in await connection.fetch("SELECT email FROM users")}
        assert emails == {"b2@x.com", "ｃ3@x.com", "c3@x.com", "a9@x.com", "ª9@x.com"}
        with pytest.raises(asyncpg.CheckViolationError):
            await connection.execute(
                "INSERT INTO users (id, email, password_hash, created_at) VALUES (gen_random_uuid(), 'ｄ4@x.com', "
                "'hash', now())"
            )
