"""Admission control's refusals, said before anything else is done for a request — its token checked, its rate
limit counted in Redis, its body read: a refused request must cost the worker next to nothing, or under overload the
refusals become the load (measured: 1,500 users retrying sign-ups kept both cores busy answering 503s)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, Protocol

from litestar import Litestar
from litestar.types import ASGIApp, Receive, Scope, Send

# Route handlers that start work admission control bounds say which: opt={"admission": "turn"} or "password".
ADMISSION_OPTION = "admission"
AdmittedWork = Literal["turn", "password"]


class Refusing(Protocol):
    def refuse_if_saturated(self) -> None: ...


class HashingRefusing(Protocol):
    def refuse_if_hashing_backlogged(self) -> None: ...


class AdmittingServices(Protocol):
    """What the middleware needs of the worker."""

    chat: Refusing
    auth: HashingRefusing


def admission_middleware(app: ASGIApp, *, services: Callable[[Litestar], AdmittingServices | None]) -> ASGIApp:
    """Litestar middleware (wired with DefineMiddleware, before the rate limiter)."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        work: AdmittedWork | None = scope["route_handler"].opt.get(ADMISSION_OPTION)
        if work is not None and (resources := services(scope["app"])) is not None:
            if work == "turn":
                resources.chat.refuse_if_saturated()
            else:
                resources.auth.refuse_if_hashing_backlogged()
        await app(scope, receive, send)

    return middleware
