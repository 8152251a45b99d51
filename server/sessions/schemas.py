from __future__ import annotations

import datetime
import uuid
from typing import Annotated

import msgspec
from msgspec import Meta

from server.auth.schemas import Token
from server.schemas import Strict
from server.security.text import normalize_text

SessionName = Annotated[str, Meta(max_length=200, description="A label for the conversation.")]


class SessionNameUpdate(Strict):
    name: SessionName

    def __post_init__(self) -> None:
        self.name = normalize_text(self.name).strip()


class SessionWithToken(msgspec.Struct):
    session_id: uuid.UUID
    name: str
    token: Token


class Session(msgspec.Struct):
    session_id: uuid.UUID
    name: str
    created_at: datetime.datetime
    updated_at: datetime.datetime


class SessionPage(msgspec.Struct):
    items: list[Session]
    total: int
    limit: int
    offset: int
