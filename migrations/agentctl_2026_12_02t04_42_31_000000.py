"""A partial index of the revocations Redis has not taken yet: every worker looks for them every few seconds,
and there are almost never any (the index stays empty while Redis answers).

Piccolo runs a migration's raw steps before its table steps, so this lives in a migration of its own.
"""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.engine import engine_finder

ID = "2026-12-02T04:42:31:000000"
VERSION = "1.38.0"
DESCRIPTION = "index of revocations not yet cached"


async def add_uncached_index():
    await engine_finder().run_ddl("CREATE INDEX revoked_tokens_uncached ON revoked_tokens (id) WHERE NOT cached")


async def drop_uncached_index():
    await engine_finder().run_ddl("DROP INDEX IF EXISTS revoked_tokens_uncached")


async def forwards():
    manager = MigrationManager(migration_id=ID, app_name="agentctl", description=DESCRIPTION)
    manager.add_raw(add_uncached_index)
    manager.add_raw_backwards(drop_uncached_index)
    return manager
