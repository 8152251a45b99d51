"""Budgets and retention: one usage row per user and UTC day (what the budget check reads), and the turn records by
owner and time (usage reports, export, deletion)."""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.engine import engine_finder

ID = "2026-12-03T08:09:14:000000"
VERSION = "1.38.0"
DESCRIPTION = "user_usage unique per owner and day; chat_turns by owner and time"

_FORWARDS = [
    "CREATE UNIQUE INDEX IF NOT EXISTS user_usage_owner_day ON user_usage (owner, day)",
    "CREATE INDEX IF NOT EXISTS chat_turns_owner_created_at ON chat_turns (owner, created_at)",
]
_BACKWARDS = [
    "DROP INDEX IF EXISTS chat_turns_owner_created_at",
    "DROP INDEX IF EXISTS user_usage_owner_day",
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
