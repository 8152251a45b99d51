"""A run's events: numbered, kept in memory by the worker that runs it (its followers there read them from memory)
and written in bursts to a shared log (a Redis stream per run, or PostgreSQL without Redis) from which followers
on any other worker or replica read them, live or after a dropped connection."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, cast

import msgspec
from redis.asyncio import Redis

from server.database.engine import Database

EventKind = Literal["memory", "token", "tool", "interrupt", "approval", "usage", "error", "done", "heartbeat"]
# A run's last event is one of these: a follower stops after it.
FINAL_KINDS = frozenset({"done", "error"})


@dataclass(frozen=True, slots=True)
class TurnEvent:
    kind: EventKind
    data: dict[str, Any]
    cause: BaseException | None = None  # an error event's exception, for a caller that answers with a status
    seq: int = 0  # its number in the run, from 1; 0 for heartbeats, which are no part of it

    @property
    def final(self) -> bool:
        return self.kind in FINAL_KINDS


HEARTBEAT = TurnEvent("heartbeat", {})


def event_id(run_id: uuid.UUID, seq: int) -> str:
    """The SSE id of a run's event: a follower that lost its stream sends it back as Last-Event-ID."""
    return f"{run_id}:{seq}"


class RunLog:
    """The events of a run running in this worker, in memory, for every follower here and for the shared log."""

    def __init__(self, run_id: uuid.UUID) -> None:
        self.run_id = run_id
        self.events: list[TurnEvent] = []
        self.ended = False
        self._wakers: set[asyncio.Event] = set()

    def append(self, kind: EventKind, data: dict[str, Any], cause: BaseException | None = None) -> None:
        self.events.append(TurnEvent(kind, data, cause, len(self.events) + 1))
        for waker in self._wakers:
            waker.set()

    async def wait_beyond(self, count: int) -> None:
        """Until the run has more than ``count`` events, or has ended."""
        if len(self.events) > count or self.ended:
            return
        waker = asyncio.Event()
        self._wakers.add(waker)
        try:
            await waker.wait()
        finally:
            self._wakers.discard(waker)

    def end(self) -> None:
        self.ended = True
        for waker in self._wakers:
            waker.set()

    async def follow(self, after: int = 0, heartbeat_seconds: float | None = None) -> AsyncGenerator[list[TurnEvent]]:
        """The events after ``after``, in lists of those that were waiting together (one write per list for a
        stream: a fast model's tokens come in bursts), until the run ends; with ``heartbeat_seconds``, a heartbeat
        that often too. A timer wakes the follower for it: a timeout per wait would cost a task per token."""
        waker = asyncio.Event()
        beat: asyncio.TimerHandle | None = None
        beating = [False]
        loop = asyncio.get_running_loop()

        def heartbeat() -> None:
            nonlocal beat
            beating[0] = True
            waker.set()
            beat = loop.call_later(heartbeat_seconds or 0, heartbeat)

        if heartbeat_seconds is not None:
            beat = loop.call_later(heartbeat_seconds, heartbeat)
        self._wakers.add(waker)
        cursor = after
        try:
            while True:
                waker.clear()
                if len(self.events) > cursor:
                    batch = self.events[cursor:]
                    cursor = len(self.events)
                    yield batch
                    continue
                if self.ended:
                    return
                if beating[0]:
                    beating[0] = False
                    yield [HEARTBEAT]
                    continue
                await waker.wait()
        finally:
            self._wakers.discard(waker)
            if beat is not None:
                beat.cancel()


class SharedEventLog(Protocol):
    """Where a run's events go for followers elsewhere; every burst is kept ``ttl`` after it is written."""

    async def append(self, run_id: uuid.UUID, events: Sequence[TurnEvent]) -> None: ...

    async def read(self, run_id: uuid.UUID, after: int, wait_seconds: float) -> list[TurnEvent]:
        """The events after ``after``, waiting up to ``wait_seconds`` for one if there is none yet."""
        ...

    async def last_seq(self, run_id: uuid.UUID) -> int: ...

    async def forget_expired(self) -> None:
        """Drop the events whose TTL has passed (a no-op where the store expires them itself)."""
        ...


def _encoded(events: Sequence[TurnEvent]) -> str:
    return as_json([[event.seq, event.kind, event.data] for event in events])


def _decoded(burst: str | bytes, after: int) -> list[TurnEvent]:
    return [TurnEvent(kind, data, None, seq) for seq, kind, data in msgspec.json.decode(burst) if seq > after]


def as_json(value: Any) -> str:
    """JSON by msgspec, Litestar's own serializer: a tenth of json.dumps' time, and every token passes here twice
    (the log's burst, the stream's event)."""
    return _json_encoder.encode(value).decode()


_json_encoder = msgspec.json.Encoder()


class RedisEventLog:
    """A Redis stream per run, one entry per burst (its id: the burst's last sequence number), expiring ``ttl``
    after its last write. Followers block on XREAD, so a live event reaches them as soon as it is written."""

    def __init__(self, redis: Redis, key_prefix: str, ttl_seconds: float) -> None:
        self._redis = redis
        self._prefix = key_prefix
        self._ttl = max(1, round(ttl_seconds))

    def _key(self, run_id: uuid.UUID) -> str:
        return f"{self._prefix}:run:{run_id}:events"

    async def append(self, run_id: uuid.UUID, events: Sequence[TurnEvent]) -> None:
        key = self._key(run_id)
        async with self._redis.pipeline(transaction=False) as pipeline:
            pipeline.xadd(key, {"e": _encoded(events)}, id=f"{events[-1].seq}-0")
            pipeline.expire(key, self._ttl)
            await pipeline.execute()

    async def read(self, run_id: uuid.UUID, after: int, wait_seconds: float) -> list[TurnEvent]:
        block = max(1, round(wait_seconds * 1000))
        # RESP2 (the default): [[key, [(id, fields), ...]]].
        answer = cast(list[Any], await self._redis.xread({self._key(run_id): f"{after}-0"}, block=block))
        return [event for _key, entries in answer for _id, fields in entries for event in _decoded(fields[b"e"], after)]

    async def last_seq(self, run_id: uuid.UUID) -> int:
        newest = cast(list[Any], await self._redis.xrevrange(self._key(run_id), count=1))
        return int(newest[0][0].split(b"-")[0]) if newest else 0

    async def forget_expired(self) -> None:
        return None


class DatabaseEventLog:
    """chat_run_events: one row per burst; followers poll (a run is followed from elsewhere only after a dropped
    connection or when it runs on another worker, so the polling is rare and cheap)."""

    _POLL_SECONDS = 0.05

    def __init__(self, database: Database, ttl_seconds: float) -> None:
        self._database = database
        self._ttl = ttl_seconds

    async def append(self, run_id: uuid.UUID, events: Sequence[TurnEvent]) -> None:
        await self._database.pool.execute(
            "INSERT INTO chat_run_events (run, last_seq, events) VALUES ($1, $2, $3::jsonb)",
            run_id,
            events[-1].seq,
            _encoded(events),
        )

    async def read(self, run_id: uuid.UUID, after: int, wait_seconds: float) -> list[TurnEvent]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_seconds
        while True:
            rows = await self._database.pool.fetch(
                "SELECT events::text FROM chat_run_events WHERE run = $1 AND last_seq > $2 ORDER BY last_seq",
                run_id,
                after,
            )
            events = [event for row in rows for event in _decoded(row[0], after)]
            if events or loop.time() >= deadline:
                return events
            await asyncio.sleep(self._POLL_SECONDS)

    async def last_seq(self, run_id: uuid.UUID) -> int:
        newest = await self._database.pool.fetchval("SELECT max(last_seq) FROM chat_run_events WHERE run = $1", run_id)
        return int(newest or 0)

    async def forget_expired(self) -> None:
        await self._database.pool.execute(
            "DELETE FROM chat_run_events USING chat_turns WHERE chat_run_events.run = chat_turns.id "
            "AND chat_turns.finished_at < now() - make_interval(secs => $1)",
            self._ttl,
        )
