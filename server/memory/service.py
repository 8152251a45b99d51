"""Long-term memory: Mem0's async memory on the project's PostgreSQL (pgvector), its models from the registry.

Recall runs before a turn under a time budget and is cached briefly; remembering runs after the turn in a
bounded background queue. Memory never slows a turn beyond its budget and never fails one.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import sqlite3
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cachetools import TTLCache
from loguru import logger
from psycopg_pool import ConnectionPool

from agentctl.config import MemorySettings, Settings, prepare_mem0_environment
from server.database.engine import Database
from server.errors import NotFoundError
from server.llm.service import LLMService
from server.memory.collection import COLLECTION
from server.memory.tables import MemoryErasure
from server.memory.vector_forms import SEARCH_FORM_MARK, keep_every_vector_in_the_search_form
from server.memory.vectors import QueryVectors
from server.observability.metrics import MemoryMetrics
from server.observability.pools import psycopg_pool_usage
from server.outages import RateLimitedLog
from server.users.service import user_exists

_RECALL_CACHE_ENTRIES = 10_000
_HISTORY_FILE = "history.db"


class MemoryNotFoundError(NotFoundError):
    code = "memory-not-found"


@dataclass(frozen=True)
class RememberJob:
    """One finished turn whose user message may hold something worth remembering."""

    user_id: uuid.UUID
    session_id: uuid.UUID | None  # None for a turn without a stored conversation
    turn_id: uuid.UUID
    text: str
    queued_at: datetime.datetime = field(default_factory=lambda: datetime.datetime.now(tz=datetime.UTC))


@dataclass(frozen=True)
class MemoryItem:
    id: str
    text: str
    session_id: str | None
    created_at: str | None
    updated_at: str | None
    score: float | None = None

    @classmethod
    def of(cls, found: dict[str, Any]) -> MemoryItem:
        metadata = found.get("metadata") or {}
        return cls(
            id=str(found["id"]),
            text=found.get("memory", ""),
            session_id=metadata.get("session_id"),
            created_at=found.get("created_at"),
            updated_at=found.get("updated_at"),
            score=found.get("score"),
        )


class MemoryService:
    def __init__(
        self,
        memory: Any,
        writer_memory: Any,
        settings: MemorySettings,
        metrics: MemoryMetrics,
        *,
        pool: ConnectionPool,
        infer: bool,
        history_path: Path,
        llm: LLMService,
        queries: QueryVectors,
        reembed_old_vectors: bool,
    ) -> None:
        self._memory = memory  # searches and the user's requests
        self._writer_memory = writer_memory  # the background writers, with models on their own lane
        self._pool = pool
        self._settings = settings
        self._metrics = metrics
        self._infer = infer
        self._history_path = history_path
        self._llm = llm
        self._queries = queries
        self._cache: TTLCache[tuple[str, int, str], list[str]] | None = (
            TTLCache(maxsize=_RECALL_CACHE_ENTRIES, ttl=settings.recall_cache_seconds)
            if settings.recall_cache_seconds > 0
            else None
        )
        # A user's generation moves on whenever their memories change, so cached recalls of before go unused.
        self._generations: defaultdict[str, int] = defaultdict(int)
        self._queue: asyncio.Queue[RememberJob] = asyncio.Queue(maxsize=settings.queue_size)
        self._writers: list[asyncio.Task[None]] = []
        self._reembed_old_vectors = reembed_old_vectors
        self._reembedding: asyncio.Task[None] | None = None
        self._accepting = True
        self._failures = RateLimitedLog()  # a model outage fails every write: one line a minute, and the counter
        metrics.queue_capacity.set(settings.queue_size)

    @classmethod
    async def open(
        cls, settings: Settings, llm: LLMService, database_url: str, metrics: MemoryMetrics
    ) -> MemoryService:
        """Mem0 on the migrated collection, with the registry's memory and embedding models."""
        from server.memory.collection import memory_dimensions

        mem0_dir = prepare_mem0_environment(settings)  # before mem0 is imported: its telemetry reads it then
        from mem0 import AsyncMemory
        from mem0.configs.base import MemoryConfig

        from server.memory.adapters import RegistryEmbedder, RegistryLLM

        _keep_mem0_offline()
        dimensions = memory_dimensions(settings)
        pool = ConnectionPool(
            database_url,
            min_size=0,
            max_size=settings.memory.pool_max_size,
            timeout=settings.database.connect_timeout_seconds,
            max_idle=settings.database.max_idle_seconds,
            kwargs={"connect_timeout": max(1, round(settings.database.connect_timeout_seconds))},
            open=False,
        )
        await asyncio.to_thread(pool.open)
        history_path = mem0_dir / _HISTORY_FILE
        config = MemoryConfig(
            vector_store={
                "provider": "pgvector",
                "config": {"collection_name": COLLECTION, "embedding_model_dims": dimensions, "connection_pool": pool},
            },
            # Placeholders, replaced below: mem0 picks its models from a fixed list of providers, and ours go
            # through the model layer (retries, fallbacks, breakers, metrics). Building these connects nowhere.
            llm={"provider": "openai", "config": {"api_key": "unused"}},
            embedder={"provider": "openai", "config": {"api_key": "unused", "embedding_dims": dimensions}},
            history_db_path=str(history_path),
        )
        loop = asyncio.get_running_loop()
        # Two Mem0 instances on one pool and one history file: one answers turns and users, one writes in the
        # background, so that a turn's search never waits behind an addition's embeddings.
        queries = QueryVectors()

        async def mem0_memory(*, background: bool) -> Any:
            memory = await asyncio.to_thread(AsyncMemory, config)
            memory.llm = RegistryLLM(llm, loop, background=background)
            memory.embedding_model = RegistryEmbedder(llm, loop, background=background, queries=queries)
            return memory

        chain = llm.registry.chain("memory")
        infer = settings.memory.extraction == "model" or (
            settings.memory.extraction == "auto" and all(model.spec.provider != "local" for model in chain)
        )
        return cls(
            await mem0_memory(background=False),
            await mem0_memory(background=True),
            settings.memory,
            metrics,
            pool=pool,
            infer=infer,
            history_path=history_path,
            llm=llm,
            queries=queries,
            reembed_old_vectors=llm.registry.chain("embedding")[0].embeds_queries_apart,
        )

    def start(self) -> None:
        self._writers = [
            asyncio.create_task(self._write_forever(), name=f"memory-writer-{number}")
            for number in range(self._settings.writers)
        ]
        if self._reembed_old_vectors:
            self._reembedding = asyncio.create_task(
                keep_every_vector_in_the_search_form(self._pool, self._llm, self._metrics), name="memory-reembed"
            )

    async def close(self) -> None:
        """Finish what is queued (within drain_seconds), then stop the writers and close the pool."""
        self._accepting = False
        if self._reembedding is not None:  # the next start carries on where it stopped
            self._reembedding.cancel()
            await asyncio.gather(self._reembedding, return_exceptions=True)
        if self._writers:
            try:
                async with asyncio.timeout(self._settings.drain_seconds):
                    await self._queue.join()
            except TimeoutError:
                logger.warning("memory: {} turns not remembered: the drain time ran out", self._queue.qsize())
            for writer in self._writers:
                writer.cancel()
            await asyncio.gather(*self._writers, return_exceptions=True)
        await asyncio.to_thread(self._pool.close)

    def pool_usage(self) -> tuple[int, int]:
        return psycopg_pool_usage(self._pool)

    async def check_pool(self) -> None:
        """Replace the broken connections of Mem0's pool (after a database outage)."""
        await asyncio.to_thread(self._pool.check)

    async def ping(self, timeout_seconds: float) -> None:
        """One round trip through Mem0's own pool (readiness: memory works only if that pool does)."""

        def round_trip() -> None:
            with self._pool.connection(timeout=timeout_seconds) as connection:
                connection.execute("SELECT 1")

        async with asyncio.timeout(timeout_seconds):
            await asyncio.to_thread(round_trip)

    # --- recall, before a turn ---

    async def recall(self, user_id: uuid.UUID, text: str) -> list[str]:
        """The user's memories relevant to ``text``; empty when the search is late or fails (the turn goes on)."""
        owner = str(user_id)
        key = (owner, self._generations[owner], text)
        if self._cache is not None and (cached := self._cache.get(key)) is not None:
            self._metrics.recalls.labels("cached").inc()
            return cached
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._settings.recall_budget_seconds):
                # The query's vector first, here, where a late one is cancelled with the recall: left to Mem0, the
                # embedding ran on, holding a thread, long after the turn had gone on without it.
                if self._queries.get(text) is None:
                    self._queries.put(text, (await self._llm.embed([text], query=True)).vectors[0])
                found = await self._memory.search(
                    text,
                    filters={"user_id": owner},
                    top_k=self._settings.recall_limit,
                    threshold=self._settings.recall_threshold,
                )
        except TimeoutError:
            self._metrics.recalls.labels("timeout").inc()
            logger.warning("memory recall ran past its {} s budget; the turn goes on without", self._budget)
            return []
        except Exception as error:
            self._metrics.recalls.labels("error").inc()
            logger.warning("memory recall failed; the turn goes on without: {}: {}", type(error).__name__, error)
            return []
        self._metrics.recalls.labels("ok").inc()
        self._metrics.recall_seconds.observe(time.perf_counter() - started)
        memories = [item["memory"] for item in found["results"] if item.get("memory")]
        if self._cache is not None:
            self._cache[key] = memories
        return memories

    @property
    def _budget(self) -> float:
        return self._settings.recall_budget_seconds

    # --- remember, after a turn ---

    def remember(self, job: RememberJob) -> bool:
        """Queue the turn for remembering; never waits. False (and counted) when the queue is full or closed."""
        if not self._accepting:
            self._metrics.writes.labels("dropped").inc()
            return False
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            self._metrics.writes.labels("dropped").inc()
            logger.warning("memory queue full ({}): turn {} not remembered", self._queue.maxsize, job.turn_id)
            return False
        self._metrics.queue_depth.inc()
        return True

    async def _write_forever(self) -> None:
        while True:
            job = await self._queue.get()
            self._metrics.queue_depth.dec()
            try:
                if await self._erased_since(job):
                    self._metrics.writes.labels("erased").inc()
                    continue
                added = await self._writer_memory.add(
                    [{"role": "user", "content": job.text}],
                    user_id=str(job.user_id),
                    metadata={
                        **({"session_id": str(job.session_id)} if job.session_id else {}),
                        "turn_id": str(job.turn_id),
                        **SEARCH_FORM_MARK,
                    },
                    infer=self._infer,
                )
                if await self._erased_since(job):
                    # The user forgot everything while this was being written (here or on another worker): what it
                    # wrote goes too, as the user asked.
                    ids = [str(item["id"]) for item in added.get("results", []) if item.get("id")]
                    await self._erase(job.user_id, ids)
                    self._metrics.writes.labels("erased").inc()
                    continue
                self._forget_cached(job.user_id)
                self._metrics.writes.labels("ok").inc()
            except Exception as error:
                self._metrics.writes.labels("error").inc()
                self._failures.warning(
                    type(error).__name__,
                    "memory: turn {} not remembered: {}: {}",
                    job.turn_id,
                    type(error).__name__,
                    error,
                )
            finally:
                self._queue.task_done()

    # --- the user's own view ---

    async def newest(self, user_id: uuid.UUID, *, limit: int) -> list[MemoryItem]:
        """The user's memories, newest first."""
        found = await self._memory.get_all(filters={"user_id": str(user_id)}, top_k=limit)
        items = [MemoryItem.of(item) for item in found["results"]]
        return sorted(items, key=lambda item: item.created_at or "", reverse=True)

    async def search(self, user_id: uuid.UUID, query: str, *, limit: int) -> list[MemoryItem]:
        """The user's memories most relevant to ``query``, best first."""
        found = await self._memory.search(query, filters={"user_id": str(user_id)}, top_k=limit, threshold=0.0)
        return [MemoryItem.of(item) for item in found["results"]]

    async def delete(self, user_id: uuid.UUID, memory_id: uuid.UUID) -> None:
        """Delete one of the user's memories (its history, and the user's recent messages Mem0 keeps on this host,
        go too); someone else's is as absent as one that never existed."""
        found = await self._memory.get(str(memory_id))
        if found is None or found.get("user_id") != str(user_id):
            raise MemoryNotFoundError("no such memory")
        await self._erase(user_id, [str(memory_id)])

    async def forget_all(self, user_id: uuid.UUID) -> int:
        """Delete every memory of the user, vectors and Mem0's history of them included; how many there were.

        Recorded first, so that no memory writer, on any worker, writes a turn queued before it; then the user's
        turns still queued here are dropped, and what exists is deleted."""
        await _record_erasure(user_id)
        self._drop_queued(user_id)
        ids = await asyncio.to_thread(self._memory_ids_of, str(user_id))
        await self._memory.delete_all(user_id=str(user_id))
        await self._purge_history(user_id, ids)  # after the deletes, which Mem0 writes into the history too
        self._forget_cached(user_id)
        return len(ids)

    async def _erase(self, user_id: uuid.UUID, memory_ids: list[str]) -> None:
        for memory_id in memory_ids:
            with contextlib.suppress(ValueError):  # already gone
                await self._memory.delete(memory_id)
        await self._purge_history(user_id, memory_ids)  # after the deletes, which Mem0 writes into the history too
        self._forget_cached(user_id)

    async def _erased_since(self, job: RememberJob) -> bool:
        """Whether the user forgot everything since the turn was queued, or no longer exists (the account was
        deleted, its erasure record with it): either way, nothing of the turn may be kept."""
        row = await MemoryErasure.select(MemoryErasure.erased_at).where(MemoryErasure.owner == job.user_id).first()
        if row is not None:
            return bool(row["erased_at"] >= job.queued_at)
        return not await user_exists(job.user_id)

    def _drop_queued(self, user_id: uuid.UUID) -> None:
        """This worker's queued turns of the user, out of the queue (the writers would skip them anyway)."""
        kept: list[RememberJob] = []
        dropped = 0
        while not self._queue.empty():
            job = self._queue.get_nowait()
            self._queue.task_done()
            if job.user_id == user_id:
                dropped += 1
            else:
                kept.append(job)
        for job in kept:
            self._queue.put_nowait(job)
        if dropped:
            self._metrics.queue_depth.dec(dropped)
            self._metrics.writes.labels("erased").inc(dropped)

    def _memory_ids_of(self, owner: str) -> list[str]:
        with self._pool.connection() as connection:
            rows = connection.execute(
                f"SELECT id::text FROM {COLLECTION} WHERE payload->>'user_id' = %s", (owner,)
            ).fetchall()
        return [row[0] for row in rows]

    async def _purge_history(self, user_id: uuid.UUID, memory_ids: list[str]) -> None:
        """Mem0 keeps every memory's past text (and the user's last messages) in its SQLite history, even after a
        delete; forgetting means those go too (on this host: see the README on replicas)."""

        await asyncio.to_thread(_purge_history_file, self._history_path, user_id, memory_ids)

    def _forget_cached(self, user_id: uuid.UUID) -> None:
        self._generations[str(user_id)] += 1


def history_file(settings: Settings) -> Path:
    """Mem0's SQLite history on this host (in the data directory prepare_mem0_environment gives Mem0)."""
    return settings.data_dir / "mem0" / _HISTORY_FILE


async def _record_erasure(user_id: uuid.UUID) -> None:
    """From now on, no memory writer on any worker writes a turn of the user queued before now."""
    now = datetime.datetime.now(tz=datetime.UTC)
    await MemoryErasure.insert(MemoryErasure(owner=user_id, erased_at=now)).on_conflict(
        target=MemoryErasure.owner, action="DO UPDATE", values=[MemoryErasure.erased_at]
    )


def _purge_history_file(path: Path, user_id: uuid.UUID, memory_ids: list[str]) -> None:
    """The memories' past texts and the user's last messages, out of one host's Mem0 history (if it has one)."""
    if not path.exists():  # connecting would create it
        return
    with contextlib.closing(sqlite3.connect(path, timeout=10)) as connection, connection:
        connection.executemany("DELETE FROM history WHERE memory_id = ?", [(item,) for item in memory_ids])
        connection.execute("DELETE FROM messages WHERE session_scope = ?", (f"user_id={user_id}",))


async def _collection_exists(database: Database) -> bool:
    return bool(await database.pool.fetchval("SELECT to_regclass($1) IS NOT NULL", COLLECTION))


async def all_memories_of(database: Database, user_id: uuid.UUID) -> list[MemoryItem]:
    """Every memory of the user, oldest first, read from the collection itself: whether or not this process runs
    Mem0 (memory may be off now and have been on before), and with no page limit (an export)."""
    if not await _collection_exists(database):
        return []
    rows = await database.pool.fetch(
        f"SELECT id::text AS id, payload FROM {COLLECTION} WHERE payload->>'user_id' = $1 "
        "ORDER BY payload->>'created_at', id",
        str(user_id),
    )
    items = []
    for row in rows:
        payload = row["payload"] if isinstance(row["payload"], dict) else json.loads(row["payload"])
        items.append(
            MemoryItem(
                id=row["id"],
                text=payload.get("data", ""),
                session_id=payload.get("session_id"),
                created_at=payload.get("created_at"),
                updated_at=payload.get("updated_at"),
            )
        )
    return items


async def erase_memories_of(database: Database, user_id: uuid.UUID, history_path: Path) -> int:
    """Delete every memory of the user without Mem0 (a deleted account, from the server or the CLI): recorded first,
    so that no writer on any worker writes a turn queued before; then the vectors, then this host's history of them.
    How many memories there were."""
    await _record_erasure(user_id)
    ids: list[str] = []
    if await _collection_exists(database):
        deleted = await database.pool.fetch(
            f"DELETE FROM {COLLECTION} WHERE payload->>'user_id' = $1 RETURNING id::text AS id", str(user_id)
        )
        ids = [row["id"] for row in deleted]
    await asyncio.to_thread(_purge_history_file, history_path, user_id, ids)
    return len(ids)


def _keep_mem0_offline() -> None:
    """mem0 lemmatizes and extracts entities with spaCy when it can; with spaCy installed but not its English
    model, it would download that model on first use. Without both, mem0 searches by vectors and plain-text
    keywords; say so once here rather than let it warn on every worker's first search."""
    import importlib.util

    from mem0.utils import spacy_models

    if importlib.util.find_spec("spacy") is not None:
        import spacy

        if spacy.util.is_package("en_core_web_sm"):
            return
    spacy_models._load_failed_full = True
    spacy_models._load_failed_lemma = True
    logger.debug("memory: spaCy with en_core_web_sm is not installed; no lemmas or entities in memory search")
