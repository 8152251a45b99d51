"""Security headers on every response, set in one place."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from litestar.datastructures import MutableScopeHeaders
from litestar.types import Message, Scope

from agentctl.config import Settings

_ALWAYS = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cross-origin-opener-policy": "same-origin",
}
# API responses are data, never documents to render: nothing may load, nothing may frame them.
_API_CSP = "default-src 'none'; frame-ancestors 'none'"
_HSTS = "max-age=63072000; includeSubDomains"


def security_headers_hook(
    settings: Settings, docs_path: str, page_policies: Mapping[str, str] | None = None
) -> Callable[[Message, Scope], Awaitable[None]]:
    """A before_send hook adding the headers; the interactive API docs page keeps a CSP that lets it run, and each
    page of ``page_policies`` (its exact path: its CSP) gets its own, which allows only what that page needs."""
    pages = dict(page_policies or {})
    extra = {"strict-transport-security": _HSTS} if settings.env == "production" else {}

    async def add_security_headers(message: Message, scope: Scope) -> None:
        if message["type"] != "http.response.start":
            return
        headers = MutableScopeHeaders.from_message(message)
        for name, value in {**_ALWAYS, **extra}.items():
            headers[name] = value
        is_docs_page = scope["path"].startswith(docs_path) and not scope["path"].endswith(".json")
        if not is_docs_page:
            headers["content-security-policy"] = pages.get(scope["path"], _API_CSP)

    return add_security_headers
