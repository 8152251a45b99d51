from __future__ import annotations

import uuid
from typing import Annotated

from litestar import Controller, delete, get
from litestar.di import NamedDependency
from litestar.params import FromPath, QueryParameter

from server.apikeys.service import ApiKeyScope
from server.auth.dependencies import USER_TOKEN, user_or_api_key
from server.auth.tokens import TokenClaims
from server.errors import problem_responses
from server.memory.schemas import ForgetAllResponse, Memory, MemoryList
from server.memory.service import MemoryService
from server.security.text import normalize_text


class MemoryController(Controller):
    """What the agent remembers about the signed-in user (user token, or an API key with the memories scope), across
    all their sessions."""

    path = "/api/v1/memories"
    tags = ["memories"]
    security = USER_TOKEN
    dependencies = {"user": user_or_api_key(ApiKeyScope.MEMORIES)}

    @get("/", responses=problem_responses(401, 403, 422, 429, 503))
    async def list_memories(
        self,
        user: NamedDependency[TokenClaims],
        memories: NamedDependency[MemoryService],
        # "query" is a name Litestar keeps for the whole query string: the parameter is renamed here.
        search_text: Annotated[
            str, QueryParameter(name="query", max_length=2000, description="Search instead of listing.")
        ] = "",
        limit: Annotated[int, QueryParameter(ge=1, le=100)] = 20,
    ) -> MemoryList:
        """The user's memories, newest first; with ``query``, the most relevant first, each with its score."""
        query = normalize_text(search_text).strip()
        if query:
            items = await memories.search(user.subject, query, limit=limit)
        else:
            items = await memories.newest(user.subject, limit=limit)
        return MemoryList(memories=[Memory.of(item) for item in items])

    @delete("/{memory_id:uuid}", status_code=204, responses=problem_responses(401, 403, 404, 429, 503))
    async def delete_memory(
        self,
        user: NamedDependency[TokenClaims],
        memories: NamedDependency[MemoryService],
        memory_id: FromPath[uuid.UUID],
    ) -> None:
        """Forget one memory."""
        await memories.delete(user.subject, memory_id)

    @delete("/", status_code=200, responses=problem_responses(401, 403, 429, 503))
    async def forget_everything(
        self, user: NamedDependency[TokenClaims], memories: NamedDependency[MemoryService]
    ) -> ForgetAllResponse:
        """Forget everything the agent remembers about the user."""
        return ForgetAllResponse(deleted=await memories.forget_all(user.subject))
