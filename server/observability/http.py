"""HTTP request metrics: counted by method, route template (never the raw path, which holds ids) and status."""

from __future__ import annotations

import time
from collections.abc import Callable

from litestar import Litestar
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from loguru import logger

from server.observability.metrics import HttpMetrics
from server.request_context import caller_of

UNMATCHED_ROUTE = "unmatched"
_PROBES = frozenset({"/health", "/health/ready", "/metrics"})


def http_metrics_middleware(app: ASGIApp, *, metrics: Callable[[Litestar], HttpMetrics | None]) -> ASGIApp:
    """Counts and logs every request ``app`` answers; ``metrics`` finds the worker's (none while it starts)."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        http = metrics(scope["app"])
        if scope["type"] != ScopeType.HTTP or http is None:
            await app(scope, receive, send)
            return
        method = scope["method"]
        status = 500  # what the client gets if the app fails before answering

        async def send_counting(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        http.in_flight.inc()
        started = time.perf_counter()
        try:
            await app(scope, receive, send_counting)
        except Exception as error:
            # Answered by the exception handlers outside: the status they will send.
            status = getattr(error, "status", None) or getattr(error, "status_code", None) or 500
            raise
        finally:
            elapsed = time.perf_counter() - started
            # Known once the router has matched the request (this runs around the whole app); none for a 404.
            route = scope.get("path_template") or UNMATCHED_ROUTE
            http.in_flight.dec()
            http.requests.labels(method, route, str(status)).inc()
            http.duration.labels(method, route).observe(elapsed)
            # The access log: inside the request's context (request id, and the caller once authenticated).
            # The path without its query string, which can hold user text (a memory search).
            level = "DEBUG" if route in _PROBES else "INFO"  # probes and scrapes come every few seconds
            logger.bind(**caller_of(scope)).log(
                level, "{} {} {} {:.1f} ms", method, scope["path"], status, elapsed * 1000
            )

    return middleware
