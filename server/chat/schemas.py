from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from server.schemas import Strict


class ClientMessage(Strict):
    # Clients speak only as the user: system, assistant and tool messages are the server's to write. Declared as a
    # string that must be "user" (not a Literal), so that the refusal says why in words.
    role: Annotated[str, Meta(pattern="^user$", description='Always "user": other roles are the server\'s to write.')]
    # Stored as sent minus control characters (server.chat.routes), after its length is checked as sent.
    content: Annotated[str, Meta(min_length=1, max_length=1_000_000)]


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
