"""Request ids: taken from a well-formed incoming X-Request-ID or made fresh, kept on the ASGI scope.

Stored on the scope (not only in a context variable) because errors raised before routing — an unknown
path, say — never pass through route middleware, yet their problem body and headers must carry the id.
"""

from __future__ import annotations

import re
import uuid
from contextvars import ContextVar

from litestar.datastructures import MutableScopeHeaders
from litestar.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID_HEADER = "x-request-id"
_ACCEPTABLE_INCOMING_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_SCOPE_KEY = "agentctl.request_id"

current_request_id: ContextVar[str | None] = ContextVar("current_request_id", default=None)
# Who the request acts for, once its token is verified; log lines of the request (and of a turn it starts,
# which copies the context) carry them.
current_user_id: ContextVar[str | None] = ContextVar("current_user_id", default=None)
current_session_id: ContextVar[str | None] = ContextVar("current_session_id", default=None)


_CALLER_KEY = "agentctl.caller"


def bind_caller(scope: Scope, user_id: object, session_id: object | None) -> None:
    """Once the request's token is verified: its log lines name the caller. Kept on the scope too, for the
    access log written outside the handler's context."""
    caller = (str(user_id), str(session_id) if session_id is not None else None)
    current_user_id.set(caller[0])
    current_session_id.set(caller[1])
    scope.setdefault("state", {})[_CALLER_KEY] = caller


def caller_of(scope: Scope) -> dict[str, str]:
    """user_id and session_id of the request's verified token, as far as known (for binding to a log line)."""
    user_id, session_id = scope.get("state", {}).get(_CALLER_KEY, (None, None))
    return {key: value for key, value in (("user_id", user_id), ("session_id", session_id)) if value is not None}


def request_id_of(scope: Scope) -> str:
    """The scope's request id, created on first use."""
    state = scope.setdefault("state", {})
    request_id = state.get(_SCOPE_KEY)
    if request_id is None:
        incoming = _incoming_header(scope)
        request_id = incoming if incoming and _ACCEPTABLE_INCOMING_ID.match(incoming) else uuid.uuid4().hex
        state[_SCOPE_KEY] = request_id
    return request_id


def _incoming_header(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == REQUEST_ID_HEADER.encode():
            return value.decode("latin-1")
    return None


async def add_request_id_header(message: Message, scope: Scope) -> None:
    """before_send hook: every HTTP response, error or not, names its request id."""
    if message["type"] == "http.response.start":
        MutableScopeHeaders.from_message(message)[REQUEST_ID_HEADER] = request_id_of(scope)


def request_context_middleware(app: ASGIApp) -> ASGIApp:
    """Binds the request id to the context so every log line of the request carries it."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        tokens = (
            current_request_id.set(request_id_of(scope)),
            current_user_id.set(None),
            current_session_id.set(None),
        )
        try:
            await app(scope, receive, send)
        finally:
            for variable, token in zip((current_request_id, current_user_id, current_session_id), tokens, strict=True):
                variable.reset(token)

    return middleware
