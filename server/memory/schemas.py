from __future__ import annotations

import msgspec


class Memory(msgspec.Struct):
    id: str
    memory: str
    session_id: str | None
    created_at: str | None
    updated_at: str | None
    score: float | None = None


class MemoryList(msgspec.Struct):
    memories: list[Memory]


class ForgetAllResponse(msgspec.Struct):
    deleted: int
