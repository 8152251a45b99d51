"""Emails in compatibility form (NFKC) and lower case, as agentctl now normalises them before uniqueness and
login: a full-width ``a1@x.com`` and the ASCII one are one account.

Existing addresses are rewritten when their normal form is free. Where two accounts already exist whose addresses
differ only so, the one that is not in normal form is left as it is (and is reached by no login, which normalises
what it is given): the migration never merges or deletes accounts. The check constraint holds for every row
written from now on.
"""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.engine import engine_finder

ID = "2026-12-02T05:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "normalised emails"

_NORMAL = "normalize(lower(normalize({column}, NFKC)), NFKC)"


async def normalise_emails():
    engine = engine_finder()
    normal = _NORMAL.format(column="email")
    # Per normal form, the oldest account not in it takes it, if no account has it already.
    await engine.run_ddl(
        "UPDATE users SET email = renamed.normal FROM ("
        "  SELECT DISTINCT ON (normal) id, normal FROM ("
        f"    SELECT id, created_at, {normal} AS normal FROM users WHERE email <> {normal}"
        "  ) AS candidate"
        "  WHERE NOT EXISTS (SELECT 1 FROM users AS taken WHERE taken.email = candidate.normal)"
        "  ORDER BY normal, created_at"
        ") AS renamed WHERE users.id = renamed.id"
    )
    await engine.run_ddl(
        f"ALTER TABLE users ADD CONSTRAINT users_email_normalised CHECK (email = {_NORMAL.format(column='email')}) "
        "NOT VALID"
    )


async def drop_constraint():
    await engine_finder().run_ddl("ALTER TABLE users DROP CONSTRAINT IF EXISTS users_email_normalised")


async def forwards():
    manager = MigrationManager(migration_id=ID, app_name="agentctl", description=DESCRIPTION)
    manager.add_raw(normalise_emails)
    manager.add_raw_backwards(drop_constraint)
    return manager
