"""Time-range indexes on chat_turns (evaluation and analytics read turns by time, overall and per session).

Piccolo runs a migration's raw steps before its table steps, so these live in a migration of their own.
"""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.engine import engine_finder

ID = "2026-11-24T09:40:24:000000"
VERSION = "1.38.0"
DESCRIPTION = "chat_turns time-range indexes"


# The engine is looked up on every run, inside the migration's transaction.
async def add_time_range_indexes():
    engine = engine_finder()
    await engine.run_ddl("CREATE INDEX chat_turns_created_at ON chat_turns (created_at)")
    await engine.run_ddl("CREATE INDEX chat_turns_session_created_at ON chat_turns (session, created_at)")


async def drop_time_range_indexes():
    engine = engine_finder()
    await engine.run_ddl("DROP INDEX IF EXISTS chat_turns_created_at")
    await engine.run_ddl("DROP INDEX IF EXISTS chat_turns_session_created_at")


async def forwards():
    manager = MigrationManager(migration_id=ID, app_name="agentctl", description=DESCRIPTION)
    manager.add_raw(add_time_range_indexes)
    manager.add_raw_backwards(drop_time_range_indexes)
    return manager
