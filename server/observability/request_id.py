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


def request_id_of(scope: Scope) -> str:
    """The scope's request id, created on first use."""
    state = scope.setdefault("state", {})  # type: ignore[typeddict-item]
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
        token = current_request_id.set(request_id_of(scope))
        try:
            await app(scope, receive, send)
        finally:
            current_request_id.reset(token)

    return middleware
