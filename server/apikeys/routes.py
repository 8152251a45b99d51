from __future__ import annotations

import uuid

from litestar import Controller, delete, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, JSONBody

from server.apikeys import service
from server.apikeys.schemas import ApiKeyCreate, ApiKeyCreated, ApiKeyInfo, ApiKeyList
from server.apikeys.service import ApiKeyScope
from server.auth.dependencies import USER_TOKEN, provide_user_claims
from server.auth.service import AuthService
from server.auth.tokens import TokenClaims
from server.errors import problem_responses


class ApiKeyController(Controller):
    """The signed-in user's API keys (a user token: a key cannot manage keys)."""

    path = "/api/v1/auth/api-keys"
    tags = ["api keys"]
    security = USER_TOKEN
    dependencies = {"user": Provide(provide_user_claims)}

    @post("/", status_code=201, responses=problem_responses(401, 403, 413, 422, 429))
    async def create_api_key(self, user: NamedDependency[TokenClaims], data: JSONBody[ApiKeyCreate]) -> ApiKeyCreated:
        """Create a key that acts for the user within its scopes; the key is in this answer only."""
        issued = await service.create_api_key(
            owner_id=user.subject,
            name=data.name,
            scopes=[ApiKeyScope(scope) for scope in data.scopes],
            expires_at=data.expires_at(),
        )
        info = ApiKeyInfo.of(issued.row)
        return ApiKeyCreated(**{field: getattr(info, field) for field in info.__struct_fields__}, key=issued.key)

    @get("/", responses=problem_responses(401, 403, 429))
    async def list_api_keys(self, user: NamedDependency[TokenClaims]) -> ApiKeyList:
        """The user's keys by prefix, newest first, with when each was last used (to the minute)."""
        return ApiKeyList(items=[ApiKeyInfo.of(row) for row in await service.list_api_keys(owner_id=user.subject)])

    @delete("/{key_id:uuid}", status_code=204, responses=problem_responses(401, 403, 404, 429))
    async def delete_api_key(
        self, user: NamedDependency[TokenClaims], key_id: FromPath[uuid.UUID], auth: NamedDependency[AuthService]
    ) -> None:
        """Revoke a key, and every session token it minted, on every worker and replica at once."""
        await service.delete_api_key(owner_id=user.subject, key_id=key_id)
        await auth.revoke_api_key_tokens(key_id)
