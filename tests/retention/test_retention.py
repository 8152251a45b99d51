"""Retention over a real `agentctl serve` and its own PostgreSQL database: checkpoints pruned to what branches and
recent edits need, idle sessions and old turn records removed against a clock the test controls, one sweeper at a
time, `agentctl retention run` with its dry run."""

from __future__ import annotations

import asyncio
import datetime
import uuid
from collections.abc import Iterator

import asyncpg
import pytest
from typer.testing import CliRunner

from agentctl.cli import app
from agentctl.config import RetentionSettings, Settings
from agentctl.simulator.process import RunningSimulator
from server.retention.service import RetentionSweeper
from server.schema import open_database
from tests.chat.conftest import Conversation, serve_with_model
from tests.support import ApiClient, new_migrated_database


@pytest.fixture(scope="module")
def retention_database_url(postgres_server_url: str) -> str:
    """A database of this module's own: its sweeps may remove anything idle in it."""
    return asyncio.run(new_migrated_database(postgres_server_url))


@pytest.fixture(scope="module")
def api(
    tmp_path_factory: pytest.TempPathFactory, retention_database_url: str, simulator: RunningSimulator
) -> Iterator[ApiClient]:
    server = serve_with_model(
        tmp_path_factory.mktemp("retention"),
        retention_database_url,
        simulator,
        AGENTCTL_RETENTION__ENABLED="false",  # the tests sweep, when they choose
        AGENTCTL_MEMORY__ENABLED="false",
    )
    try:
        server.wait_until_healthy()
        yield ApiClient(server)
    finally:
        server.terminate()


async def _sweep(url: str, *, clock_days: float = 0, dry_run: bool = False, **settings: object) -> dict:
    now = datetime.datetime.now(tz=datetime.UTC) + datetime.timedelta(days=clock_days)
    async with open_database(url, Settings(), schema="require_current") as database:
        sweeper = RetentionSweeper(database, RetentionSettings(**settings), events_ttl_seconds=3600, clock=lambda: now)
        report = await sweeper.sweep(dry_run=dry_run, every_thread=True)
    return {"removed": report.removed, "skipped": report.skipped, "threads": report.threads_pruned}


def _count(url: str, query: str, *args: object) -> int:
    async def fetch() -> int:
        connection = await asyncpg.connect(url)
        try:
            return int(await connection.fetchval(query, *args))
        finally:
            await connection.close()

    return asyncio.run(fetch())


def _said(conversation: Conversation) -> list[str]:
    return [message["content"] for message in conversation.history() if message["role"] == "user"]


def test_a_long_conversation_keeps_only_what_its_branches_and_recent_edits_need(
    api: ApiClient, retention_database_url: str
) -> None:
    conversation = Conversation(api)
    for index in range(12):
        assert conversation.send(f"turn {index}").status_code == 200
    history = conversation.history()
    old_message, recent_message = history[2]["id"], history[-2]["id"]
    # A branch: the last message edited; the original stays as a sibling.
    edited = api.request(
        "POST", f"/chatbot/messages/{recent_message}/edit", token=conversation.token, json={"content": "turn 11 again"}
    )
    run = api.request("GET", f"/chatbot/runs/{edited.json()['id']}/wait", token=conversation.token).json()
    assert run["status"] == "done"
    thread = conversation.session_id
    before = _count(retention_database_url, "SELECT count(*) FROM checkpoints WHERE thread_id = $1", thread)
    assert before > 30  # three per turn, and more: LangGraph keeps every step

    result = asyncio.run(_sweep(retention_database_url, checkpoint_turns_kept=3))
    after = _count(retention_database_url, "SELECT count(*) FROM checkpoints WHERE thread_id = $1", thread)
    # The newest 3 turns' start and end, every branch's end, the newest: a bound, whatever the conversation's length.
    assert after <= 2 * 3 + 2 + 1
    assert result["removed"]["checkpoints"] == before - after
    assert result["removed"]["checkpoint_blobs"] > 0
    orphans = _count(
        retention_database_url,
        "SELECT count(*) FROM checkpoint_writes w WHERE w.thread_id = $1 AND NOT EXISTS (SELECT 1 FROM checkpoints c "
        "WHERE c.thread_id = w.thread_id AND c.checkpoint_id = w.checkpoint_id)",
        thread,
    )
    assert orphans == 0

    # The conversation is whole and goes on; recent edits work, older ones say why they cannot.
    assert _said(conversation) == [f"turn {index}" for index in range(11)] + ["turn 11 again"]
    assert conversation.send("after the sweep").status_code == 200
    assert _said(conversation)[-1] == "after the sweep"
    too_old = api.request(
        "POST", f"/chatbot/messages/{old_message}/edit", token=conversation.token, json={"content": "x"}
    )
    assert too_old.status_code == 409
    assert too_old.json()["type"].endswith("message-too-old")
    switched = api.request("POST", f"/chatbot/messages/{recent_message}/branch", token=conversation.token)
    assert switched.status_code == 200, switched.text  # the other branch's end was kept
    assert [m["content"] for m in switched.json()["messages"] if m["role"] == "user"][-1] == "turn 11"

    # A second sweep has nothing more to do.
    assert asyncio.run(_sweep(retention_database_url, checkpoint_turns_kept=3))["removed"]["checkpoints"] == 0


def test_idle_sessions_and_old_turns_go_against_a_controlled_clock_and_a_dry_run_removes_nothing(
    api: ApiClient, retention_database_url: str
) -> None:
    conversation = Conversation(api)
    assert conversation.send("soon idle").status_code == 200
    session = uuid.UUID(conversation.session_id)
    sessions = "SELECT count(*) FROM chat_sessions WHERE id = $1"
    settings = {"idle_session_days": 30, "turn_record_days": 30}

    today = asyncio.run(_sweep(retention_database_url, **settings))
    assert today["removed"]["sessions"] == 0
    assert _count(retention_database_url, sessions, session) == 1

    dry = asyncio.run(_sweep(retention_database_url, clock_days=31, dry_run=True, **settings))
    assert dry["removed"]["sessions"] >= 1
    assert _count(retention_database_url, sessions, session) == 1  # a dry run removes nothing

    later = asyncio.run(_sweep(retention_database_url, clock_days=31, **settings))
    assert later["removed"]["sessions"] >= 1
    assert _count(retention_database_url, sessions, session) == 0
    assert _count(retention_database_url, "SELECT count(*) FROM checkpoints WHERE thread_id = $1", str(session)) == 0
    assert _count(retention_database_url, "SELECT count(*) FROM chat_turns WHERE session = $1", session) == 0


def test_old_turn_records_go_in_batches_and_a_running_turn_stays(api: ApiClient, retention_database_url: str) -> None:
    conversation = Conversation(api)
    assert conversation.send("a record to age").status_code == 200
    user = uuid.UUID(api.request("GET", "/auth/me", token=conversation.user_token).json()["id"])

    async def age() -> None:
        connection = await asyncpg.connect(retention_database_url)
        try:  # 1,200 records of 100 days ago, and one still running
            await connection.execute(
                "INSERT INTO chat_turns (id, session, owner, input, status, created_at) "
                "SELECT gen_random_uuid(), $1, $2, 'old', 'done', now() - interval '100 days' "
                "FROM generate_series(1, 1200)",
                uuid.UUID(conversation.session_id),
                user,
            )
        finally:
            await connection.close()

    asyncio.run(age())
    result = asyncio.run(_sweep(retention_database_url, turn_record_days=30, batch_size=500, batch_pause_seconds=0))
    assert result["removed"]["turns"] >= 1200
    assert _count(retention_database_url, "SELECT count(*) FROM chat_turns WHERE input = 'old'") == 0
    assert _said(conversation) == ["a record to age"]  # the conversation itself is in its checkpoints


def test_one_sweeper_at_a_time(api: ApiClient, retention_database_url: str) -> None:
    async def two_at_once() -> list[bool]:
        async with open_database(retention_database_url, Settings(), schema="require_current") as database:
            lock = 0x41474E54_5245_54
            async with database.pool.acquire() as holder:
                await holder.execute("SELECT pg_advisory_lock($1)", lock)  # another replica sweeping
                sweeper = RetentionSweeper(database, RetentionSettings(), events_ttl_seconds=3600)
                skipped = (await sweeper.sweep()).skipped
                await holder.execute("SELECT pg_advisory_unlock($1)", lock)
            return [skipped, (await sweeper.sweep()).skipped]

    assert asyncio.run(two_at_once()) == [True, False]


def test_agentctl_retention_run_prints_what_it_removes(retention_database_url: str, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATABASE_URL", retention_database_url)
    monkeypatch.setenv("AGENTCTL_RETENTION__TURN_RECORD_DAYS", "30")
    dry = CliRunner().invoke(app, ["retention", "run", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "would remove (dry run)" in dry.output
    assert "checkpoint blobs" in dry.output
    done = CliRunner().invoke(app, ["retention", "run"])
    assert done.exit_code == 0, done.output
    assert "removed" in done.output
    bad = CliRunner().invoke(app, ["retention", "run"], env={"AGENTCTL_RETENTION__BATCH_SIZE": "-3"})
    assert bad.exit_code == 2
    assert "AGENTCTL_RETENTION__BATCH_SIZE" in bad.output
