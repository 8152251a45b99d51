"""Litestar dependencies: the services of this worker, and the verified claims of the caller's token."""

from __future__ import annotations

from litestar import Request
from litestar.datastructures import State
from litestar.openapi.spec import SecurityRequirement

from server.auth.service import AuthService
from server.auth.tokens import TokenClaims, TokenType
from server.observability.request_id import bind_caller

BEARER_SCHEME = "BearerToken"
USER_TOKEN: list[SecurityRequirement] = [{BEARER_SCHEME: []}]


def provide_auth_service(state: State) -> AuthService:
    return state.resources.auth


async def provide_user_claims(request: Request) -> TokenClaims:
    """The caller, proven by a user (access) token."""
    return await _claims(request, TokenType.ACCESS)


async def provide_session_claims(request: Request) -> TokenClaims:
    """The caller and one of their sessions, proven by a session token."""
    return await _claims(request, TokenType.SESSION)


async def _claims(request: Request, expected: TokenType) -> TokenClaims:
    claims = await request.app.state.resources.auth.authenticate(request.scope, expected)
    bind_caller(request.scope, claims.subject, claims.session_id)
    return claims
