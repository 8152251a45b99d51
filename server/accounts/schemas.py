"""What the account API reads and writes: the deletion's confirmation and the export document."""

from __future__ import annotations

import datetime
import uuid
from typing import Any

import msgspec

from server.apikeys.schemas import ApiKeyInfo
from server.auth.schemas import Password
from server.chat.schemas import ChatMessage
from server.memory.schemas import Memory
from server.schemas import Strict


class AccountDeletion(Strict):
    password: Password


class ExportedAccount(msgspec.Struct):
    id: uuid.UUID
    email: str
    username: str | None
    created_at: datetime.datetime


class ExportedSession(msgspec.Struct):
    session_id: uuid.UUID
    name: str
    created_at: datetime.datetime
    updated_at: datetime.datetime
    messages: list[ChatMessage]  # as GET /api/v1/chatbot/messages shows them


class ExportedTurn(msgspec.Struct):
    id: uuid.UUID
    session_id: uuid.UUID | None  # None: a turn of a conversation that was not stored (/v1 without a session)
    surface: str
    input: str
    output: str
    status: str
    error_type: str | None
    model: str | None
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    cost_usd: float
    tool_calls: list[dict[str, Any]]
    created_at: datetime.datetime
    finished_at: datetime.datetime | None


class ExportedScore(msgspec.Struct):
    id: uuid.UUID
    turn_id: uuid.UUID
    metric: str
    prompt_version: str
    judge_model: str | None
    score: float | None
    quality: float | None
    reasoning: str
    error: str | None
    created_at: datetime.datetime


class DailyUsage(msgspec.Struct):
    day: str
    turns: int
    input_tokens: int
    output_tokens: int
    cost_usd: float


class AccountExport(msgspec.Struct):
    exported_at: datetime.datetime
    account: ExportedAccount
    sessions: list[ExportedSession]
    turns: list[ExportedTurn]
    scores: list[ExportedScore]
    memories: list[Memory]
    api_keys: list[ApiKeyInfo]
    usage: list[DailyUsage]
