"""The schema this version of agentctl needs, and the one way to open its database.

The schema is the vector extension, the Piccolo tables of every capability (server.tables) and their migrations,
LangGraph's checkpointer tables and the memory collection. Applying it is idempotent and runs under one advisory
lock, so that replicas starting together cannot migrate twice. A server migrates only its embedded database (when
it starts); on an external one it refuses a schema that needs migrating: `agentctl migrate` does that.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Literal

import asyncpg
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from piccolo.apps.migrations.commands.base import BaseMigrationManager
from piccolo.apps.migrations.commands.forwards import run_forwards
from piccolo.apps.migrations.tables import Migration
from psycopg import AsyncConnection
from psycopg.rows import dict_row

from agentctl.config import Settings
from server.database.engine import Database, open_pool
from server.database.pooler import ensure_sessions
from server.errors import AppError
from server.memory.collection import collection_dimensions, create_collection, dimensions_mismatch, memory_dimensions
from server.tables import APP_CONFIG, APP_NAME

SchemaAction = Literal["migrate", "require_current", "as_is"]


def schema_action_for(settings: Settings) -> SchemaAction:
    """What a starting server does with the schema: migrates its embedded database, requires an external one to be
    current (the operator migrates it, once per release)."""
    return "migrate" if settings.uses_embedded_database else "require_current"


@asynccontextmanager
async def open_database(url: str, settings: Settings, *, schema: SchemaAction) -> AsyncIterator[Database]:
    """The one way to open agentctl's database: the pool open, every table bound to it, and the schema migrated
    (``migrate``: what was done is in ``schema_changes``), required to be current (``require_current``:
    SchemaOutdatedError otherwise) or left as it is (``as_is``: to look at what is pending)."""
    async with open_pool(Database(url, settings.database, tables=APP_CONFIG.table_classes)) as database:
        # Before anything else runs on it: a transaction pooler would break it in ways nobody could trace.
        await ensure_sessions(url, connect_timeout=settings.database.connect_timeout_seconds)
        dimensions = memory_dimensions(settings)
        if schema == "migrate":
            database.schema_changes = await apply_migrations(database, dimensions)
        if schema != "as_is":
            await ensure_schema_current(database, dimensions)
        yield database


# pg_advisory_lock key: the bytes of "agentctl" read as a number; any constant shared by all replicas works.
_MIGRATION_LOCK_KEY = int.from_bytes(b"agentctl", "big") >> 1
_MIGRATION_LOCK_WAIT_SECONDS = 600


class SchemaOutdatedError(AppError):
    status = 503
    code = "schema-outdated"
    title = "Database schema is not current"


class MigrationFailedError(AppError):
    status = 500
    code = "migration-failed"
    title = "Migration failed"


@dataclass
class PendingWork:
    """What `agentctl migrate` would do now; empty when the schema is current."""

    vector_extension: bool = False
    migrations: list[str] = field(default_factory=list)
    checkpointer_versions: list[int] = field(default_factory=list)
    memory_collection_dimensions: int | None = None  # the collection to create, with its vector size

    def describe(self) -> list[str]:
        lines = ["extension: vector"] if self.vector_extension else []
        lines += [f"migration: {name}" for name in self.migrations]
        versions = self.checkpointer_versions
        if versions:
            span = f"{versions[0]}" if len(versions) == 1 else f"{versions[0]}-{versions[-1]}"
            lines.append(f"checkpointer: schema version {span} (LangGraph checkpoint tables)")
        if self.memory_collection_dimensions is not None:
            lines.append(f"memory collection: {self.memory_collection_dimensions}-dimension vectors (Mem0)")
        return lines

    def __bool__(self) -> bool:
        return bool(self.describe())


def known_migrations() -> list[str]:
    """The ids of the migrations shipped with this version, in the order they apply."""
    manager = BaseMigrationManager()
    modules = manager.get_migration_modules(APP_CONFIG.resolved_migrations_folder_path)
    return sorted(manager.get_migration_ids(modules))


async def pending_work(database: Database, memory_dimensions: int | None = None) -> PendingWork:
    """Compare the database with what this version of agentctl expects (the memory collection only when
    ``memory_dimensions`` says memory is on, and with what vector size)."""
    pool = database.pool
    async with pool.acquire() as connection:
        has_vector = await connection.fetchval("SELECT count(*) FROM pg_extension WHERE extname = 'vector'")
        checkpointer_version = await _checkpointer_version(connection)
        existing_dimensions = await collection_dimensions(connection) if memory_dimensions else None
    if memory_dimensions and existing_dimensions is not None and existing_dimensions != memory_dimensions:
        raise dimensions_mismatch(existing_dimensions, memory_dimensions)
    applied = (
        set(await Migration.get_migrations_which_ran(app_name=APP_NAME)) if await Migration.table_exists() else set()
    )
    return PendingWork(
        vector_extension=not has_vector,
        migrations=[name for name in known_migrations() if name not in applied],
        checkpointer_versions=list(range(checkpointer_version + 1, len(AsyncPostgresSaver.MIGRATIONS))),
        memory_collection_dimensions=memory_dimensions if memory_dimensions and existing_dimensions is None else None,
    )


async def ensure_schema_current(database: Database, memory_dimensions: int | None = None) -> None:
    """Refuse to serve on a schema this version does not expect; the operator runs `agentctl migrate`."""
    pending = await pending_work(database, memory_dimensions)
    if pending:
        raise SchemaOutdatedError(
            f"the database needs {len(pending.describe())} migration step(s) "
            f"({', '.join(pending.describe())}): run `agentctl migrate`"
        )


async def apply_migrations(database: Database, memory_dimensions: int | None = None) -> list[str]:
    """Bring the schema up to date and return what was done (empty when it already was)."""
    async with database.pool.acquire() as lock_connection:
        await _take_migration_lock(lock_connection)
        try:
            pending = await pending_work(database, memory_dimensions)
            if pending.vector_extension:
                await lock_connection.execute("CREATE EXTENSION IF NOT EXISTS vector")
            if pending.migrations:
                await _run_piccolo_migrations()
            if pending.checkpointer_versions:
                await _setup_checkpointer(database.url)
            if pending.memory_collection_dimensions is not None:
                await create_collection(lock_connection, pending.memory_collection_dimensions)
            return pending.describe()
        finally:
            await lock_connection.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK_KEY)


async def _take_migration_lock(connection: asyncpg.Connection) -> None:
    # Polled rather than a blocking pg_advisory_lock: a session blocked in that call holds a snapshot, and the
    # checkpointer's CREATE INDEX CONCURRENTLY in the lock holder would wait for it forever.
    deadline = asyncio.get_running_loop().time() + _MIGRATION_LOCK_WAIT_SECONDS
    while not await connection.fetchval("SELECT pg_try_advisory_lock($1)", _MIGRATION_LOCK_KEY):
        if asyncio.get_running_loop().time() > deadline:
            raise MigrationFailedError(
                f"another `agentctl migrate` has held the migration lock for over {_MIGRATION_LOCK_WAIT_SECONDS} s"
            )
        await asyncio.sleep(0.2)


async def _run_piccolo_migrations() -> None:
    # Piccolo narrates with print(); keep it for the error message rather than the operator's terminal.
    narration = io.StringIO()
    with contextlib.redirect_stdout(narration):
        try:
            result = await run_forwards(app_name=APP_NAME)
        except Exception as error:
            raise MigrationFailedError(f"{type(error).__name__}: {error}") from error
    if not result.success:
        raise MigrationFailedError(result.message or narration.getvalue().strip())


async def _setup_checkpointer(url: str) -> None:
    async with await AsyncConnection.connect(
        url, autocommit=True, prepare_threshold=0, row_factory=dict_row
    ) as connection:
        await AsyncPostgresSaver(connection).setup()


async def _checkpointer_version(connection: asyncpg.Connection) -> int:
    exists = await connection.fetchval("SELECT to_regclass('checkpoint_migrations') IS NOT NULL")
    if not exists:
        return -1
    version = await connection.fetchval("SELECT max(v) FROM checkpoint_migrations")
    return -1 if version is None else version
