"""What a finished run's record says about where it started, on the real database (RunStore.finish)."""

from __future__ import annotations

import uuid

from server.chat.runs import RunOutcome, RunStore
from server.database.engine import Database


def _outcome(status: str, *, first_of_conversation: bool) -> RunOutcome:
    return RunOutcome(
        status=status,
        error_type=None if status == "done" else "database-unavailable",
        output="",
        tool_calls=[],
        model=None,
        fallbacks=[],
        input_tokens=0,
        output_tokens=0,
        cached_tokens=0,
        cost_usd=0.0,
        time_to_first_token_ms=None,
        latency_ms=1.0,
        trace_id=None,
        last_event=1,
        first_of_conversation=first_of_conversation,
    )


async def test_only_a_conversations_first_run_starts_from_its_first_checkpoint(database: Database) -> None:
    """The first run read an empty conversation: an edit of its message forks from the thread's first checkpoint.
    A later run that failed before it could read the conversation (the database went away) started from nowhere:
    given that checkpoint too, it showed as a second version of the first message."""
    pool = database.pool
    user_id, session_id, first, failed = (uuid.uuid4() for _ in range(4))
    await pool.execute(
        "INSERT INTO users (id, email, password_hash, created_at) VALUES ($1, $2, 'x', now())",
        user_id,
        f"{user_id.hex}@example.com",
    )
    await pool.execute(
        "INSERT INTO chat_sessions (id, owner, name, created_at, updated_at) VALUES ($1, $2, '', now(), now())",
        session_id,
        user_id,
    )
    await pool.execute(
        "INSERT INTO checkpoints (thread_id, checkpoint_ns, checkpoint_id, type, checkpoint, metadata) "
        "VALUES ($1, '', '1f0-first', 'msgpack', '{}'::jsonb, '{}'::jsonb)",
        str(session_id),
    )
    store = RunStore(database, worker="test", lease_seconds=15)
    for run_id, outcome in (
        (first, _outcome("done", first_of_conversation=True)),
        (failed, _outcome("error", first_of_conversation=False)),
    ):  # one running run per session at a time, as the service runs them
        await pool.execute(
            "INSERT INTO chat_turns (id, session, owner, input, status, created_at, tool_calls, fallbacks) "
            "VALUES ($1, $2, $3, 'hello', 'running', now(), '[]', '[]')",
            run_id,
            session_id,
            user_id,
        )
        await store.finish(run_id, outcome)
    rows = await pool.fetch("SELECT id, start_checkpoint FROM chat_turns WHERE session = $1", session_id)
    assert {row["id"]: row["start_checkpoint"] for row in rows} == {first: "1f0-first", failed: None}
