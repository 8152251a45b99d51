from __future__ import annotations

import uuid
from datetime import datetime
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
    multitask_strategy: (
        Annotated[
            Literal["reject", "enqueue", "interrupt", "rollback"],
            Meta(
                description="If the session is answering another message: reject (409), enqueue (answer this one "
                "after it), interrupt (stop it, keeping its partial answer) or rollback (stop it, dropping its "
                "partial answer). Default: the server's AGENTCTL_CHAT__MULTITASK_STRATEGY."
            ),
        ]
        | None
    ) = None
    on_disconnect: (
        Annotated[
            Literal["continue", "cancel"],
            Meta(
                description="If the client leaves before the answer ends: continue (the answer lands in the "
                "history and can be rejoined) or cancel. Default: the server's AGENTCTL_CHAT__ON_DISCONNECT."
            ),
        ]
        | None
    ) = None


_STRATEGY_FIELD = Meta(
    description="If the session is answering another message: reject (409), enqueue, interrupt or rollback, as for "
    "POST /chat. Default: the server's AGENTCTL_CHAT__MULTITASK_STRATEGY."
)


class EditRequest(Strict):
    """A user message's new text: the conversation continues from just before it, the old version kept as a branch."""

    content: Annotated[str, Meta(min_length=1, max_length=1_000_000)]
    multitask_strategy: Annotated[Literal["reject", "enqueue", "interrupt", "rollback"], _STRATEGY_FIELD] | None = None
    on_disconnect: Literal["continue", "cancel"] | None = None


class RegenerateRequest(Strict):
    multitask_strategy: Annotated[Literal["reject", "enqueue", "interrupt", "rollback"], _STRATEGY_FIELD] | None = None
    on_disconnect: Literal["continue", "cancel"] | None = None


class ChatMessage(msgspec.Struct):
    role: Literal["assistant", "user", "tool", "system"]
    content: str
    id: str | None = None
    status: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    name: str | None = None
    # A user message with siblings (edits, regenerations): {"index": 1-based, "count", "siblings": [ids]}
    branch: dict[str, Any] | None = None


class ChatResponse(msgspec.Struct):
    messages: list[ChatMessage]
    usage: dict[str, Any]
    interrupt: dict[str, str] | None = None


class MessagesResponse(msgspec.Struct):
    messages: list[ChatMessage]


class CancelResponse(msgspec.Struct):
    cancelled: bool


class RunError(msgspec.Struct):
    type: str
    detail: str


class Run(msgspec.Struct):
    """One message being answered or answered: a turn with an id."""

    id: uuid.UUID
    session_id: uuid.UUID
    status: Literal["queued", "running", "awaiting_human", "done", "error", "cancelled"]
    strategy: str
    on_disconnect: str
    input: str
    created_at: datetime
    # The id of its last event so far: GET /runs/{id}/stream with it as Last-Event-ID sends what comes next.
    last_event_id: str
    started_at: datetime | None = None
    finished_at: datetime | None = None
    answer: str | None = None
    usage: dict[str, Any] | None = None
    error: RunError | None = None


class RunPage(msgspec.Struct):
    items: list[Run]
    next_cursor: uuid.UUID | None = None  # ?cursor= for the next (older) page
