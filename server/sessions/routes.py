from __future__ import annotations

import uuid
from typing import Annotated

from litestar import Controller, delete, get, patch, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter

from server.apikeys.service import ApiKeyScope
from server.auth.dependencies import USER_TOKEN, user_or_api_key
from server.auth.schemas import Token
from server.auth.service import AuthService
from server.auth.tokens import TokenClaims
from server.chat.service import ChatService
from server.errors import problem_responses
from server.sessions import service
from server.sessions.schemas import Session, SessionNameUpdate, SessionPage, SessionWithToken
from server.sessions.tables import ChatSession

# Far beyond any user's sessions, and inside PostgreSQL's bigint: an offset past it was a 500.
MAX_OFFSET = 1_000_000_000


def _session(row: ChatSession) -> Session:
    return Session(session_id=row.id, name=row.name, created_at=row.created_at, updated_at=row.updated_at)


class SessionController(Controller):
    """Chat sessions of the signed-in user (user token, or an API key with the chat scope); each can mint
    session-scoped tokens."""

    path = "/api/v1/auth"
    tags = ["sessions"]
    security = USER_TOKEN
    dependencies = {"user": user_or_api_key(ApiKeyScope.CHAT)}

    @post("/session", status_code=201, responses=problem_responses(401, 403, 429))
    async def create_session(
        self, user: NamedDependency[TokenClaims], auth: NamedDependency[AuthService]
    ) -> SessionWithToken:
        """Start a chat session and return a token scoped to it."""
        session = await service.create_session(owner_id=user.subject)
        return SessionWithToken(
            session_id=session.id, name=session.name, token=Token.of(auth.issue_session_token(user, session.id))
        )

    @get("/sessions", responses=problem_responses(401, 403, 422, 429))
    async def list_sessions(
        self,
        user: NamedDependency[TokenClaims],
        limit: Annotated[int, QueryParameter(ge=1, le=100)] = 20,
        offset: Annotated[int, QueryParameter(ge=0, le=MAX_OFFSET)] = 0,
    ) -> SessionPage:
        """The user's sessions, most recently active first."""
        rows, total = await service.list_sessions(owner_id=user.subject, limit=limit, offset=offset)
        return SessionPage(items=[_session(row) for row in rows], total=total, limit=limit, offset=offset)

    @patch("/session/{session_id:uuid}/name", responses=problem_responses(401, 403, 404, 422, 429))
    async def rename_session(
        self, user: NamedDependency[TokenClaims], session_id: FromPath[uuid.UUID], data: JSONBody[SessionNameUpdate]
    ) -> Session:
        """Rename one of the user's sessions."""
        row = await service.rename_session(owner_id=user.subject, session_id=session_id, name=data.name)
        return _session(row)

    @delete("/session/{session_id:uuid}", status_code=204, responses=problem_responses(401, 403, 404, 429))
    async def delete_session(
        self,
        user: NamedDependency[TokenClaims],
        session_id: FromPath[uuid.UUID],
        auth: NamedDependency[AuthService],
        chat: NamedDependency[ChatService],
    ) -> None:
        """Delete one of the user's sessions, what belongs to it (turns, checkpoints), and every token issued for it."""
        await service.delete_session(owner_id=user.subject, session_id=session_id)
        await auth.revoke_session_tokens(session_id)
        await chat.clear(session_id)

    @post("/session/{session_id:uuid}/token", status_code=200, responses=problem_responses(401, 403, 404, 429))
    async def session_token(
        self, user: NamedDependency[TokenClaims], session_id: FromPath[uuid.UUID], auth: NamedDependency[AuthService]
    ) -> SessionWithToken:
        """A fresh token for one of the user's sessions."""
        session = await service.get_owned_session(owner_id=user.subject, session_id=session_id)
        return SessionWithToken(
            session_id=session.id, name=session.name, token=Token.of(auth.issue_session_token(user, session.id))
        )
