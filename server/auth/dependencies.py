"""Litestar dependencies of authentication: the verified claims of the caller's token."""

from __future__ import annotations

from litestar import Request
from litestar.openapi.spec import SecurityRequirement

from server.auth.service import AuthService
from server.auth.tokens import SessionClaims, TokenClaims, TokenType
from server.request_context import bind_caller

BEARER_SCHEME = "BearerToken"
USER_TOKEN: list[SecurityRequirement] = [{BEARER_SCHEME: []}]


async def provide_user_claims(request: Request, auth: AuthService) -> TokenClaims:
    """The caller, proven by a user (access) token."""
    claims = await auth.authenticate(request.scope, TokenType.ACCESS)
    bind_caller(request.scope, claims.subject, None)
    return claims


async def provide_session_claims(request: Request, auth: AuthService) -> SessionClaims:
    """The caller and one of their sessions, proven by a session token."""
    claims = SessionClaims.of(await auth.authenticate(request.scope, TokenType.SESSION))
    bind_caller(request.scope, claims.subject, claims.session_id)
    return claims
