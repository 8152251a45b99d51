"""Runs in PostgreSQL (the chat_turns rows): accepted, queued, claimed, leased, finished.

What serialises a session's turns across workers and replicas is a partial unique index: at most one row of a
session is ``running``. Accepting a message is one statement that inserts it as running if it can; a run that
cannot start is queued (or refused, by the session's strategy) and is claimed by whichever worker ends the run
before it, or by any worker's sweeper once the one before it has ended without claiming it. A running run holds a
lease its worker renews; a run whose lease lapses ended with its worker.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from server.database.engine import Database

ACTIVE_STATUSES = ("queued", "running")
WORKER_LOST = "worker-lost"

_RUN_COLUMNS = (
    "id, session, owner, input, status, strategy, on_disconnect, error_type, output, model, input_tokens, "
    "output_tokens, cached_tokens, cost_usd, created_at, started_at, finished_at, last_event, surface, checkpoint_id, "
    "previous_run, start_checkpoint, resumed"
)


def worker_name() -> str:
    """This worker, as runs name the worker running them (host, process, and a random part for reused pids)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class RunRow:
    id: uuid.UUID
    session_id: uuid.UUID
    owner_id: uuid.UUID
    input: str
    status: str
    strategy: str
    on_disconnect: str
    error_type: str | None
    output: str
    model: str | None
    usage: dict[str, Any]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    last_event: int
    surface: str = "chat"
    checkpoint_id: str | None = None
    previous_run: uuid.UUID | None = None
    start_checkpoint: str | None = None
    resumed: bool = False

    @property
    def active(self) -> bool:
        return self.status in ACTIVE_STATUSES

    @classmethod
    def of(cls, row: asyncpg.Record) -> RunRow:
        return cls(
            id=row["id"],
            session_id=row["session"],
            owner_id=row["owner"],
            input=row["input"],
            status=row["status"],
            strategy=row["strategy"],
            on_disconnect=row["on_disconnect"],
            error_type=row["error_type"],
            output=row["output"],
            model=row["model"],
            usage={
                "input_tokens": row["input_tokens"],
                "output_tokens": row["output_tokens"],
                "cached_tokens": row["cached_tokens"],
                "cost_usd": row["cost_usd"],
                "model": row["model"],
            },
            created_at=row["created_at"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            last_event=row["last_event"],
            surface=row["surface"],
            checkpoint_id=row["checkpoint_id"],
            previous_run=row["previous_run"],
            start_checkpoint=row["start_checkpoint"],
            resumed=row["resumed"],
        )


@dataclass(frozen=True)
class Claimed:
    """A queued run this worker now runs."""

    id: uuid.UUID
    session_id: uuid.UUID | None
    owner_id: uuid.UUID
    input: str
    strategy: str
    on_disconnect: str
    fork_from: str | None = None  # the checkpoint it starts from (an edit or a regeneration), else the latest


@dataclass(frozen=True)
class RunOutcome:
    """What a finished run records."""

    status: str
    error_type: str | None
    output: str
    tool_calls: list[dict[str, Any]]
    model: str | None
    fallbacks: list[dict[str, Any]]
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    cost_usd: float
    time_to_first_token_ms: float | None
    latency_ms: float
    trace_id: str | None
    last_event: int
    start_checkpoint: str | None = None
    first_of_conversation: bool = False  # it started from nothing: its thread's first checkpoint is its start
    parent_run: uuid.UUID | None = None
    resumed: bool = False


class RunStore:
    def __init__(self, database: Database, *, worker: str, lease_seconds: float) -> None:
        self._database = database
        self.worker = worker
        self._lease = lease_seconds

    async def start_now(
        self,
        run_id: uuid.UUID,
        *,
        session_id: uuid.UUID | None,
        owner_id: uuid.UUID,
        text: str,
        strategy: str,
        on_disconnect: str,
        surface: str = "chat",
        previous_run: uuid.UUID | None = None,
        start_checkpoint: str | None = None,
        resumed: bool = False,
    ) -> bool:
        """Insert the run as running in this worker, if its session has no run running or queued (one round trip).
        A run without a session always starts (NULL never conflicts). ``resumed``: known to continue a paused turn
        (an approval's answer; an answer to ask_human is known only once it runs)."""
        started = await self._database.pool.fetchval(
            "INSERT INTO chat_turns (id, session, owner, input, status, strategy, on_disconnect, worker, lease_until, "
            "started_at, surface, previous_run, start_checkpoint, resumed) SELECT $1, $2, $3, $4, 'running', $5, $6, "
            "$7, now() + make_interval(secs => $8), now(), $9, $10, $11, $12 "
            "WHERE NOT EXISTS (SELECT 1 FROM chat_turns WHERE session = $2 AND status = 'queued') "
            "ON CONFLICT (session) WHERE status = 'running' DO NOTHING RETURNING true",
            run_id,
            session_id,
            owner_id,
            text,
            strategy,
            on_disconnect,
            self.worker,
            self._lease,
            surface,
            previous_run,
            start_checkpoint,
            resumed,
        )
        return bool(started)

    async def enqueue(
        self,
        run_id: uuid.UUID,
        *,
        session_id: uuid.UUID,
        owner_id: uuid.UUID,
        text: str,
        strategy: str,
        on_disconnect: str,
        max_queued: int,
        start_checkpoint: str | None = None,
    ) -> bool:
        """Queue the run behind its session's active one; False when the session already has ``max_queued``."""
        queued = await self._database.pool.fetchval(
            "INSERT INTO chat_turns (id, session, owner, input, status, strategy, on_disconnect, start_checkpoint) "
            "SELECT $1, $2, $3, $4, 'queued', $5, $6, $8 "
            "WHERE (SELECT count(*) FROM chat_turns WHERE session = $2 AND status = 'queued') < $7 RETURNING true",
            run_id,
            session_id,
            owner_id,
            text,
            strategy,
            on_disconnect,
            max_queued,
            start_checkpoint,
        )
        return bool(queued)

    async def claim_next(self, session_id: uuid.UUID) -> Claimed | None:
        """The session's oldest queued run, now running in this worker, if no other run of it is running."""
        try:
            row = await self._database.pool.fetchrow(
                "UPDATE chat_turns SET status = 'running', worker = $2, lease_until = now() + make_interval(secs => "
                "$3), started_at = now() WHERE id = (SELECT id FROM chat_turns WHERE session = $1 AND status = "
                "'queued' ORDER BY created_at, id LIMIT 1 FOR UPDATE SKIP LOCKED) AND NOT EXISTS (SELECT 1 FROM "
                "chat_turns WHERE session = $1 AND status = 'running') "
                "RETURNING id, session, owner, input, strategy, on_disconnect, start_checkpoint",
                session_id,
                self.worker,
                self._lease,
            )
        except asyncpg.UniqueViolationError:
            return None  # another worker started one of the session's runs meanwhile
        if row is None:
            return None
        return Claimed(
            row["id"],
            row["session"],
            row["owner"],
            row["input"],
            row["strategy"],
            row["on_disconnect"],
            row["start_checkpoint"],
        )

    async def finish(self, run_id: uuid.UUID, outcome: RunOutcome) -> bool:
        """Record the run's outcome, the checkpoint its conversation now ends on, and what it spent (its user's day
        of usage, which budgets read); True if runs of its session are queued. One round trip."""
        queued = await self._database.pool.fetchval(
            "WITH finished AS (UPDATE chat_turns SET status = $2, error_type = $3, output = $4, "
            "tool_calls = $5::jsonb, model = $6, fallbacks = $7::jsonb, input_tokens = $8, output_tokens = $9, "
            "cached_tokens = $10, cost_usd = $11, time_to_first_token_ms = $12, latency_ms = $13, trace_id = $14, "
            "last_event = $15, finished_at = now(), lease_until = NULL, "
            # A conversation's first run starts from nothing: its thread's first checkpoint (LangGraph's input step,
            # before anything was said) is where an edit of its message forks from. Only that run's: one that failed
            # before it could read the conversation (the database down) started from nowhere, and is nobody's sibling.
            "start_checkpoint = COALESCE(start_checkpoint, $16, CASE WHEN $19 THEN (SELECT checkpoint_id FROM "
            "checkpoints WHERE thread_id = chat_turns.session::text AND checkpoint_ns = '' ORDER BY checkpoint_id "
            "LIMIT 1) END), "
            "previous_run = COALESCE(previous_run, $17), "
            "resumed = $18, "
            # One run of a session at a time, and checkpoint ids grow with time: the newest is this run's last.
            "checkpoint_id = (SELECT checkpoint_id FROM checkpoints WHERE thread_id = chat_turns.session::text "
            "AND checkpoint_ns = '' ORDER BY checkpoint_id DESC LIMIT 1) "
            "WHERE id = $1 RETURNING owner, session), "
            "counted AS (INSERT INTO user_usage (owner, day, turns, input_tokens, output_tokens, cost_usd, created_at) "
            "SELECT owner, (now() AT TIME ZONE 'UTC')::date, 1, $8, $9, $11, now() FROM finished "
            "ON CONFLICT (owner, day) DO UPDATE SET turns = user_usage.turns + 1, "
            "input_tokens = user_usage.input_tokens + EXCLUDED.input_tokens, "
            "output_tokens = user_usage.output_tokens + EXCLUDED.output_tokens, "
            "cost_usd = user_usage.cost_usd + EXCLUDED.cost_usd) "
            "SELECT EXISTS (SELECT 1 FROM chat_turns AS queued WHERE queued.session = finished.session "
            "AND queued.status = 'queued') FROM finished",
            run_id,
            outcome.status,
            outcome.error_type,
            outcome.output,
            json.dumps(outcome.tool_calls),
            outcome.model,
            json.dumps(outcome.fallbacks),
            outcome.input_tokens,
            outcome.output_tokens,
            outcome.cached_tokens,
            outcome.cost_usd,
            outcome.time_to_first_token_ms,
            outcome.latency_ms,
            outcome.trace_id,
            outcome.last_event,
            outcome.start_checkpoint,
            outcome.parent_run,
            outcome.resumed,
            outcome.first_of_conversation,
        )
        return queued is not False  # None: the row is gone (its session deleted)

    async def cancel_queued(self, run_id: uuid.UUID) -> bool:
        """A queued run cancelled before it started: True if it was still queued."""
        cancelled = await self._database.pool.fetchval(
            "UPDATE chat_turns SET status = 'cancelled', error_type = 'cancelled', finished_at = now() "
            "WHERE id = $1 AND status = 'queued' RETURNING true",
            run_id,
        )
        return bool(cancelled)

    async def renew(self, run_ids: list[uuid.UUID]) -> None:
        await self._database.pool.execute(
            "UPDATE chat_turns SET lease_until = now() + make_interval(secs => $2) "
            "WHERE id = ANY($1::uuid[]) AND status = 'running'",
            run_ids,
            self._lease,
        )

    async def expire_lost(self) -> list[RunRow]:
        """Runs whose worker stopped renewing their lease: ended, as error worker-lost (each by one sweeper)."""
        rows = await self._database.pool.fetch(
            f"UPDATE chat_turns SET status = 'error', error_type = '{WORKER_LOST}', finished_at = now(), "
            "lease_until = NULL WHERE status = 'running' AND lease_until < now() RETURNING " + _RUN_COLUMNS
        )
        return [RunRow.of(row) for row in rows]

    async def sessions_waiting(self) -> list[uuid.UUID]:
        """Sessions with queued runs and none running: the run before them ended without claiming the next."""
        rows = await self._database.pool.fetch(
            "SELECT DISTINCT session FROM chat_turns AS queued WHERE status = 'queued' AND NOT EXISTS "
            "(SELECT 1 FROM chat_turns AS running WHERE running.session = queued.session AND status = 'running')"
        )
        return [row["session"] for row in rows]

    async def running_in(self, session_id: uuid.UUID) -> tuple[uuid.UUID, str] | None:
        """The session's running run and its worker."""
        row = await self._database.pool.fetchrow(
            "SELECT id, worker FROM chat_turns WHERE session = $1 AND status = 'running'", session_id
        )
        return None if row is None else (row["id"], row["worker"])

    async def get(self, run_id: uuid.UUID, *, session_id: uuid.UUID) -> RunRow | None:
        row = await self._database.pool.fetchrow(
            f"SELECT {_RUN_COLUMNS} FROM chat_turns WHERE id = $1 AND session = $2", run_id, session_id
        )
        return None if row is None else RunRow.of(row)

    async def all_in(self, session_id: uuid.UUID) -> list[RunRow]:
        """Every run of the session, oldest first (its branches)."""
        rows = await self._database.pool.fetch(
            f"SELECT {_RUN_COLUMNS} FROM chat_turns WHERE session = $1 ORDER BY created_at, id", session_id
        )
        return [RunRow.of(row) for row in rows]

    async def checkpoint_exists(self, session_id: uuid.UUID, checkpoint_id: str) -> bool:
        return bool(
            await self._database.pool.fetchval(
                "SELECT true FROM checkpoints WHERE thread_id = $1 AND checkpoint_ns = '' AND checkpoint_id = $2",
                str(session_id),
                checkpoint_id,
            )
        )

    async def active_of_owner(self, owner_id: uuid.UUID) -> list[RunRow]:
        """The user's queued and running runs, in any session (or none)."""
        rows = await self._database.pool.fetch(
            f"SELECT {_RUN_COLUMNS} FROM chat_turns WHERE owner = $1 AND status IN ('queued', 'running')", owner_id
        )
        return [RunRow.of(row) for row in rows]

    async def get_owned(self, run_id: uuid.UUID, *, owner_id: uuid.UUID) -> RunRow | None:
        """One of the user's runs, whichever session (or none) it is in."""
        row = await self._database.pool.fetchrow(
            f"SELECT {_RUN_COLUMNS} FROM chat_turns WHERE id = $1 AND owner = $2", run_id, owner_id
        )
        return None if row is None else RunRow.of(row)

    async def page(
        self, *, session_id: uuid.UUID, statuses: list[str] | None, limit: int, before: uuid.UUID | None
    ) -> list[RunRow]:
        """The session's runs, newest first; ``before``: only those older than that run (none if it is not one of
        the session's)."""
        rows = await self._database.pool.fetch(
            f"SELECT {_RUN_COLUMNS} FROM chat_turns WHERE session = $1 "
            "AND ($2::text[] IS NULL OR status = ANY($2::text[])) "
            "AND ($3::uuid IS NULL OR (created_at, id) < "
            "(SELECT created_at, id FROM chat_turns AS cursor WHERE cursor.id = $3 AND cursor.session = $1)) "
            "ORDER BY created_at DESC, id DESC LIMIT $4",
            session_id,
            statuses,
            before,
            limit,
        )
        return [RunRow.of(row) for row in rows]
