"""Every memory's vector in the search form.

Memories used to be embedded as documents (e5's "passage: ") and searched as queries ("query: "); now both sides
are embedded as queries, which costs a turn one embedding instead of two (server/memory/adapters.py). A collection
holding both forms ranks badly: the newer form's similarities run higher, so old memories sink (bench_memory.py:
hit@5 0.85 over a half-and-half collection against 0.98 over either form alone). So the memories stored before
are re-embedded in the background, a batch at a time, by whichever worker or replica locks them first.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from loguru import logger
from psycopg import Connection
from psycopg_pool import ConnectionPool

from server.llm.service import LLMService
from server.memory.collection import COLLECTION
from server.observability.metrics import MemoryMetrics

EMBEDDED_AS = "embedded_as"
SEARCH_FORM = "query"
# Stamped on every memory written now; a memory without it was embedded as a document.
SEARCH_FORM_MARK = {EMBEDDED_AS: SEARCH_FORM}
_BATCH = 32
_RETRY_SECONDS = 60.0


async def keep_every_vector_in_the_search_form(pool: ConnectionPool, llm: LLMService, metrics: MemoryMetrics) -> None:
    """Re-embed the memories stored in the document form until none is left; a failure (the embedding model or
    the database away) is tried again a minute later. Runs on the background lane: turns never wait for it."""
    total = 0
    while True:
        try:
            while count := await _reembed_a_batch(pool, llm):
                total += count
                metrics.reembedded.inc(count)
            break
        except Exception as error:
            logger.warning(
                "memory: re-embedding memories stored in the old form failed, again in {:.0f} s: {}: {}",
                _RETRY_SECONDS,
                type(error).__name__,
                error,
            )
            await asyncio.sleep(_RETRY_SECONDS)
    if total:
        logger.info("memory: {} memories stored in the old document form re-embedded in the search form", total)


async def _reembed_a_batch(pool: ConnectionPool, llm: LLMService) -> int:
    """One batch, locked (SKIP LOCKED: workers share the rows) from its read to its update; how many it held."""
    connection = await asyncio.to_thread(pool.getconn)
    try:
        rows = await asyncio.to_thread(_lock_a_batch, connection)
        if rows:
            embedded = await llm.embed([text for _, text in rows], query=True, background=True)
            await asyncio.to_thread(_store, connection, rows, embedded.vectors)
        else:
            await asyncio.to_thread(connection.rollback)
        return len(rows)
    except BaseException:
        await asyncio.to_thread(connection.rollback)
        raise
    finally:
        await asyncio.to_thread(pool.putconn, connection)


def _lock_a_batch(connection: Connection[Any]) -> list[tuple[Any, str]]:
    return connection.execute(
        f"""SELECT id, payload->>'data' FROM {COLLECTION}
            WHERE NOT payload ? %s AND payload->>'data' IS NOT NULL
            LIMIT %s FOR UPDATE SKIP LOCKED""",
        (EMBEDDED_AS, _BATCH),
    ).fetchall()


def _store(connection: Connection[Any], rows: list[tuple[Any, str]], vectors: list[list[float]]) -> None:
    mark = json.dumps(SEARCH_FORM_MARK)
    with connection.cursor() as cursor:
        cursor.executemany(
            f"UPDATE {COLLECTION} SET vector = %s::vector, payload = payload || %s::jsonb WHERE id = %s",
            [(str(vector), mark, row_id) for (row_id, _), vector in zip(rows, vectors, strict=True)],
        )
    connection.commit()
