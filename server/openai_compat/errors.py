"""OpenAI's error shape for the /v1 routes: ``{"error": {"message", "type", "param", "code"}}``, which the official
SDKs turn into their typed exceptions (AuthenticationError, RateLimitError...). Headers (Retry-After) stay."""

from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from litestar.openapi.datastructures import ResponseSpec

from server.errors import ErrorFacts, NotFoundError

OPENAI_PREFIX = "/v1/"

# Our problem codes where OpenAI has a code of its own for the same thing.
_CODES = {
    "unauthorized": "invalid_api_key",
    "rate-limited": "rate_limit_exceeded",
    "context-too-long": "context_length_exceeded",
    "validation-failed": "invalid_value",
    "budget-exceeded": "insufficient_quota",
}


def _type_of(status: int, code: str) -> str:
    if code == "budget-exceeded":
        return "insufficient_quota"  # what OpenAI answers a 429 for spent quota with, rather than a rate limit
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "permission_error"
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def openai_error(facts: ErrorFacts) -> tuple[int, dict[str, Any]]:
    """An error in OpenAI's shape. An invalid body is a 400, as OpenAI answers it (our native API says 422)."""
    errors = facts.extra.get("errors")
    param = errors[0].get("field") if isinstance(errors, list) and errors and isinstance(errors[0], dict) else None
    param = facts.extra.get("param", param)
    status = 400 if facts.code == "validation-failed" else facts.status
    message = facts.detail
    if isinstance(errors, list) and errors and all(isinstance(error, dict) for error in errors):
        # One line with every field and its reason: OpenAI clients show the message, not the list.
        message = "; ".join(f"invalid value for {error.get('field')}: {error.get('message')}" for error in errors)
    body = {
        "error": {
            "message": message,
            "type": _type_of(status, facts.code),
            "param": param,
            "code": _CODES.get(facts.code, facts.code.replace("-", "_")),
        }
    }
    return status, body


@dataclass
class OpenAIErrorDetail:
    message: str
    type: str
    param: str | None
    code: str | None


@dataclass
class OpenAIErrorBody:
    """OpenAI's error shape."""

    error: OpenAIErrorDetail


def openai_error_responses(*statuses: int) -> dict[int, ResponseSpec]:
    """OpenAPI entries for the errors a /v1 route can answer, in OpenAI's shape (400 always: any body can be
    malformed; an invalid one is a 400 here, never a 422)."""
    return {
        status: ResponseSpec(
            data_container=OpenAIErrorBody, media_type="application/json", description=HTTPStatus(status).phrase
        )
        for status in sorted({400, *statuses} - {422})
    }


class ModelNotFoundError(NotFoundError):
    code = "model_not_found"

    def __init__(self, model: str, served: str) -> None:
        super().__init__(
            f"the model {model!r} does not exist here; this server's agent is {served!r} (GET /v1/models)",
            extra={"param": "model"},
        )


class ResponseNotFoundError(NotFoundError):
    code = "response_not_found"

    def __init__(self, response_id: str, *, param: str | None = None) -> None:
        super().__init__(f"no stored response with id {response_id!r}", extra={"param": param} if param else None)
