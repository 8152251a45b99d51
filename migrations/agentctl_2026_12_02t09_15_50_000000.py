"""Runs: at most one running run per session (the partial unique index that serialises a session's turns across
workers and replicas), indexes for the queue, the leases and the event log, and the turn records' statuses in the
runs' words (ok → done, interrupted → cancelled). Finished turns get started_at and finished_at from created_at."""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.engine import engine_finder

ID = "2026-12-02T09:15:50:000000"
VERSION = "1.38.0"
DESCRIPTION = "runs: one running per session, queue and lease indexes"

_FORWARDS = [
    "UPDATE chat_turns SET status = 'done' WHERE status = 'ok'",
    "UPDATE chat_turns SET status = 'cancelled' WHERE status = 'interrupted'",
    "UPDATE chat_turns SET started_at = created_at, finished_at = created_at WHERE finished_at IS NULL",
    "CREATE UNIQUE INDEX IF NOT EXISTS chat_turns_one_running ON chat_turns (session) WHERE status = 'running'",
    "CREATE INDEX IF NOT EXISTS chat_turns_queued ON chat_turns (session, created_at) WHERE status = 'queued'",
    "CREATE INDEX IF NOT EXISTS chat_turns_leases ON chat_turns (lease_until) WHERE status = 'running'",
    "CREATE INDEX IF NOT EXISTS chat_turns_by_session ON chat_turns (session, created_at DESC, id DESC)",
    "CREATE UNIQUE INDEX IF NOT EXISTS chat_run_events_by_run ON chat_run_events (run, last_seq)",
]
_BACKWARDS = [
    "DROP INDEX IF EXISTS chat_run_events_by_run",
    "DROP INDEX IF EXISTS chat_turns_by_session",
    "DROP INDEX IF EXISTS chat_turns_leases",
    "DROP INDEX IF EXISTS chat_turns_queued",
    "DROP INDEX IF EXISTS chat_turns_one_running",
    "UPDATE chat_turns SET status = 'ok' WHERE status = 'done'",
    "UPDATE chat_turns SET status = 'interrupted' WHERE status = 'cancelled'",
]


async def forwards_sql():
    engine = engine_finder()
    for statement in _FORWARDS:
        await engine.run_ddl(statement)


async def backwards_sql():
    engine = engine_finder()
    for statement in _BACKWARDS:
        await engine.run_ddl(statement)


async def forwards():
    manager = MigrationManager(migration_id=ID, app_name="agentctl", description=DESCRIPTION)
    manager.add_raw(forwards_sql)
    manager.add_raw_backwards(backwards_sql)
    return manager
