"""Following a run over HTTP: its events as a response body in any encoding (the native server-sent events, or
OpenAI's chunks), or gathered into one answer; shared by every chat surface."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio

from server.chat.events import TurnEvent
from server.chat.service import ChatService, RunTicket
from server.errors import AppError
from server.observability.metrics import AppMetrics

# How long a stream whose client left waits for its cancelled turn to finish (keeping its partial answer).
_TURN_CLEANUP_SECONDS = 10.0
SSE_MEDIA_TYPE = "text/event-stream"
# What Litestar's ServerSentEvent response sends: no caching, and no buffering by a proxy such as nginx.
SSE_HEADERS = {"Cache-Control": "no-cache", "Connection": "keep-alive", "X-Accel-Buffering": "no"}


class TurnFailedError(AppError):
    status = 502
    code = "turn-failed"
    title = "The agent could not answer"


@dataclass
class GatheredTurn:
    """A whole turn's events, as a non-streamed answer reports them."""

    answer: str = ""
    usage: dict[str, Any] = field(default_factory=dict)
    interrupt: dict[str, str] | None = None
    approval_calls: list[dict[str, Any]] | None = None  # tool calls awaiting the user's approval
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    memories: list[str] = field(default_factory=list)
    finish_reason: str | None = None

    @property
    def content(self) -> str:
        """The answer, or the agent's question when it stopped to ask one."""
        return self.interrupt["question"] if self.interrupt and not self.answer else self.answer


async def gather_turn(events: AsyncGenerator[list[TurnEvent]]) -> GatheredTurn:
    """Read a run's events to its end; an error event is raised (with its own status where it has one)."""
    turn = GatheredTurn()
    async with contextlib.aclosing(events):
        async for batch in events:
            for event in batch:
                kind, data = event.kind, event.data
                if kind == "token":
                    turn.answer += data["content"]
                elif kind == "tool" and data.get("status") != "started":
                    turn.tool_calls.append({key: data.get(key) for key in ("name", "arguments", "status", "result")})
                elif kind == "memory":
                    turn.memories = list(data.get("memories", []))
                elif kind == "interrupt":
                    turn.interrupt = {"question": data["question"]}
                elif kind == "approval":
                    turn.approval_calls = list(data["calls"])
                elif kind == "usage":
                    turn.usage = data["usage"]
                elif kind == "done":
                    turn.finish_reason = data.get("finish_reason")
                elif kind == "error":
                    if isinstance(event.cause, AppError):
                        raise event.cause  # its own status: 413 context too long, 503 no model, 504 deadline
                    error = data["error"]
                    raise TurnFailedError(error["detail"], extra={"error_type": error["type"]})
    return turn


async def follow_as_stream(
    chat: ChatService,
    run_id: uuid.UUID,
    source: str,
    events: AsyncGenerator[list[TurnEvent]],
    metrics: AppMetrics,
    encode: Callable[[list[TurnEvent]], bytes],
    *,
    started: RunTicket | None = None,
    rejoined_at: float | None = None,
    replayed_after: int | None = None,
) -> AsyncIterator[bytes]:
    """A run's events as a response body, ``encode`` turning each batch (the events that were waiting together) into
    one write. Litestar's ServerSentEvent response would send every event on its own, through every middleware's
    send.

    ``started``: the request that sent the run's message (its on_disconnect applies when its client leaves);
    ``rejoined_at``: when a rejoin was asked for, to measure the time to its first replayed event."""
    followers = metrics.chat.followers_open.labels(source)
    followers.inc()
    metrics.http.streams_open.inc()
    ended = False
    try:
        async for batch in events:
            if rejoined_at is not None and batch[0].seq:
                metrics.chat.rejoin_latency.observe(time.perf_counter() - rejoined_at)
                rejoined_at = None
            if replayed_after is not None:
                metrics.chat.events_replayed.inc(len(batch))
            if batch[-1].final:
                ended = True
            yield encode(batch)
    finally:
        followers.dec()
        metrics.http.streams_open.dec()
        await events.aclose()
        if started is not None and started.on_disconnect == "cancel" and not ended:
            # The client that sent it left before the end, and asked for its run to stop then: it stops (queued, it
            # never starts) and keeps its partial answer. Shielded from the server's cancellation of a request whose
            # client left: the request ends once the turn has recorded itself, so the next message finds the
            # session free. Otherwise the run goes on, to be rejoined.
            with anyio.move_on_after(_TURN_CLEANUP_SECONDS, shield=True):
                if started.session_id is None:
                    chat.cancel_here(run_id)
                else:
                    await chat.cancel_run(run_id, session_id=started.session_id)
                await chat.settled_if_cancelled(run_id)
