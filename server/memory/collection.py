"""The memory collection: the pgvector table Mem0 reads and writes, created by `agentctl migrate`.

Mem0's pgvector store would create it on first use; creating it at migrate time instead gives it the indexes a
shared, multi-user table needs (Mem0's HNSW and full-text indexes, plus one on the owner, so that a user's search
reads that user's rows rather than walking the whole graph) and a trigger that deletes a user's memories with
the user, whichever way the user is deleted.
"""

from __future__ import annotations

import asyncpg

from agentctl.config import LLMSettings, Settings
from server.errors import AppError

COLLECTION = "memories"
# Vector size when the embedding model declares none: OpenAI's text-embedding-3-small.
DEFAULT_DIMENSIONS = 1536
HNSW_INDEX = f"CREATE INDEX IF NOT EXISTS {COLLECTION}_hnsw_idx ON {COLLECTION} USING hnsw (vector vector_cosine_ops)"


class MemoryDimensionsError(AppError):
    status = 503
    code = "memory-dimensions-mismatch"
    title = "The memory collection does not fit the embedding model"


def memory_dimensions(settings: Settings) -> int | None:
    """The vector size the memory collection must have; None when memory is off or nothing can embed."""
    from server.llm.registry import NoModelConfiguredError

    if not settings.memory.enabled:
        return None
    try:
        return embedding_dimensions(settings.llm)
    except NoModelConfiguredError:
        return None


def embedding_dimensions(settings: LLMSettings) -> int | None:
    """The vector size of the embedding role's first model; None when no model serves that role."""
    from server.llm.registry import resolved_models

    models, roles = resolved_models(settings)
    names = roles.get("embedding")
    if not names:
        return None
    return models[names[0]].embedding_dims or DEFAULT_DIMENSIONS


async def collection_dimensions(connection: asyncpg.Connection) -> int | None:
    """The vector size of the existing collection; None when it does not exist yet."""
    return await connection.fetchval(
        """SELECT a.atttypmod FROM pg_attribute a
           WHERE a.attrelid = to_regclass($1) AND a.attname = 'vector' AND NOT a.attisdropped""",
        COLLECTION,
    )


async def create_collection(connection: asyncpg.Connection, dimensions: int) -> None:
    """Idempotent: the table with the layout Mem0 expects, its indexes and the user-deletion trigger."""
    existing = await collection_dimensions(connection)
    if existing is not None and existing != dimensions:
        raise dimensions_mismatch(existing, dimensions)
    await connection.execute(
        f"""
        CREATE TABLE IF NOT EXISTS {COLLECTION} (id uuid PRIMARY KEY, vector vector({dimensions}), payload jsonb);
        {HNSW_INDEX};
        CREATE INDEX IF NOT EXISTS {COLLECTION}_text_lemmatized_idx ON {COLLECTION}
            USING gin (to_tsvector('simple', payload->>'text_lemmatized'));
        CREATE INDEX IF NOT EXISTS {COLLECTION}_user_idx ON {COLLECTION} ((payload->>'user_id'));
        CREATE OR REPLACE FUNCTION agentctl_forget_deleted_user() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            DELETE FROM {COLLECTION} WHERE payload->>'user_id' = OLD.id::text;
            RETURN OLD;
        END $$;
        DROP TRIGGER IF EXISTS agentctl_forget_deleted_user ON users;
        CREATE TRIGGER agentctl_forget_deleted_user AFTER DELETE ON users
            FOR EACH ROW EXECUTE FUNCTION agentctl_forget_deleted_user();
        """
    )


def dimensions_mismatch(existing: int, wanted: int) -> MemoryDimensionsError:
    return MemoryDimensionsError(
        f"the {COLLECTION} table holds {existing}-dimension vectors but the embedding model gives {wanted}: "
        f"keep the embedding model, or drop the table (its memories are lost) and run `agentctl migrate`"
    )
