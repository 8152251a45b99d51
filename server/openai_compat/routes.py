"""OpenAI-compatible API: /v1/models, /v1/chat/completions and /v1/responses, for any OpenAI client. The agent
answers (its prompt, tools, memory, fallbacks, limits, records); the client's API key (or user token) says for whom."""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from litestar import Controller, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, HeaderParameter, JSONBody
from litestar.response import Stream

from agentctl.config import AgentSettings
from server.admission.middleware import ADMISSION_OPTION
from server.apikeys.service import ApiKeyScope
from server.auth.dependencies import SESSION_HEADER, USER_TOKEN, user_or_api_key
from server.auth.tokens import TokenClaims
from server.budgets.service import overrides_of
from server.chat.runs import RunRow
from server.chat.service import ChatService, RunTicket, TurnOptions
from server.chat.streams import SSE_HEADERS, SSE_MEDIA_TYPE, follow_as_stream, gather_turn
from server.errors import InvalidFieldError
from server.observability.metrics import AppMetrics
from server.openai_compat.errors import ModelNotFoundError, ResponseNotFoundError, openai_error_responses
from server.openai_compat.schemas import ChatCompletionRequest, ChatMessageIn, ResponseInputItem, ResponseRequest
from server.openai_compat.shapes import (
    CompletionChunks,
    ResponseEvents,
    chat_completion,
    response_id,
    response_object,
    run_id_of_response,
)
from server.ratelimit.service import RouteClass
from server.security.text import has_visible_text, normalize_text
from server.sessions.service import create_session, get_owned_session, owner_of_session
from server.users.service import get_user

_RESPONSE_STATUS = {
    "done": "completed",
    "awaiting_human": "completed",
    "awaiting_approval": "incomplete",  # never on this API (its tools need no approval), but not "completed"
    "error": "failed",
    "cancelled": "cancelled",
    "running": "in_progress",
    "queued": "in_progress",
}
_SESSION_NAME_LENGTH = 80


class OpenAIController(Controller):
    """OpenAI's API, served by the agent (an API key with the chat scope, or a user token)."""

    path = "/v1"
    tags = ["openai-compatible"]
    security = USER_TOKEN
    dependencies = {"caller": user_or_api_key(ApiKeyScope.CHAT)}

    @get("/models", responses=openai_error_responses(401, 403, 429))
    async def list_models(
        self, caller: NamedDependency[TokenClaims], agent_settings: NamedDependency[AgentSettings]
    ) -> dict[str, Any]:
        """The one model this server answers as: its agent."""
        return {"object": "list", "data": [_model_card(agent_settings)]}

    @get("/models/{model_id:str}", responses=openai_error_responses(401, 403, 404, 429))
    async def get_model(
        self,
        caller: NamedDependency[TokenClaims],
        agent_settings: NamedDependency[AgentSettings],
        model_id: FromPath[str],
    ) -> dict[str, Any]:
        """The agent, by its name."""
        _check_model(model_id, agent_settings)
        return _model_card(agent_settings)

    @post(
        "/chat/completions",
        status_code=200,
        opt={ADMISSION_OPTION: "turn", "rate_limit": RouteClass.CHAT},
        responses=openai_error_responses(401, 403, 404, 409, 413, 422, 429, 502, 503, 504),
    )
    async def chat_completions(
        self,
        caller: NamedDependency[TokenClaims],
        chat: NamedDependency[ChatService],
        agent_settings: NamedDependency[AgentSettings],
        metrics: NamedDependency[AppMetrics],
        data: JSONBody[ChatCompletionRequest],
        session_header: Annotated[
            uuid.UUID | None,
            HeaderParameter(
                header=SESSION_HEADER, description="One of the user's sessions: its stored conversation continues."
            ),
        ] = None,
    ) -> Response[dict[str, Any]] | Stream:
        """A chat completion by the agent, whole or streamed as chunks. With X-Agentctl-Session the session's stored
        conversation continues and only the last user message is new; without it the request's messages are the
        conversation (not stored; the turn is recorded)."""
        _check_model(data.model, agent_settings)
        instructions, prior, text = _conversation(data.messages, "messages", agent_settings)
        options = TurnOptions(
            surface="chat.completions",
            instructions=instructions,
            prior=() if session_header is not None else tuple(prior),
            model_options=_model_options(data.max_completion_tokens or data.max_tokens, data.temperature),
        )
        ticket = await _submit(chat, caller, session_header, text, options, streaming=data.stream)
        created = int(time.time())
        source, events = await chat.open_follow(ticket.id, session_id=ticket.session_id)
        headers = _headers(ticket)
        if data.stream:
            encoder = CompletionChunks(
                run_id=ticket.id,
                session_id=ticket.session_id,
                model=data.model,
                created=created,
                include_usage=bool(data.stream_options and data.stream_options.include_usage),
            )
            body = follow_as_stream(chat, ticket.id, source, events, metrics, encoder, started=ticket)
            return Stream(body, media_type=SSE_MEDIA_TYPE, headers={**SSE_HEADERS, **headers})
        turn = await gather_turn(events)
        completion = chat_completion(
            run_id=ticket.id, session_id=ticket.session_id, model=data.model, created=created, turn=turn
        )
        return Response(completion, headers=headers)

    @post(
        "/responses",
        status_code=200,
        opt={ADMISSION_OPTION: "turn", "rate_limit": RouteClass.CHAT},
        responses=openai_error_responses(401, 403, 404, 409, 413, 422, 429, 502, 503, 504),
    )
    async def create_response(
        self,
        caller: NamedDependency[TokenClaims],
        chat: NamedDependency[ChatService],
        agent_settings: NamedDependency[AgentSettings],
        metrics: NamedDependency[AppMetrics],
        data: JSONBody[ResponseRequest],
    ) -> Response[dict[str, Any]] | Stream:
        """A response by the agent (OpenAI's Responses API). Stored (the default), it is a run of a conversation kept
        in checkpoints: previous_response_id continues from it, and from an older response, a new branch."""
        _check_model(data.model, agent_settings)
        items = [ChatMessageIn(role="user", content=data.input)] if isinstance(data.input, str) else _items(data.input)
        instructions, prior, text = _conversation(items, "input", agent_settings)
        instructions = "\n\n".join(part for part in (data.instructions, instructions) if part) or None
        previous = await _previous_response(chat, caller, data.previous_response_id)
        session_id: uuid.UUID | None = None
        fork_from: str | None = None
        if data.store:
            if previous is not None:
                session_id, fork_from = previous.session_id, previous.checkpoint_id
            else:
                session_id = (await create_session(owner_id=caller.subject, name=_session_name(text))).id
        elif previous is not None:
            # Not stored: run on the conversation as of that response, without writing to it.
            prior = [*await chat.conversation_at(previous.session_id, previous.checkpoint_id), *prior]
        options = TurnOptions(
            surface="responses",
            instructions=instructions,
            prior=tuple(prior),
            fork_from=fork_from,
            previous_run=previous.id if previous is not None else None,
            model_options=_model_options(data.max_output_tokens, data.temperature),
        )
        ticket = await _submit(chat, caller, session_id, text, options, streaming=data.stream, strategy="reject")
        source, events = await chat.open_follow(ticket.id, session_id=ticket.session_id)
        described: dict[str, Any] = {
            "run_id": ticket.id,
            "session_id": ticket.session_id,
            "created_at": int(time.time()),
            "model": data.model,
            "previous_response_id": data.previous_response_id,
            "instructions": data.instructions,
            "store": data.store,
            "max_output_tokens": data.max_output_tokens,
            "temperature": data.temperature,
        }
        headers = _headers(ticket)
        if data.stream:
            body = follow_as_stream(
                chat, ticket.id, source, events, metrics, ResponseEvents(**described), started=ticket
            )
            return Stream(body, media_type=SSE_MEDIA_TYPE, headers={**SSE_HEADERS, **headers})
        turn = await gather_turn(events)
        status = "completed"
        return Response(
            response_object(**described, status=status, text=turn.content, usage=turn.usage, turn=turn),
            headers=headers,
        )

    @get("/responses/{response_id:str}", responses=openai_error_responses(401, 403, 404, 429))
    async def get_response(
        self,
        caller: NamedDependency[TokenClaims],
        chat: NamedDependency[ChatService],
        agent_settings: NamedDependency[AgentSettings],
        response_id: FromPath[str],
    ) -> dict[str, Any]:
        """A stored response, as it stands (in progress, completed, failed or cancelled)."""
        row = await _stored_response(chat, caller, response_id)
        finished = not row.active
        error = None
        if row.status in ("error", "cancelled"):
            error = {"code": row.error_type or row.status, "message": "the turn did not complete"}
        return response_object(
            run_id=row.id,
            session_id=row.session_id,
            created_at=int(row.created_at.timestamp()),
            status=_RESPONSE_STATUS.get(row.status, "failed"),
            model=agent_settings.name,
            text=row.output,
            usage=row.usage if finished else None,
            previous_response_id=_response_id_or_none(row.previous_run),
            instructions=None,
            store=True,
            error=error,
        )


def _model_card(settings: AgentSettings) -> dict[str, Any]:
    return {"id": settings.name, "object": "model", "created": 0, "owned_by": "agentctl"}


def _check_model(model: str, settings: AgentSettings) -> None:
    if model != settings.name:
        raise ModelNotFoundError(model, settings.name)


def _items(items: list[ResponseInputItem]) -> list[ChatMessageIn]:
    return [ChatMessageIn(role=item.role, content=item.content) for item in items]


def _text_of(message: ChatMessageIn, where: str) -> str:
    content = message.content
    if content is None:
        return ""
    if isinstance(content, str):
        return normalize_text(content)
    return normalize_text("".join(part.text for part in content))


def _conversation(
    messages: list[ChatMessageIn], field: str, settings: AgentSettings
) -> tuple[str | None, list[BaseMessage], str]:
    """(the client's system and developer messages as the user's instructions, the conversation before the last
    message, the last message): the last one must be the user's."""
    instructions: list[str] = []
    prior: list[BaseMessage] = []
    limit = settings.message_max_chars
    for index, message in enumerate(messages):
        where = f"{field}[{index}]"
        text = _text_of(message, where)
        if message.role in ("system", "developer"):
            instructions.append(text)
        elif message.role == "user":
            if len(text) > limit:
                raise InvalidFieldError(
                    where, f"a message may have at most {limit} characters, this one has {len(text)}"
                )
            prior.append(HumanMessage(text))
        else:
            prior.append(AIMessage(text))
    if not prior or not isinstance(prior[-1], HumanMessage):
        raise InvalidFieldError(field, "the last message must be the user's")
    text = prior.pop().text
    if not has_visible_text(text):
        raise InvalidFieldError(field, "the user's message has nothing but white space and control characters")
    return "\n\n".join(part for part in instructions if part.strip()) or None, prior, text


def _model_options(max_tokens: int | None, temperature: float | None) -> dict[str, Any]:
    return {
        key: value for key, value in (("max_tokens", max_tokens), ("temperature", temperature)) if value is not None
    }


def _session_name(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line[:_SESSION_NAME_LENGTH]


async def _submit(
    chat: ChatService,
    user: TokenClaims,
    session_id: uuid.UUID | None,
    text: str,
    options: TurnOptions,
    *,
    streaming: bool,
    strategy: str | None = None,
) -> RunTicket:
    if session_id is not None:
        owner = await owner_of_session(owner_id=user.subject, session_id=session_id)
        user_name, overrides = owner.name, owner.budget_overrides
    else:
        account = await get_user(user.subject)
        user_name, overrides = account.username, overrides_of(account)
    return await chat.submit(
        owner_id=user.subject,
        session_id=session_id,
        text=text,
        user_name=user_name,
        budget_overrides=overrides,
        streaming=streaming,
        strategy=strategy,  # type: ignore[arg-type]
        options=options,
    )


def _headers(ticket: RunTicket) -> dict[str, str]:
    headers = {"X-Run-Id": str(ticket.id)}
    if ticket.session_id is not None:
        headers[SESSION_HEADER] = str(ticket.session_id)
    return headers


async def _stored_response(chat: ChatService, user: TokenClaims, value: str, *, param: str | None = None) -> RunRow:
    run_id = run_id_of_response(value)
    row = await chat.find_owned(run_id, owner_id=user.subject) if run_id is not None else None
    if row is None or row.surface != "responses" or row.session_id is None:
        raise ResponseNotFoundError(value, param=param)
    return row


async def _previous_response(chat: ChatService, user: TokenClaims, value: str | None) -> RunRow | None:
    if value is None:
        return None
    row = await _stored_response(chat, user, value, param="previous_response_id")
    if row.active:
        raise InvalidFieldError("previous_response_id", "that response is still in progress")
    await get_owned_session(owner_id=user.subject, session_id=row.session_id)
    if row.checkpoint_id is None or not await chat.checkpoint_kept(row.session_id, row.checkpoint_id):
        # Its conversation was cleared, or retention pruned that point of it: nothing to continue from.
        raise InvalidFieldError("previous_response_id", "that response's conversation is no longer kept")
    return row


def _response_id_or_none(run_id: uuid.UUID | None) -> str | None:
    return response_id(run_id) if run_id is not None else None
