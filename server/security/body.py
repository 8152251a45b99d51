"""Request bodies that cannot hurt the server: JSON nested past what the decoder can follow is a 400.

msgspec follows nesting as deep as the interpreter's recursion limit allows, then raises RecursionError, which
reached the client as a 500. No body agentctl accepts nests more than a few levels.
"""

from __future__ import annotations

from typing import Any

from litestar import Request

from server.errors import AppError


class InvalidBodyError(AppError):
    status = 400
    code = "invalid-body"
    title = "Bad Request"


TOO_DEEP = "the JSON body is nested too deeply"


class BoundedRequest(Request):
    async def json(self) -> Any:
        try:
            return await super().json()
        except RecursionError:
            raise InvalidBodyError(TOO_DEEP) from None
