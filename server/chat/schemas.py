from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from server.auth.schemas import Strict
from server.errors import InvalidFieldError
from server.security.text import normalize_text


class ClientMessage(Strict):
    # Clients speak only as the user: system, assistant and tool messages are the server's to write.
    role: str
    content: Annotated[str, Meta(min_length=1, max_length=1_000_000)]

    def __post_init__(self) -> None:
        if self.role != "user":
            raise InvalidFieldError("role", f"only 'user' messages are accepted, not {self.role!r}")
        self.content = normalize_text(self.content)


class ChatRequest(Strict):
    messages: Annotated[list[ClientMessage], Meta(min_length=1, max_length=50)]


class ChatMessage(msgspec.Struct):
    role: Literal["assistant", "user", "tool", "system"]
    content: str
    id: str | None = None
    status: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    name: str | None = None


class ChatResponse(msgspec.Struct):
    messages: list[ChatMessage]
    usage: dict[str, Any]
    interrupt: dict[str, str] | None = None


class MessagesResponse(msgspec.Struct):
    messages: list[ChatMessage]


class CancelResponse(msgspec.Struct):
    cancelled: bool
