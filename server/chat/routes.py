from __future__ import annotations

import json
from collections.abc import AsyncIterator

import anyio
from litestar import Controller, delete, get, post
from litestar.di import NamedDependency, Provide
from litestar.openapi.spec import SecurityRequirement
from litestar.params import JSONBody
from litestar.response import ServerSentEventMessage, Stream
from prometheus_client import Gauge

from agentctl.config import AgentSettings
from server.auth.dependencies import BEARER_SCHEME, provide_session_claims
from server.auth.tokens import SessionClaims
from server.chat.schemas import CancelResponse, ChatMessage, ChatRequest, ChatResponse, MessagesResponse
from server.chat.service import ChatService, Turn, TurnEvent
from server.errors import AppError, InvalidFieldError, problem_responses
from server.observability.metrics import AppMetrics
from server.ratelimit.service import RouteClass
from server.security.text import has_visible_text, normalize_text
from server.sessions.service import get_owned_session, owner_name_of_session

SESSION_TOKEN: list[SecurityRequirement] = [{BEARER_SCHEME: []}]
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
        text, user_name = await _checked_text(agent_settings, session, data)
        answer, usage, interrupt = "", {}, None
        turn = await chat.start_turn(
            owner_id=session.subject,
            session_id=session.session_id,
            text=text,
            user_name=user_name,
            streaming=False,
        )
        async for event in turn.events():
            if event.kind == "token":
                answer += event.data["content"]
            elif event.kind == "interrupt":
                interrupt = {"question": event.data["question"]}
            elif event.kind == "usage":
                usage = event.data["usage"]
            elif event.kind == "error":
                if isinstance(event.cause, AppError):
                    raise event.cause  # its own status: 413 context too long, 503 no model, 504 deadline
                raise TurnFailedError(event.data["error"]["detail"], extra={"error_type": event.data["error"]["type"]})
        content = interrupt["question"] if interrupt and not answer else answer
        return ChatResponse(messages=[ChatMessage(role="assistant", content=content)], usage=usage, interrupt=interrupt)

    @post(
        "/chat/stream",
        status_code=200,
        media_type=_SSE_MEDIA_TYPE,
        response_description="Server-sent events, each with a JSON object as data",
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
        token, tool, interrupt, usage, error, done. Every event's data is JSON with at least content and done."""
        text, user_name = await _checked_text(agent_settings, session, data)
        turn = await chat.start_turn(  # a turn in progress is a 409 here, before the stream starts
            owner_id=session.subject,
            session_id=session.session_id,
            text=text,
            user_name=user_name,
        )
        stream = _sse(turn, agent_settings.stream_heartbeat_seconds, metrics.http.streams_open)
        return Stream(stream, media_type=_SSE_MEDIA_TYPE, headers=_SSE_HEADERS)

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


async def _sse(turn: Turn, heartbeat_seconds: float, streams_open: Gauge) -> AsyncIterator[bytes]:
    """Events as SSE messages, heartbeats as comment lines; the events that were waiting together in one write.

    Litestar's ServerSentEvent response would send every event on its own, through every middleware's send."""
    streams_open.inc()
    batches = turn.event_batches(heartbeat_seconds)
    try:
        async for batch in batches:
            yield b"".join(_KEEP_ALIVE if event.kind == "heartbeat" else _encoded(event) for event in batch)
    finally:
        # The client left (or the turn ended): closing the events cancels the turn, which keeps its partial answer.
        streams_open.dec()
        await batches.aclose()
        # Shielded from the server's cancellation of a request whose client left: the request ends once the turn
        # has recorded itself and released its session, so the next message finds the session free.
        with anyio.move_on_after(_TURN_CLEANUP_SECONDS, shield=True):
            await turn.settled()


_KEEP_ALIVE = ServerSentEventMessage(comment="keep-alive").encode()
# How long a stream whose client left waits for its turn to finish (it keeps its partial answer and records itself).
_TURN_CLEANUP_SECONDS = 10.0


def _encoded(event: TurnEvent) -> bytes:
    return ServerSentEventMessage(event=event.kind, data=json.dumps(event.data, ensure_ascii=False)).encode()
