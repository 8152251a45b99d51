from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Annotated, Literal

import anyio
from litestar import Controller, Response, delete, get, post
from litestar.di import NamedDependency, Provide
from litestar.openapi.spec import SecurityRequirement
from litestar.params import FromPath, HeaderParameter, JSONBody, QueryParameter
from litestar.response import ServerSentEventMessage, Stream

from agentctl.config import AgentSettings
from server.auth.dependencies import BEARER_SCHEME, provide_session_claims
from server.auth.tokens import SessionClaims
from server.chat.events import TurnEvent, as_json
from server.chat.runs import RunRow
from server.chat.schemas import (
    CancelResponse,
    ChatMessage,
    ChatRequest,
    ChatResponse,
    MessagesResponse,
    Run,
    RunError,
    RunPage,
)
from server.chat.service import ChatService, RunTicket
from server.errors import AppError, InvalidFieldError, NotFoundError, explain_pattern, problem_responses
from server.observability.metrics import AppMetrics
from server.ratelimit.service import RouteClass
from server.security.text import has_visible_text, normalize_text
from server.sessions.service import get_owned_session, owner_name_of_session

SESSION_TOKEN: list[SecurityRequirement] = [{BEARER_SCHEME: []}]
RUNS_PATH = "/api/v1/chatbot/runs"
WAIT_MAX_SECONDS = 300  # a long poll longer than this is better as a stream
# An event's id as the events carry it (<run id>:<number>), or its number alone; empty: from the start.
_EVENT_ID = explain_pattern(
    r"^(([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}:)?[0-9]{1,9})?$",
    "expected an event id as the stream sent it (<run id>:<number>) or its number alone",
)
_SSE_MEDIA_TYPE = "text/event-stream"
# What Litestar's ServerSentEvent response sends: no caching, and no buffering by a proxy such as nginx.
_SSE_HEADERS = {"Cache-Control": "no-cache", "Connection": "keep-alive", "X-Accel-Buffering": "no"}


class TurnFailedError(AppError):
    status = 502
    code = "turn-failed"
    title = "The agent could not answer"


class ChatController(Controller):
    """The conversation of one session (session token from POST /api/v1/auth/session)."""

    path = "/api/v1/chatbot"
    tags = ["chat"]
    security = SESSION_TOKEN
    dependencies = {"session": Provide(provide_session_claims)}

    @post(
        "/chat",
        status_code=200,
        opt={"rate_limit": RouteClass.CHAT},
        responses=problem_responses(401, 404, 409, 413, 422, 429, 502, 503, 504),
    )
    async def chat(
        self,
        session: NamedDependency[SessionClaims],
        chat: NamedDependency[ChatService],
        agent_settings: NamedDependency[AgentSettings],
        data: JSONBody[ChatRequest],
    ) -> ChatResponse:
        """Send the user's message and wait for the whole answer."""
        ticket = await _submit(chat, agent_settings, session, data, streaming=False)
        answer, usage, interrupt = "", {}, None
        _source, events = await chat.open_follow(ticket.id, session_id=session.session_id)
        async with contextlib.aclosing(events):
            async for batch in events:
                for event in batch:
                    if event.kind == "token":
                        answer += event.data["content"]
                    elif event.kind == "interrupt":
                        interrupt = {"question": event.data["question"]}
                    elif event.kind == "usage":
                        usage = event.data["usage"]
                    elif event.kind == "error":
                        if isinstance(event.cause, AppError):
                            raise event.cause  # its own status: 413 context too long, 503 no model, 504 deadline
                        error = event.data["error"]
                        raise TurnFailedError(error["detail"], extra={"error_type": error["type"]})
        content = interrupt["question"] if interrupt and not answer else answer
        return ChatResponse(messages=[ChatMessage(role="assistant", content=content)], usage=usage, interrupt=interrupt)

    @post(
        "/chat/stream",
        status_code=200,
        media_type=_SSE_MEDIA_TYPE,
        response_description="Server-sent events, each with an id (run id:sequence) and a JSON object as data",
        opt={"rate_limit": RouteClass.CHAT},
        responses=problem_responses(401, 404, 409, 413, 422, 429),
    )
    async def chat_stream(
        self,
        session: NamedDependency[SessionClaims],
        chat: NamedDependency[ChatService],
        agent_settings: NamedDependency[AgentSettings],
        metrics: NamedDependency[AppMetrics],
        data: JSONBody[ChatRequest],
    ) -> Stream:
        """Send the user's message and receive the answer as server-sent events: memory (what was recalled),
        token, tool, interrupt, usage, error, done. Every event's data is JSON with at least content and done;
        every event's id is the run's id and its number, for GET /runs/{id}/stream after a dropped connection
        (the answer goes on without its client unless on_disconnect is cancel)."""
        ticket = await _submit(chat, agent_settings, session, data)
        source, events = await chat.open_follow(ticket.id, session_id=session.session_id)
        stream = _sse(chat, ticket.id, source, events, metrics, started=ticket)
        return Stream(stream, media_type=_SSE_MEDIA_TYPE, headers={**_SSE_HEADERS, **_run_headers(ticket.id)})

    @get("/messages", responses=problem_responses(401, 404, 429))
    async def messages(
        self, session: NamedDependency[SessionClaims], chat: NamedDependency[ChatService]
    ) -> MessagesResponse:
        """The session's conversation so far."""
        await get_owned_session(owner_id=session.subject, session_id=session.session_id)
        history = await chat.history(session.session_id)
        return MessagesResponse(messages=[ChatMessage(**item) for item in history if item["role"] != "system"])

    @delete("/messages", status_code=204, responses=problem_responses(401, 404, 429))
    async def clear_messages(self, session: NamedDependency[SessionClaims], chat: NamedDependency[ChatService]) -> None:
        """Forget the session's conversation, checkpoints included."""
        await get_owned_session(owner_id=session.subject, session_id=session.session_id)
        await chat.clear(session.session_id)

    @post("/cancel", status_code=200, responses=problem_responses(401, 404, 429))
    async def cancel(
        self, session: NamedDependency[SessionClaims], chat: NamedDependency[ChatService]
    ) -> CancelResponse:
        """Stop the session's running turn; the partial answer stays in the history, marked interrupted."""
        await get_owned_session(owner_id=session.subject, session_id=session.session_id)
        return CancelResponse(cancelled=await chat.cancel(session.session_id))


class RunsController(Controller):
    """The session's runs: messages answered in the background, rejoined after a dropped connection, waited for."""

    path = RUNS_PATH
    tags = ["runs"]
    security = SESSION_TOKEN
    dependencies = {"session": Provide(provide_session_claims)}

    @post(
        "/",
        status_code=202,
        opt={"rate_limit": RouteClass.CHAT},
        responses=problem_responses(401, 404, 409, 413, 422, 429, 503),
    )
    async def create_run(
        self,
        session: NamedDependency[SessionClaims],
        chat: NamedDependency[ChatService],
        agent_settings: NamedDependency[AgentSettings],
        data: JSONBody[ChatRequest],
    ) -> Response[Run]:
        """Send the user's message to be answered in the background (the chat body); follow it with
        /runs/{id}/stream, wait for it with /runs/{id}/wait."""
        ticket = await _submit(chat, agent_settings, session, data)
        row = await chat.find(ticket.id, session_id=session.session_id)
        return Response(await _run_of(chat, row), status_code=202, headers={"Location": f"{RUNS_PATH}/{ticket.id}"})

    @get("/", responses=problem_responses(401, 422, 429))
    async def list_runs(
        self,
        session: NamedDependency[SessionClaims],
        chat: NamedDependency[ChatService],
        status: Annotated[
            list[Literal["queued", "running", "awaiting_human", "done", "error", "cancelled"]] | None,
            QueryParameter(description="Only runs with one of these statuses."),
        ] = None,
        active: Annotated[
            bool, QueryParameter(description="Only queued and running runs (what a reloaded client rejoins).")
        ] = False,
        limit: Annotated[int, QueryParameter(ge=1, le=100)] = 20,
        cursor: Annotated[
            uuid.UUID | None, QueryParameter(description="next_cursor of the page before: the runs older than it.")
        ] = None,
    ) -> RunPage:
        """The session's runs, newest first, each with the id of its last event so far."""
        statuses: list[str] | None = list(status) if status else None
        if active:
            statuses = [value for value in (statuses or ["queued", "running"]) if value in ("queued", "running")]
        rows = await chat.page(session_id=session.session_id, statuses=statuses, limit=limit + 1, before=cursor)
        items = [await _run_of(chat, row) for row in rows[:limit]]
        return RunPage(items=items, next_cursor=rows[limit - 1].id if len(rows) > limit else None)

    @get("/{run_id:uuid}", responses=problem_responses(401, 404, 429))
    async def get_run(
        self, session: NamedDependency[SessionClaims], chat: NamedDependency[ChatService], run_id: FromPath[uuid.UUID]
    ) -> Run:
        """A run: its status, its answer once done, its usage, its error."""
        return await _run_of(chat, await chat.find(run_id, session_id=session.session_id))

    @get("/{run_id:uuid}/wait", responses=problem_responses(401, 404, 422, 429))
    async def wait_run(
        self,
        session: NamedDependency[SessionClaims],
        chat: NamedDependency[ChatService],
        run_id: FromPath[uuid.UUID],
        # A query parameter named as the contract names it (errors name the field by it), not an asyncio timeout.
        timeout: Annotated[  # noqa: ASYNC109
            float, QueryParameter(ge=0, le=WAIT_MAX_SECONDS, description="Seconds to wait at most.")
        ] = 30.0,
    ) -> Run:
        """The run once it has ended, or as it stands after ``timeout`` seconds (long polling)."""
        row = await chat.find(run_id, session_id=session.session_id)
        if row.active:
            _source, events = await chat.open_follow(run_id, session_id=session.session_id, after=0)
            with anyio.move_on_after(timeout):
                async with contextlib.aclosing(events):
                    async for batch in events:
                        if batch[-1].final:
                            break
            row = await chat.find(run_id, session_id=session.session_id)
        return await _run_of(chat, row)

    @get(
        "/{run_id:uuid}/stream",
        media_type=_SSE_MEDIA_TYPE,
        response_description="The run's server-sent events after Last-Event-ID, then live ones until it ends",
        responses=problem_responses(401, 404, 410, 422, 429),
    )
    async def stream_run(
        self,
        session: NamedDependency[SessionClaims],
        chat: NamedDependency[ChatService],
        metrics: NamedDependency[AppMetrics],
        run_id: FromPath[uuid.UUID],
        last_event_id: Annotated[
            str,
            HeaderParameter(
                header="Last-Event-ID", pattern=_EVENT_ID, description="The id of the last event received."
            ),
        ] = "",
        after: Annotated[
            str, QueryParameter(pattern=_EVENT_ID, description="Last-Event-ID, for clients that cannot set the header.")
        ] = "",
    ) -> Stream:
        """Rejoin a run: every event after Last-Event-ID (from its start without one), then live ones until done
        or error, on whichever worker or replica this lands. 404 for another session's run, 410 for a run whose
        events have expired (its answer is in the history)."""
        asked = time.perf_counter()
        given = last_event_id or after
        seq = _sequence_of(given, run_id) if given else 0
        source, events = await chat.open_follow(run_id, session_id=session.session_id, after=seq)
        metrics.chat.rejoins.labels(source).inc()
        stream = _sse(chat, run_id, source, events, metrics, rejoined_at=asked, replayed_after=seq)
        return Stream(stream, media_type=_SSE_MEDIA_TYPE, headers={**_SSE_HEADERS, **_run_headers(run_id)})

    @post("/{run_id:uuid}/cancel", status_code=200, responses=problem_responses(401, 404, 429))
    async def cancel_run(
        self, session: NamedDependency[SessionClaims], chat: NamedDependency[ChatService], run_id: FromPath[uuid.UUID]
    ) -> Run:
        """Stop a run: a queued one never starts; a running one stops wherever it runs, keeping its partial answer."""
        return await _run_of(chat, await chat.cancel_run(run_id, session_id=session.session_id))


def _sequence_of(given: str, run_id: uuid.UUID) -> int:
    """The number in a Last-Event-ID (its form was checked against _EVENT_ID); an event of another run is no event
    of this one."""
    run, _, number = given.rpartition(":")
    if run and uuid.UUID(run) != run_id:
        raise EventNotFoundError(given)
    return int(number)


class EventNotFoundError(NotFoundError):
    code = "event-not-found"

    def __init__(self, given: str) -> None:
        super().__init__(f"{given} is an event of another run")


async def _run_of(chat: ChatService, row: RunRow) -> Run:
    finished = not row.active
    error = None
    if row.status in ("error", "cancelled") and row.error_type:
        error = RunError(type=row.error_type, detail=_ERROR_DETAILS.get(row.error_type, "the turn failed"))
    return Run(
        id=row.id,
        session_id=row.session_id,
        status=row.status,  # type: ignore[arg-type]  # the column holds only these
        strategy=row.strategy,
        on_disconnect=row.on_disconnect,
        input=row.input,
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        last_event_id=f"{row.id}:{await chat.last_event_of(row)}",
        answer=row.output if finished else None,
        usage=row.usage if finished else None,
        error=error,
    )


_ERROR_DETAILS = {
    "cancelled": "the turn was cancelled",
    "rolled-back": "the turn was cancelled by a newer message, and its partial answer dropped",
    "worker-lost": "the worker running this turn stopped",
}


async def _submit(
    chat: ChatService, settings: AgentSettings, session: SessionClaims, data: ChatRequest, *, streaming: bool = True
) -> RunTicket:
    text, user_name = await _checked_text(settings, session, data)
    return await chat.submit(  # a turn in progress is a 409 here (by the strategy), before any stream starts
        owner_id=session.subject,
        session_id=session.session_id,
        text=text,
        user_name=user_name,
        streaming=streaming,
        strategy=data.multitask_strategy,
        on_disconnect=data.on_disconnect,
    )


def _run_headers(run_id: uuid.UUID) -> dict[str, str]:
    return {"X-Run-Id": str(run_id), "Content-Location": f"{RUNS_PATH}/{run_id}"}


async def _checked_text(settings: AgentSettings, session: SessionClaims, data: ChatRequest) -> tuple[str, str | None]:
    """The message to answer and, once the session is known to be the caller's, the user's name for the prompt."""
    limit = settings.message_max_chars
    for message in data.messages:  # the last one is answered; none may pass the limit the document states
        if len(message.content) > limit:
            raise InvalidFieldError(
                "messages", f"a message may have at most {limit} characters, this one has {len(message.content)}"
            )
    text = normalize_text(data.messages[-1].content)
    if not has_visible_text(text):
        raise InvalidFieldError("messages", "the message has nothing but white space and control characters")
    user_name = await owner_name_of_session(owner_id=session.subject, session_id=session.session_id)
    return text, user_name


async def _sse(
    chat: ChatService,
    run_id: uuid.UUID,
    source: str,
    events: AsyncGenerator[list[TurnEvent]],
    metrics: AppMetrics,
    *,
    started: RunTicket | None = None,
    rejoined_at: float | None = None,
    replayed_after: int | None = None,
) -> AsyncIterator[bytes]:
    """Events as SSE messages with ids, heartbeats as comment lines; the events that were waiting together in one
    write. Litestar's ServerSentEvent response would send every event on its own, through every middleware's send.

    ``rejoined_at``: when the rejoin was asked for, to measure the time to its first replayed event."""
    followers = metrics.chat.followers_open.labels(source)
    followers.inc()
    metrics.http.streams_open.inc()
    prefix = f"{run_id}:"
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
            yield b"".join(_KEEP_ALIVE if event.kind == "heartbeat" else _encoded(prefix, event) for event in batch)
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
                await chat.cancel_run(run_id, session_id=started.session_id)
                await chat.settled_if_cancelled(run_id)


_KEEP_ALIVE = ServerSentEventMessage(comment="keep-alive").encode()
# How long a stream whose client left waits for its cancelled turn to finish (keeping its partial answer).
_TURN_CLEANUP_SECONDS = 10.0


def _encoded(prefix: str, event: TurnEvent) -> bytes:
    return ServerSentEventMessage(id=f"{prefix}{event.seq}", event=event.kind, data=as_json(event.data)).encode()
