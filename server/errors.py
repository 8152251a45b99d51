"""Domain errors and their one HTTP shape: RFC 9457 problem+json carrying the request id.

Services raise :class:`AppError` subclasses and know nothing of HTTP; this module is the one place
that turns them, Litestar's own HTTP errors and unexpected exceptions into responses.
"""

from __future__ import annotations

import re
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, ClassVar

import asyncpg
import psycopg
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi.datastructures import ResponseSpec
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR
from litestar.types import ExceptionHandlersMap
from loguru import logger

from server.outages import RateLimitedLog
from server.request_context import request_id_of

PROBLEM_MEDIA_TYPE = "application/problem+json"
_NAMED_FIELD = re.compile(r"(?:unknown|missing required) field `([^`]+)`")


class AppError(Exception):
    """A failure the caller can understand: an HTTP status, a stable code and a human detail."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal-error"
    title: ClassVar[str] = "Internal Server Error"

    def __init__(
        self, detail: str, *, extra: dict[str, Any] | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra or {}
        self.headers = headers or {}


class NotFoundError(AppError):
    status = 404
    code = "not-found"
    title = "Not Found"


class ConflictError(AppError):
    status = 409
    code = "conflict"
    title = "Conflict"


class InvalidFieldError(AppError):
    """A request field that is well-typed but unacceptable (an email that is not one, say)."""

    status = 422
    code = "validation-failed"
    title = "Unprocessable Content"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(
            f"invalid value for {field}: {message}", extra={"errors": [{"field": field, "message": message}]}
        )


class UnauthorizedError(AppError):
    """Missing, malformed, expired, revoked or wrong-type credentials. Says which, never whose."""

    status = 401
    code = "unauthorized"
    title = "Unauthorized"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": 'Bearer realm="agentctl"'})


class ForbiddenError(AppError):
    """Proven credentials that may not do this (an API key without the scope, or where only a user may act)."""

    status = 403
    code = "forbidden"
    title = "Forbidden"


class RateLimitedError(AppError):
    status = 429
    code = "rate-limited"
    title = "Too Many Requests"


class ServiceUnavailableError(AppError):
    status = 503
    code = "service-unavailable"
    title = "Service Unavailable"


class DatabaseUnavailableError(ServiceUnavailableError):
    """The database did not answer in time or refused the connection."""

    code = "database-unavailable"

    def __init__(self, detail: str = "the database is unavailable; try again shortly") -> None:
        super().__init__(detail, headers={"Retry-After": "2"})


# Raised by the drivers when the server is gone, restarting, refusing connections or too slow to answer.
_DATABASE_DOWN: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,  # shutting down, starting up, statement cancelled
    asyncpg.TooManyConnectionsError,
    psycopg.OperationalError,  # the checkpointer's and memory's pools: connection lost, pool timeout
)
_DRIVERS = ("asyncpg", "psycopg", "psycopg_pool", "piccolo")


def is_database_unavailable(error: BaseException) -> bool:
    """Whether ``error`` says the database cannot be reached now, as opposed to a bug or a bad request: a
    driver's connection error, or an OS error or timeout raised inside a driver (a refused or reset socket)."""
    if isinstance(error, (DatabaseUnavailableError, *_DATABASE_DOWN)):
        return True
    if isinstance(error, OSError | TimeoutError | asyncpg.InterfaceError):
        trace = error.__traceback__
        while trace is not None:
            if trace.tb_frame.f_globals.get("__name__", "").startswith(_DRIVERS):
                return True
            trace = trace.tb_next
    return False


@dataclass
class ProblemDetails:
    """RFC 9457 problem details, as every error response carries them."""

    type: str
    title: str
    status: int
    detail: str
    instance: str
    request_id: str


def problem_responses(*statuses: int) -> dict[int, ResponseSpec]:
    """OpenAPI entries documenting that a route can answer ``statuses`` with the problem shape. 400 is always one
    of them: any request can be malformed (a bad Host header, a body that is not JSON)."""
    return {
        status: ResponseSpec(data_container=ProblemDetails, media_type=PROBLEM_MEDIA_TYPE, description=_reason(status))
        for status in sorted({400, *statuses})
    }


# The app's state holds, under this key, the error shapes of path prefixes that speak another API's errors (the
# OpenAI-compatible /v1): {prefix: shape}. Registered by create_app; the foundation knows no capability.
ERROR_SHAPES_STATE_KEY = "agentctl.error_shapes"


@dataclass(frozen=True)
class ErrorFacts:
    """An error as every shape states it."""

    status: int
    code: str
    detail: str
    extra: dict[str, Any]


# An error shape: the facts -> (status, body).
ErrorShape = Callable[[ErrorFacts], tuple[int, dict[str, Any]]]


def problem_response(
    request: Request,
    *,
    status: int,
    code: str,
    title: str,
    detail: str,
    extra: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> Response[dict[str, Any]]:
    """The single error shape every 4xx/5xx response has (problem+json), or the shape its path prefix speaks."""
    shapes: dict[str, ErrorShape] = request.app.state.get(ERROR_SHAPES_STATE_KEY) or {}
    path = request.scope.get("path", "")
    for prefix, shape in shapes.items():
        if path.startswith(prefix):
            shaped_status, shaped = shape(ErrorFacts(status, code, detail, extra or {}))
            return Response(content=shaped, status_code=shaped_status, media_type="application/json", headers=headers)
    body = {
        "type": f"urn:agentctl:problem:{code}",
        "title": title,
        "status": status,
        "detail": detail,
        "instance": request.url.path,
        "request_id": request_id_of(request.scope),
        **(extra or {}),
    }
    return Response(content=body, status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


def handle_app_error(request: Request, error: AppError) -> Response[dict[str, Any]]:
    return problem_response(
        request,
        status=error.status,
        code=error.code,
        title=error.title,
        detail=error.detail,
        extra=error.extra,
        headers=error.headers,
    )


# msgspec's words for a constraint, where people need the rule instead.
_PLAIN_WORDS = {
    "Expected `str` matching regex '^user$'": "only 'user' messages are accepted: the other roles are the server's",
}


def explain_pattern(pattern: str, words: str) -> str:
    """Say ``words`` instead of msgspec's "Expected `str` matching regex ..." when a value misses ``pattern``."""
    _PLAIN_WORDS[f"Expected `str` matching regex '{pattern}'"] = words
    return pattern


def handle_validation_error(request: Request, error: ValidationException) -> Response[dict[str, Any]]:
    fields = [
        {
            "field": _field_of(item, request),
            "message": _PLAIN_WORDS.get(item.get("message", ""), item.get("message", "")),
        }
        for item in (error.extra if isinstance(error.extra, list) else [])
        if isinstance(item, dict)
    ]
    names = ", ".join(sorted({str(item["field"]) for item in fields})) or "the request"
    return problem_response(
        request,
        status=422,
        code="validation-failed",
        title="Unprocessable Content",
        detail=f"invalid value for {names}",
        extra={"errors": fields},
    )


def _field_of(item: dict[str, Any], request: Request) -> str:
    # Litestar names the whole body "data" when a field is unknown or missing; name the field instead.
    named = _NAMED_FIELD.search(item.get("message", ""))
    if named:
        return named.group(1)
    key = str(item.get("key") or item.get("source") or "body")
    # A header or query parameter by the name the client sent, not the handler's argument (Last-Event-ID, not
    # last_event_id).
    parameter = request.route_handler.parsed_fn_signature.parameters.get(key)
    definition = getattr(parameter, "kwarg_definition", None)
    return getattr(definition, "header", None) or getattr(definition, "query", None) or key


def handle_http_exception(request: Request, error: HTTPException) -> Response[dict[str, Any]]:
    status = error.status_code
    title = _reason(status)
    detail = error.detail if error.detail and error.detail != title else title
    if status >= 500:
        # Litestar's own 5xx details can name internals; say only what happened.
        logger.opt(exception=error).error("HTTP {} raised inside the framework", status)
        detail = title
    return problem_response(
        request, status=status, code=_slug(title), title=title, detail=detail, headers=error.headers
    )


_database_outage_log = RateLimitedLog()


def handle_unexpected_error(request: Request, error: Exception) -> Response[dict[str, Any]]:
    if is_database_unavailable(error):
        # Every request fails alike while the database is down: a 503 that says so, and one log line a minute.
        _database_outage_log.warning("database", "database unavailable: {}: {}", type(error).__name__, error)
        return handle_app_error(request, DatabaseUnavailableError())
    logger.opt(exception=error).error("unhandled error on {} {}", request.method, request.url.path)
    extra: dict[str, Any] = {}
    detail = "An unexpected error occurred; quote the request id when reporting it."
    if request.app.debug:
        extra["traceback"] = traceback.format_exception(error)
        detail = f"{type(error).__name__}: {error}"
    return problem_response(
        request,
        status=HTTP_500_INTERNAL_SERVER_ERROR,
        code="internal-error",
        title="Internal Server Error",
        detail=detail,
        extra=extra,
    )


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    AppError: handle_app_error,
    ValidationException: handle_validation_error,
    HTTPException: handle_http_exception,
    Exception: handle_unexpected_error,
}


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _slug(title: str) -> str:
    return "-".join(title.lower().replace("'", "").split())
