"""Retention: what the database keeps. Idle sessions (their conversations and turns), checkpoints beyond what the
current branches and recent edits need, old turn records, expired run events and, optionally, old memories are
removed in small batches, by one replica at a time (a PostgreSQL advisory lock), in the server or from
`agentctl retention run`.

LangGraph writes several checkpoints per turn and keeps them forever. A conversation needs only its newest one to
go on; an edit or a regeneration needs the checkpoint its turn started from, a branch switch the one its branch
ended on. So per conversation this keeps: the newest checkpoint, where the newest ``checkpoint_turns_kept`` turns
started and ended, and where every branch ends; the rest goes, with the writes and blobs only they used."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

from loguru import logger
from prometheus_client import Counter

from agentctl.config import RetentionSettings
from server.database.engine import Database
from server.memory.collection import COLLECTION
from server.memory.service import _purge_history_file

_LOCK_KEY = 0x41474E54_5245_54  # "AGNT RET": the advisory lock only one sweeper holds
_ACTIVE = ("queued", "running")
KINDS = ("sessions", "checkpoints", "checkpoint_writes", "checkpoint_blobs", "turns", "run_events", "memories")


@dataclass
class SweepReport:
    """What a sweep removed (or, dry, would remove), by kind of row."""

    dry_run: bool
    removed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    threads_pruned: int = 0
    skipped: bool = False  # another replica was sweeping

    def add(self, kind: str, count: int) -> None:
        self.removed[kind] += count


class RetentionSweeper:
    def __init__(
        self,
        database: Database,
        settings: RetentionSettings,
        *,
        events_ttl_seconds: float,
        history_path: Path | None = None,
        removed: Counter | None = None,
        clock: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(tz=datetime.UTC),
    ) -> None:
        self._database = database
        self._settings = settings
        self._events_ttl = events_ttl_seconds
        self._history_path = history_path
        self._removed = removed
        self._clock = clock
        self._last_sweep: datetime.datetime | None = None  # threads with turns since then are pruned next

    async def sweep(self, *, dry_run: bool = False, every_thread: bool = False) -> SweepReport:
        """One sweep, if no other replica is sweeping; ``every_thread`` looks at every conversation's checkpoints
        (the CLI, and a server's first sweep), else only those with turns since the last sweep."""
        report = SweepReport(dry_run=dry_run)
        async with self._database.pool.acquire() as connection:
            if not await connection.fetchval("SELECT pg_try_advisory_lock($1)", _LOCK_KEY):
                report.skipped = True
                return report
            try:
                started = self._clock()
                since = None if every_thread else self._last_sweep
                await self._idle_sessions(report, started)
                await self._prune_checkpoints(report, since)
                await self._old_turns(report, started)
                await self._expired_events(report)
                await self._old_memories(report, started)
                if not dry_run:
                    self._last_sweep = started
            finally:
                await connection.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
        if self._removed is not None and not dry_run:
            for kind, count in report.removed.items():
                if count:
                    self._removed.labels(kind).inc(count)
        return report

    async def run_forever(self) -> None:
        """Sweep every ``sweep_interval_seconds``; the first sweep looks at every conversation."""
        every_thread = True
        while True:
            await asyncio.sleep(self._settings.sweep_interval_seconds)
            try:
                report = await self.sweep(every_thread=every_thread)
                every_thread = False
                if any(report.removed.values()):
                    logger.info("retention sweep removed {}", {k: v for k, v in report.removed.items() if v})
            except Exception as error:
                logger.warning("retention sweep failed: {}: {}", type(error).__name__, error)

    # -- the kinds ------------------------------------------------------------------------------------------------

    async def _batches(self, report: SweepReport, kind: str, count_sql: str, delete_sql: str, *args: object) -> None:
        """Delete in batches of ``batch_size`` until nothing is left (dry: count what would go)."""
        pool = self._database.pool
        if report.dry_run:
            report.add(kind, int(await pool.fetchval(count_sql, *args) or 0))
            return
        while True:
            deleted = int(await pool.fetchval(delete_sql, *args, self._settings.batch_size) or 0)
            report.add(kind, deleted)
            if deleted < self._settings.batch_size:
                return
            await asyncio.sleep(self._settings.batch_pause_seconds)

    async def _idle_sessions(self, report: SweepReport, now: datetime.datetime) -> None:
        if self._settings.idle_session_days is None:
            return
        cutoff = now - datetime.timedelta(days=self._settings.idle_session_days)
        idle = (
            "FROM chat_sessions s WHERE s.updated_at < $1 AND NOT EXISTS (SELECT 1 FROM chat_turns t "
            f"WHERE t.session = s.id AND (t.created_at >= $1 OR t.status IN {_ACTIVE}))"
        )
        if report.dry_run:
            report.add("sessions", int(await self._database.pool.fetchval(f"SELECT count(*) {idle}", cutoff) or 0))
            return
        while True:
            ids = [row["id"] for row in await self._database.pool.fetch(
                f"SELECT s.id {idle} ORDER BY s.updated_at LIMIT $2", cutoff, self._settings.batch_size
            )]  # fmt: skip
            if not ids:
                return
            threads = [str(session_id) for session_id in ids]
            for table, kind in (
                ("checkpoint_writes", "checkpoint_writes"),
                ("checkpoint_blobs", "checkpoint_blobs"),
                ("checkpoints", "checkpoints"),
            ):
                deleted = await self._database.pool.fetchval(
                    f"WITH gone AS (DELETE FROM {table} WHERE thread_id = ANY($1::text[]) RETURNING 1) "
                    "SELECT count(*) FROM gone",
                    threads,
                )
                report.add(kind, int(deleted or 0))
            deleted = await self._database.pool.fetchval(
                "WITH gone AS (DELETE FROM chat_sessions WHERE id = ANY($1::uuid[]) RETURNING 1) "
                "SELECT count(*) FROM gone",
                ids,
            )
            report.add("sessions", int(deleted or 0))
            await asyncio.sleep(self._settings.batch_pause_seconds)

    async def _threads_to_prune(self, since: datetime.datetime | None) -> list[str]:
        """Conversations that may hold more checkpoints than they need, with no run active (a run writes
        checkpoints; its conversation waits for the next sweep)."""
        least = 2 * self._settings.checkpoint_turns_kept + 2
        if since is None:
            rows = await self._database.pool.fetch(
                "SELECT thread_id FROM checkpoints WHERE checkpoint_ns = '' GROUP BY thread_id HAVING count(*) > $1",
                least,
            )
        else:
            rows = await self._database.pool.fetch(
                "SELECT DISTINCT session::text AS thread_id FROM chat_turns WHERE created_at >= $1 "
                "AND session IS NOT NULL",
                since - datetime.timedelta(minutes=5),
            )
        threads = [row["thread_id"] for row in rows]
        if not threads:
            return []
        busy = await self._database.pool.fetch(
            f"SELECT DISTINCT session::text AS thread_id FROM chat_turns WHERE status IN {_ACTIVE} "
            "AND session::text = ANY($1::text[])",
            threads,
        )
        return sorted(set(threads) - {row["thread_id"] for row in busy})

    async def _kept_checkpoints(self, thread_id: str) -> tuple[list[str], str | None]:
        """(what the conversation needs, its newest checkpoint)."""
        pool = self._database.pool
        newest = await pool.fetchval(
            "SELECT checkpoint_id FROM checkpoints WHERE thread_id = $1 AND checkpoint_ns = '' "
            "ORDER BY checkpoint_id DESC LIMIT 1",
            thread_id,
        )
        with contextlib.suppress(ValueError):
            uuid.UUID(thread_id)
            rows = await pool.fetch(
                "WITH runs AS (SELECT id, previous_run, start_checkpoint, checkpoint_id, created_at FROM chat_turns "
                "WHERE session = $1::uuid), "
                "recent AS (SELECT start_checkpoint, checkpoint_id FROM runs ORDER BY created_at DESC LIMIT $2), "
                "leaves AS (SELECT checkpoint_id FROM runs r WHERE NOT EXISTS "
                "(SELECT 1 FROM runs child WHERE child.previous_run = r.id)) "
                "SELECT start_checkpoint AS kept FROM recent UNION SELECT checkpoint_id FROM recent "
                "UNION SELECT checkpoint_id FROM leaves",
                thread_id,
                self._settings.checkpoint_turns_kept,
            )
            return [row["kept"] for row in rows if row["kept"]] + ([newest] if newest else []), newest
        return ([newest] if newest else []), newest

    async def _prune_checkpoints(self, report: SweepReport, since: datetime.datetime | None) -> None:
        pool = self._database.pool
        for thread_id in await self._threads_to_prune(since):
            kept, newest = await self._kept_checkpoints(thread_id)
            if newest is None:
                continue
            # Never what was written after the newest seen here (a run that started meanwhile).
            prunable = "thread_id = $1 AND checkpoint_ns = '' AND checkpoint_id < $2 AND NOT (checkpoint_id = ANY($3))"
            before = report.removed["checkpoints"]
            await self._batches(
                report,
                "checkpoint_writes",
                f"SELECT count(*) FROM checkpoint_writes WHERE {prunable}",
                "WITH gone AS (DELETE FROM checkpoint_writes WHERE ctid = ANY(ARRAY(SELECT ctid "
                f"FROM checkpoint_writes WHERE {prunable} LIMIT $4)) RETURNING 1) SELECT count(*) FROM gone",
                thread_id,
                newest,
                kept,
            )
            await self._batches(
                report,
                "checkpoints",
                f"SELECT count(*) FROM checkpoints WHERE {prunable}",
                f"WITH gone AS (DELETE FROM checkpoints WHERE {prunable} AND checkpoint_id IN (SELECT checkpoint_id "
                f"FROM checkpoints WHERE {prunable} LIMIT $4) RETURNING 1) SELECT count(*) FROM gone",
                thread_id,
                newest,
                kept,
            )
            if report.removed["checkpoints"] > before:
                report.threads_pruned += 1
            # Blobs are shared by checkpoints (one per channel version): those no kept checkpoint names go.
            unused = (
                "b.thread_id = $1 AND b.checkpoint_ns = '' AND NOT EXISTS (SELECT 1 FROM checkpoints c WHERE "
                "c.thread_id = b.thread_id AND c.checkpoint_ns = b.checkpoint_ns AND "
                "c.checkpoint -> 'channel_versions' ->> b.channel = b.version)"
            )
            if report.dry_run:
                continue  # which blobs would go depends on the checkpoints going first
            deleted = await pool.fetchval(
                f"WITH gone AS (DELETE FROM checkpoint_blobs b WHERE {unused} RETURNING 1) SELECT count(*) FROM gone",
                thread_id,
            )
            report.add("checkpoint_blobs", int(deleted or 0))
            await asyncio.sleep(self._settings.batch_pause_seconds)

    async def _old_turns(self, report: SweepReport, now: datetime.datetime) -> None:
        if self._settings.turn_record_days is None:
            return
        cutoff = now - datetime.timedelta(days=self._settings.turn_record_days)
        old = f"created_at < $1 AND status NOT IN {_ACTIVE}"
        await self._batches(
            report,
            "turns",
            f"SELECT count(*) FROM chat_turns WHERE {old}",
            f"WITH gone AS (DELETE FROM chat_turns WHERE id IN (SELECT id FROM chat_turns WHERE {old} "
            "ORDER BY created_at LIMIT $2) RETURNING 1) SELECT count(*) FROM gone",
            cutoff,
        )

    async def _expired_events(self, report: SweepReport) -> None:
        expired = "run IN (SELECT id FROM chat_turns WHERE finished_at < now() - make_interval(secs => $1))"
        await self._batches(
            report,
            "run_events",
            f"SELECT count(*) FROM chat_run_events WHERE {expired}",
            f"WITH gone AS (DELETE FROM chat_run_events WHERE ctid = ANY(ARRAY(SELECT ctid FROM chat_run_events "
            f"WHERE {expired} LIMIT $2)) RETURNING 1) SELECT count(*) FROM gone",
            self._events_ttl,
        )

    async def _old_memories(self, report: SweepReport, now: datetime.datetime) -> None:
        if self._settings.memory_days is None:
            return
        if not await self._database.pool.fetchval("SELECT to_regclass($1) IS NOT NULL", COLLECTION):
            return
        cutoff = (now - datetime.timedelta(days=self._settings.memory_days)).isoformat()
        old = f"FROM {COLLECTION} WHERE COALESCE(payload->>'updated_at', payload->>'created_at') < $1"
        if report.dry_run:
            report.add("memories", int(await self._database.pool.fetchval(f"SELECT count(*) {old}", cutoff) or 0))
            return
        while True:
            rows = await self._database.pool.fetch(
                f"DELETE FROM {COLLECTION} WHERE id IN (SELECT id {old} LIMIT $2) "
                "RETURNING id::text AS id, payload->>'user_id' AS user_id",
                cutoff,
                self._settings.batch_size,
            )
            report.add("memories", len(rows))
            if self._history_path is not None:  # their past texts in this host's Mem0 history go too
                by_user: dict[str, list[str]] = {}
                for row in rows:
                    by_user.setdefault(row["user_id"], []).append(row["id"])
                for user_id, ids in by_user.items():
                    with contextlib.suppress(ValueError):
                        await asyncio.to_thread(_purge_history_file, self._history_path, uuid.UUID(user_id), ids)
            if len(rows) < self._settings.batch_size:
                return
            await asyncio.sleep(self._settings.batch_pause_seconds)


@contextlib.asynccontextmanager
async def sweeping(sweeper: RetentionSweeper, *, enabled: bool) -> AsyncIterator[None]:
    """The sweeper for the worker's life (every worker tries; the advisory lock lets one sweep at a time)."""
    if not enabled:
        yield
        return
    from server.tasks import running

    async with running(sweeper.run_forever()):
        yield
