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


class PendingToolCall(msgspec.Struct):
    """A tool call waiting for the user's decision."""

    id: str  # the call's id: what a decision names
    tool: str  # as the model sees it: <server>__<tool> for an MCP server's
    server: str | None  # the MCP server it runs on; None for a built-in tool
    arguments: dict[str, Any]
    description: str = ""


class PendingApprovalView(msgspec.Struct):
    """Tool calls of one model step waiting for the user: POST /approval answers them."""

    calls: list[PendingToolCall]


class ChatResponse(msgspec.Struct):
    messages: list[ChatMessage]
    usage: dict[str, Any]
    interrupt: dict[str, str] | None = None
    approval: PendingApprovalView | None = None


class MessagesResponse(msgspec.Struct):
    messages: list[ChatMessage]
    approval: PendingApprovalView | None = None  # tool calls awaiting the user's decision


_REASON = Meta(max_length=2000, description="Why, for a rejection: the model reads it.")


class ToolCallDecision(Strict):
    id: Annotated[str, Meta(min_length=1, max_length=200, description="The id of the call (from the approval).")]
    decision: Annotated[
        Literal["approve", "edit", "reject"],
        Meta(description="approve (run it), edit (run it with these arguments instead) or reject (do not run it)."),
    ]
    arguments: Annotated[
        dict[str, Any] | None, Meta(description="edit: the arguments to run the call with; the tool's schema applies.")
    ] = None
    reason: Annotated[str, _REASON] | None = None


class ApprovalRequest(Strict):
    """The user's decision on the tool calls awaiting approval: one per call in ``decisions``, ``decision`` for every
    call not named there (approve or reject them all at once)."""

    decision: (
        Annotated[Literal["approve", "reject"], Meta(description="For every call without a decision of its own.")]
        | None
    ) = None
    reason: Annotated[str, _REASON] | None = None
    decisions: Annotated[list[ToolCallDecision], Meta(max_length=50)] = msgspec.field(default_factory=list)
    on_disconnect: Literal["continue", "cancel"] | None = None


class CancelResponse(msgspec.Struct):
    cancelled: bool


class RunError(msgspec.Struct):
    type: str
    detail: str


class Run(msgspec.Struct):
    """One message being answered or answered: a turn with an id."""

    id: uuid.UUID
    session_id: uuid.UUID
    status: Literal["queued", "running", "awaiting_human", "awaiting_approval", "done", "error", "cancelled"]
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
    # It continues a paused turn (an answer to ask_human, or to an approval) rather than saying something new.
    resumed: bool = False


class RunPage(msgspec.Struct):
    items: list[Run]
    next_cursor: uuid.UUID | None = None  # ?cursor= for the next (older) page
