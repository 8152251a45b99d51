from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable
from typing import Annotated, Literal

import anyio
from litestar import Controller, Response, delete, get, post
from litestar.di import NamedDependency, Provide
from litestar.openapi.spec import SecurityRequirement
from litestar.params import FromPath, HeaderParameter, JSONBody, QueryParameter
from litestar.response import ServerSentEventMessage, Stream

from agentctl.config import AgentSettings, MultitaskStrategy, OnDisconnect
from server.admission.middleware import ADMISSION_OPTION
from server.auth.dependencies import BEARER_SCHEME, NEW_SESSION_FOR_API_KEYS, SESSION_HEADER, provide_session_claims
from server.auth.tokens import SessionClaims
from server.chat.events import TurnEvent, as_json
from server.chat.runs import RunRow
from server.chat.schemas import (
    ApprovalRequest,
    CancelResponse,
    ChatMessage,
    ChatRequest,
    ChatResponse,
    EditRequest,
    MessagesResponse,
    PendingApprovalView,
    PendingToolCall,
    RegenerateRequest,
    Run,
    RunError,
    RunPage,
)
from server.chat.service import ChatService, RunTicket, TurnOptions
from server.chat.streams import SSE_HEADERS, SSE_MEDIA_TYPE, follow_as_stream, gather_turn
from server.errors import InvalidFieldError, NotFoundError, explain_pattern, problem_responses
from server.observability.metrics import AppMetrics
from server.ratelimit.service import RouteClass
from server.security.text import has_visible_text, normalize_text
from server.sessions.service import SessionOwner, get_owned_session, owner_of_session

SESSION_TOKEN: list[SecurityRequirement] = [{BEARER_SCHEME: []}]
RUNS_PATH = "/api/v1/chatbot/runs"
WAIT_MAX_SECONDS = 300  # a long poll longer than this is better as a stream
# An event's id as the events carry it (<run id>:<number>), or its number alone; empty: from the start.
_EVENT_ID = explain_pattern(
    r"^(([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}:)?[0-9]{1,9})?$",
    "expected an event id as the stream sent it (<run id>:<number>) or its number alone",
)


class ChatController(Controller):
    """The conversation of one session (session token from POST /api/v1/auth/session)."""

    path = "/api/v1/chatbot"
    tags = ["chat"]
    security = SESSION_TOKEN
    dependencies = {"session": Provide(provide_session_claims)}

    @post(
        "/chat",
        status_code=200,
        opt={ADMISSION_OPTION: "turn", "rate_limit": RouteClass.CHAT, NEW_SESSION_FOR_API_KEYS: True},
        responses=problem_responses(401, 403, 404, 409, 413, 422, 429, 502, 503, 504),
    )
    async def chat(
        self,
        session: NamedDependency[SessionClaims],
        chat: NamedDependency[ChatService],
        agent_settings: NamedDependency[AgentSettings],
        data: JSONBody[ChatRequest],
    ) -> Response[ChatResponse]:
        """Send the user's message and wait for the whole answer."""
        ticket = await _submit(chat, agent_settings, session, data, streaming=False)
        _source, events = await chat.open_follow(ticket.id, session_id=session.session_id)
        turn = await gather_turn(events)
        answered = ChatResponse(
            messages=[ChatMessage(role="assistant", content=turn.content)],
            usage=turn.usage,
            interrupt=turn.interrupt,
            approval=_approval_view(turn.approval_calls),
        )
        return Response(answered, headers=_run_headers(ticket.id, ticket.session_id))

    @post(
        "/chat/stream",
        status_code=200,
        media_type=SSE_MEDIA_TYPE,
        response_description="Server-sent events, each with an id (run id:sequence) and a JSON object as data",
        opt={ADMISSION_OPTION: "turn", "rate_limit": RouteClass.CHAT, NEW_SESSION_FOR_API_KEYS: True},
        responses=problem_responses(401, 403, 404, 409, 413, 422, 429, 503),
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
        token, tool, interrupt (ask_human), approval (tool calls awaiting the user: POST /approval), usage, error,
        done. Every event's data is JSON with at least content and done;
        every event's id is the run's id and its number, for GET /runs/{id}/stream after a dropped connection
        (the answer goes on without its client unless on_disconnect is cancel)."""
        ticket = await _submit(chat, agent_settings, session, data)
        source, events = await chat.open_follow(ticket.id, session_id=session.session_id)
        stream = follow_as_stream(chat, ticket.id, source, events, metrics, _sse_encoder(ticket.id), started=ticket)
        return Stream(
            stream, media_type=SSE_MEDIA_TYPE, headers={**SSE_HEADERS, **_run_headers(ticket.id, ticket.session_id)}
        )

    @get("/messages", responses=problem_responses(401, 403, 404, 429))
    async def messages(
        self, session: NamedDependency[SessionClaims], chat: NamedDependency[ChatService]
    ) -> MessagesResponse:
        """The session's conversation so far."""
        await get_owned_session(owner_id=session.subject, session_id=session.session_id)
        return await _conversation(chat, session.session_id)

    @post(
        "/messages/{message_id:str}/edit",
        status_code=202,
        opt={ADMISSION_OPTION: "turn", "rate_limit": RouteClass.CHAT},
        responses=problem_responses(401, 403, 404, 409, 413, 422, 429, 503),
    )
    async def edit_message(
        self,
        session: NamedDependency[SessionClaims],
        chat: NamedDependency[ChatService],
        agent_settings: NamedDependency[AgentSettings],
        message_id: FromPath[str],
        data: JSONBody[EditRequest],
    ) -> Response[Run]:
        """Ask again with the user message edited: the conversation continues from just before it, the earlier
        version kept as a branch (GET /messages shows siblings). A run, like POST /runs: follow its stream."""
        text = _checked_message(agent_settings, data.content, "content")
        owner = await owner_of_session(owner_id=session.subject, session_id=session.session_id)
        forked = await chat.fork_point_of(session.session_id, message_id, answer_ok=False)
        return await _forked_run(chat, session, owner, text, forked, data.multitask_strategy, data.on_disconnect)

    @post(
        "/messages/{message_id:str}/regenerate",
        status_code=202,
        opt={ADMISSION_OPTION: "turn", "rate_limit": RouteClass.CHAT},
        responses=problem_responses(401, 403, 404, 409, 413, 422, 429, 503),
    )
    async def regenerate_message(
        self,
        session: NamedDependency[SessionClaims],
        chat: NamedDependency[ChatService],
        message_id: FromPath[str],
        data: JSONBody[RegenerateRequest | None] = None,
    ) -> Response[Run]:
        """Another answer to a user message (its id, or the id of the answer to replace): the earlier answer is kept
        as a branch. A run, like POST /runs: follow its stream."""
        owner = await owner_of_session(owner_id=session.subject, session_id=session.session_id)
        forked = await chat.fork_point_of(session.session_id, message_id, answer_ok=True)
        options = data or RegenerateRequest()
        return await _forked_run(
            chat, session, owner, forked.input, forked, options.multitask_strategy, options.on_disconnect
        )

    @post("/messages/{message_id:str}/branch", status_code=200, responses=problem_responses(401, 403, 404, 409, 429))
    async def switch_branch(
        self, session: NamedDependency[SessionClaims], chat: NamedDependency[ChatService], message_id: FromPath[str]
    ) -> MessagesResponse:
        """Make the branch holding this user message (one of a message's siblings) the conversation again, at its
        latest turn; the next message continues it."""
        await get_owned_session(owner_id=session.subject, session_id=session.session_id)
        await chat.switch_branch(session.session_id, message_id)
        return await _conversation(chat, session.session_id)

    @post(
        "/approval",
        status_code=202,
        opt={ADMISSION_OPTION: "turn", "rate_limit": RouteClass.CHAT},
        responses=problem_responses(401, 403, 404, 409, 422, 429, 503),
    )
    async def answer_approval(
        self,
        session: NamedDependency[SessionClaims],
        chat: NamedDependency[ChatService],
        data: JSONBody[ApprovalRequest],
    ) -> Response[Run]:
        """Answer the tool calls awaiting approval (the approval event, or GET /messages' approval): approve, approve
        with edited arguments, or reject with a reason, each call or all at once. The turn goes on as a run: follow
        its stream. 409 when nothing awaits approval."""
        owner = await owner_of_session(owner_id=session.subject, session_id=session.session_id)
        ticket = await chat.answer_approval(
            owner_id=session.subject,
            session_id=session.session_id,
            user_name=owner.name,
            decision=data.decision,
            reason=data.reason,
            decisions=[
                {"id": item.id, "decision": item.decision, "arguments": item.arguments, "reason": item.reason}
                for item in data.decisions
            ],
            on_disconnect=data.on_disconnect,
            budget_overrides=owner.budget_overrides,
        )
        row = await chat.find(ticket.id, session_id=session.session_id)
        return Response(
            await _run_of(chat, row),
            status_code=202,
            headers={"Location": f"{RUNS_PATH}/{ticket.id}", SESSION_HEADER: str(session.session_id)},
        )

    @delete("/messages", status_code=204, responses=problem_responses(401, 403, 404, 429))
    async def clear_messages(self, session: NamedDependency[SessionClaims], chat: NamedDependency[ChatService]) -> None:
        """Forget the session's conversation, checkpoints included."""
        await get_owned_session(owner_id=session.subject, session_id=session.session_id)
        await chat.clear(session.session_id)

    @post("/cancel", status_code=200, responses=problem_responses(401, 403, 404, 429))
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
        opt={ADMISSION_OPTION: "turn", "rate_limit": RouteClass.CHAT, NEW_SESSION_FOR_API_KEYS: True},
        responses=problem_responses(401, 403, 404, 409, 413, 422, 429, 503),
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
        return Response(
            await _run_of(chat, row),
            status_code=202,
            headers={"Location": f"{RUNS_PATH}/{ticket.id}", SESSION_HEADER: str(ticket.session_id)},
        )

    @get("/", responses=problem_responses(401, 403, 422, 429))
    async def list_runs(
        self,
        session: NamedDependency[SessionClaims],
        chat: NamedDependency[ChatService],
        status: Annotated[
            list[Literal["queued", "running", "awaiting_human", "awaiting_approval", "done", "error", "cancelled"]]
            | None,
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

    @get("/{run_id:uuid}", responses=problem_responses(401, 403, 404, 429))
    async def get_run(
        self, session: NamedDependency[SessionClaims], chat: NamedDependency[ChatService], run_id: FromPath[uuid.UUID]
    ) -> Run:
        """A run: its status, its answer once done, its usage, its error."""
        return await _run_of(chat, await chat.find(run_id, session_id=session.session_id))

    @get("/{run_id:uuid}/wait", responses=problem_responses(401, 403, 404, 422, 429))
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
        media_type=SSE_MEDIA_TYPE,
        response_description="The run's server-sent events after Last-Event-ID, then live ones until it ends",
        responses=problem_responses(401, 403, 404, 410, 422, 429),
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
        stream = follow_as_stream(
            chat, run_id, source, events, metrics, _sse_encoder(run_id), rejoined_at=asked, replayed_after=seq
        )
        return Stream(stream, media_type=SSE_MEDIA_TYPE, headers={**SSE_HEADERS, **_run_headers(run_id)})

    @post("/{run_id:uuid}/cancel", status_code=200, responses=problem_responses(401, 403, 404, 429))
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
        resumed=row.resumed,
    )


_ERROR_DETAILS = {
    "cancelled": "the turn was cancelled",
    "rolled-back": "the turn was cancelled by a newer message, and its partial answer dropped",
    "worker-lost": "the worker running this turn stopped",
}


async def _submit(
    chat: ChatService, settings: AgentSettings, session: SessionClaims, data: ChatRequest, *, streaming: bool = True
) -> RunTicket:
    text, owner = await _checked_text(settings, session, data)
    return await chat.submit(  # a turn in progress is a 409 here (by the strategy), before any stream starts
        owner_id=session.subject,
        session_id=session.session_id,
        text=text,
        user_name=owner.name,
        streaming=streaming,
        strategy=data.multitask_strategy,
        on_disconnect=data.on_disconnect,
        budget_overrides=owner.budget_overrides,
    )


def _run_headers(run_id: uuid.UUID, session_id: uuid.UUID | None = None) -> dict[str, str]:
    headers = {"X-Run-Id": str(run_id), "Content-Location": f"{RUNS_PATH}/{run_id}"}
    if session_id is not None:  # an API key's new session, or the one it named
        headers[SESSION_HEADER] = str(session_id)
    return headers


async def _checked_text(settings: AgentSettings, session: SessionClaims, data: ChatRequest) -> tuple[str, SessionOwner]:
    """The message to answer and, once the session is known to be the caller's, who it is for (name, budget)."""
    for message in data.messages[:-1]:  # the last one is answered; none may pass the limit the document states
        _checked_message(settings, message.content, "messages", visible=False)
    text = _checked_message(settings, data.messages[-1].content, "messages")
    return text, await owner_of_session(owner_id=session.subject, session_id=session.session_id)


def _checked_message(settings: AgentSettings, content: str, field: str, *, visible: bool = True) -> str:
    """A user message within the configured length, without control characters, with something to read."""
    limit = settings.message_max_chars
    if len(content) > limit:
        raise InvalidFieldError(field, f"a message may have at most {limit} characters, this one has {len(content)}")
    text = normalize_text(content)
    if visible and not has_visible_text(text):
        raise InvalidFieldError(field, "the message has nothing but white space and control characters")
    return text


async def _conversation(chat: ChatService, session_id: uuid.UUID) -> MessagesResponse:
    messages, pending = await chat.conversation(session_id)
    return MessagesResponse(
        messages=[ChatMessage(**item) for item in messages],
        approval=_approval_view(pending.calls if pending is not None else None),
    )


def _approval_view(calls: list[dict[str, object]] | None) -> PendingApprovalView | None:
    if not calls:
        return None
    return PendingApprovalView(calls=[PendingToolCall(**call) for call in calls])  # type: ignore[arg-type]


async def _forked_run(
    chat: ChatService,
    session: SessionClaims,
    owner: SessionOwner,
    text: str,
    forked: RunRow,
    strategy: MultitaskStrategy | None,
    on_disconnect: OnDisconnect | None,
) -> Response[Run]:
    ticket = await chat.submit(
        owner_id=session.subject,
        session_id=session.session_id,
        text=text,
        user_name=owner.name,
        strategy=strategy,
        on_disconnect=on_disconnect,
        options=TurnOptions(fork_from=forked.start_checkpoint),
        budget_overrides=owner.budget_overrides,
    )
    row = await chat.find(ticket.id, session_id=session.session_id)
    return Response(
        await _run_of(chat, row),
        status_code=202,
        headers={"Location": f"{RUNS_PATH}/{ticket.id}", SESSION_HEADER: str(session.session_id)},
    )


def _sse_encoder(run_id: uuid.UUID) -> Callable[[list[TurnEvent]], bytes]:
    """Events as SSE messages with ids (<run id>:<number>), heartbeats as comment lines."""
    prefix = f"{run_id}:"

    def encode(batch: list[TurnEvent]) -> bytes:
        return b"".join(
            _KEEP_ALIVE
            if event.kind == "heartbeat"
            else ServerSentEventMessage(id=f"{prefix}{event.seq}", event=event.kind, data=as_json(event.data)).encode()
            for event in batch
        )

    return encode


_KEEP_ALIVE = ServerSentEventMessage(comment="keep-alive").encode()
