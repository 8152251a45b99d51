"""Indexes and constraints that Piccolo's column API cannot express, on the tables of the previous migration.

Piccolo runs a migration's raw steps before its table steps, so these live in a migration of their own.
"""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.engine import engine_finder

ID = "2026-11-24T08:24:15:000000"
VERSION = "1.38.0"
DESCRIPTION = "session listing index, lower-case email check"


# The engine is looked up on every run, inside the migration's transaction; a Table class here would keep
# the first engine it ever saw.
async def add_session_listing_index_and_email_check():
    engine = engine_finder()
    # Listing a user's sessions newest first is the hot query.
    await engine.run_ddl("CREATE INDEX chat_sessions_owner_updated_at ON chat_sessions (owner, updated_at DESC)")
    # Emails are stored normalised, so uniqueness is case-insensitive; the database holds the line too.
    await engine.run_ddl("ALTER TABLE users ADD CONSTRAINT users_email_lowercase CHECK (email = lower(email))")


async def drop_session_listing_index_and_email_check():
    engine = engine_finder()
    await engine.run_ddl("DROP INDEX IF EXISTS chat_sessions_owner_updated_at")
    await engine.run_ddl("ALTER TABLE users DROP CONSTRAINT IF EXISTS users_email_lowercase")


async def forwards():
    manager = MigrationManager(migration_id=ID, app_name="agentctl", description=DESCRIPTION)
    manager.add_raw(add_session_listing_index_and_email_check)
    manager.add_raw_backwards(drop_session_listing_index_and_email_check)
    return manager
