"""Applies each route's rate-limit class before the handler runs and adds RateLimit-* headers after."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from litestar import Litestar
from litestar.datastructures import MutableScopeHeaders
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from server.ratelimit.service import RateLimiter, RouteClass

# Route handlers name their class with opt={"rate_limit": ...}; None exempts a route (health probes).
RATE_LIMIT_OPTION = "rate_limit"
_BY_CLIENT_IP = {RouteClass.REGISTER, RouteClass.LOGIN}


class Subjects(Protocol):
    async def bearer_subject(self, scope: Scope) -> str | None:
        """The user a request's token or API key acts for (for keying its limits)."""
        ...


class LimitedServices(Protocol):
    """What the middleware needs of the worker."""

    limiter: RateLimiter
    auth: Subjects

    def client_ip(self, scope: Scope) -> str: ...


def rate_limit_middleware(app: ASGIApp, *, services: Callable[[Litestar], LimitedServices | None]) -> ASGIApp:
    """Litestar middleware (wired with DefineMiddleware, which hands it ``services``: how to find the limiter)."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        resources = services(scope["app"])
        route_class_name = scope["route_handler"].opt.get(RATE_LIMIT_OPTION, RouteClass.DEFAULT)
        if scope["type"] != "http" or route_class_name is None or resources is None or not resources.limiter.enabled:
            await app(scope, receive, send)
            return
        route_class = RouteClass(route_class_name)
        ip = resources.client_ip(scope)
        user_id = None if route_class in _BY_CLIENT_IP else await resources.auth.bearer_subject(scope)
        decision = await resources.limiter.hit(route_class, f"user:{user_id}" if user_id else f"ip:{ip}")
        decision.raise_if_refused("requests")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableScopeHeaders.from_message(message)
                for name, value in decision.headers().items():
                    headers.setdefault(name, value)  # a stricter inner limit (per email) keeps its own numbers
            await send(message)

        await app(scope, receive, send_with_headers)

    return middleware
