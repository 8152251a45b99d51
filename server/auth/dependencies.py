"""Litestar dependencies of authentication: the verified caller of a request, by user token, session token or API
key (where a key may act, and within its scopes)."""

from __future__ import annotations

import uuid

from litestar import Request
from litestar.di import Provide
from litestar.openapi.spec import SecurityRequirement

from server.apikeys.service import ApiKeyScope
from server.auth.service import AuthService
from server.auth.tokens import SessionClaims, TokenClaims, TokenType
from server.errors import InvalidFieldError
from server.request_context import bind_caller
from server.sessions.service import create_session, get_owned_session

BEARER_SCHEME = "BearerToken"
USER_TOKEN: list[SecurityRequirement] = [{BEARER_SCHEME: []}]
# The session an API key acts in, on routes that session tokens otherwise name.
SESSION_HEADER = "X-Agentctl-Session"
# A route option: an API key without SESSION_HEADER starts a new session there (sending a message), instead of 422.
NEW_SESSION_FOR_API_KEYS = "new_session_for_api_keys"


async def provide_user_claims(request: Request, auth: AuthService) -> TokenClaims:
    """The caller, proven by a user (access) token; an API key is refused (account and key management)."""
    claims = await auth.authenticate(request.scope, TokenType.ACCESS)
    bind_caller(request.scope, claims.subject, None)
    return claims


def user_or_api_key(scope: ApiKeyScope) -> Provide:
    """The caller, proven by a user token, or by an API key that has ``scope``."""

    async def provide(request: Request, auth: AuthService) -> TokenClaims:
        claims = await auth.authenticate(request.scope, TokenType.ACCESS, api_key_scope=scope)
        bind_caller(request.scope, claims.subject, None)
        return claims

    return Provide(provide)


async def provide_session_claims(request: Request, auth: AuthService) -> SessionClaims:
    """The caller and one of their sessions: proven by a session token, or an API key with the chat scope naming one
    of its user's sessions in X-Agentctl-Session (or starting one, where the route sends a message)."""
    claims = await auth.authenticate(request.scope, TokenType.SESSION, api_key_scope=ApiKeyScope.CHAT)
    session = SessionClaims.of(claims) if claims.api_key_scopes is None else await _session_of_api_key(request, claims)
    bind_caller(request.scope, session.subject, session.session_id)
    return session


async def _session_of_api_key(request: Request, claims: TokenClaims) -> SessionClaims:
    named = request.headers.get(SESSION_HEADER)
    if named is None:
        if not request.route_handler.opt.get(NEW_SESSION_FOR_API_KEYS):
            raise InvalidFieldError(SESSION_HEADER, "an API key names the session it acts in with this header")
        created = await create_session(owner_id=claims.subject)
        return SessionClaims(subject=claims.subject, session_id=created.id, token=claims, created=True)
    session_id = parse_session_id(named)
    await get_owned_session(owner_id=claims.subject, session_id=session_id)
    return SessionClaims(subject=claims.subject, session_id=session_id, token=claims)


def parse_session_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value.strip())
    except ValueError:
        raise InvalidFieldError(SESSION_HEADER, "expected a session id (a UUID)") from None
