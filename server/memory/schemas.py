from __future__ import annotations

import msgspec

from server.memory.service import MemoryItem


class Memory(msgspec.Struct):
    id: str
    memory: str
    session_id: str | None
    created_at: str | None
    updated_at: str | None
    score: float | None = None

    @classmethod
    def of(cls, item: MemoryItem) -> Memory:
        return cls(
            id=item.id,
            memory=item.text,
            session_id=item.session_id,
            created_at=item.created_at,
            updated_at=item.updated_at,
            score=item.score,
        )


class MemoryList(msgspec.Struct):
    memories: list[Memory]


class ForgetAllResponse(msgspec.Struct):
    deleted: int
