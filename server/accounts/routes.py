from __future__ import annotations

import uuid

from litestar import Controller, delete, get
from litestar.di import NamedDependency, Provide
from litestar.params import JSONBody

from server.accounts.schemas import AccountDeletion, AccountExport
from server.accounts.service import AccountService, export_account
from server.auth.dependencies import USER_TOKEN, provide_user_claims
from server.auth.schemas import UserResponse
from server.auth.service import AuthService
from server.auth.tokens import TokenClaims
from server.chat.schemas import ChatMessage
from server.chat.service import ChatService
from server.database.engine import Database
from server.errors import problem_responses
from server.users.service import get_user


class AccountController(Controller):
    """The signed-in account and its data as a whole (a user token: an API key can neither read, export nor delete
    the account)."""

    path = "/api/v1/auth/me"
    tags = ["auth"]
    security = USER_TOKEN
    dependencies = {"user": Provide(provide_user_claims)}

    @get("/", responses=problem_responses(401, 403, 429))
    async def me(self, user: NamedDependency[TokenClaims]) -> UserResponse:
        """The signed-in account."""
        account = await get_user(user.subject)
        return UserResponse(
            id=account.id, email=account.email, username=account.username, created_at=account.created_at
        )

    @get("/export", responses=problem_responses(401, 403, 429))
    async def export_my_data(
        self,
        user: NamedDependency[TokenClaims],
        chat: NamedDependency[ChatService],
        database: NamedDependency[Database],
    ) -> AccountExport:
        """Everything kept about the signed-in user as one JSON document: account, sessions and their messages, turn
        records, evaluation scores, memories, API keys' metadata, daily usage. No password hash, key or token."""

        async def conversation(session_id: uuid.UUID) -> list[ChatMessage]:
            messages, _approval = await chat.conversation(session_id)
            return [ChatMessage(**item) for item in messages]

        return await export_account(user_id=user.subject, database=database, conversation=conversation)

    @delete("/", status_code=204, responses=problem_responses(401, 403, 413, 422, 429))
    async def delete_my_account(
        self,
        user: NamedDependency[TokenClaims],
        data: JSONBody[AccountDeletion],
        auth: NamedDependency[AuthService],
        accounts: NamedDependency[AccountService],
    ) -> None:
        """Delete the account and everything of it, given its password again (401 otherwise, and nothing is
        deleted); every token and API key of it fails at once, on every worker and replica."""
        await auth.confirm_password(user_id=user.subject, password=data.password)
        await accounts.delete(user.subject)
