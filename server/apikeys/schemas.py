"""What the API-keys API reads and writes."""

from __future__ import annotations

import datetime
import json
import uuid
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from server.apikeys.tables import ApiKey
from server.errors import InvalidFieldError, explain_pattern
from server.schemas import Strict
from server.security.text import VISIBLE_CHARACTER, has_visible_text, normalize_text

ScopeName = Literal["chat", "memories"]


class ApiKeyCreate(Strict):
    name: Annotated[
        str,
        Meta(
            min_length=1,
            max_length=100,
            pattern=explain_pattern(VISIBLE_CHARACTER, "expected something visible, not only white space"),
            description="A label, to recognise the key by (something visible, not only white space).",
        ),
    ]
    scopes: Annotated[
        list[ScopeName],
        Meta(
            min_length=1,
            max_length=2,
            description="What the key may do: chat (in any of the user's sessions, and /v1) and memories.",
        ),
    ] = msgspec.field(default_factory=lambda: ["chat"])
    expires_in_days: (
        Annotated[
            float,
            Meta(
                gt=0,
                le=3650,
                description="The key's lifetime in days (0.5 is twelve hours); it never expires if absent.",
            ),
        ]
        | None
    ) = None

    def __post_init__(self) -> None:
        self.name = normalize_text(self.name).strip()
        if not has_visible_text(self.name):
            raise InvalidFieldError("name", "the name has nothing but white space and control characters")

    def expires_at(self) -> datetime.datetime | None:
        """When a key created now expires."""
        if self.expires_in_days is None:
            return None
        return datetime.datetime.now(tz=datetime.UTC) + datetime.timedelta(days=self.expires_in_days)


class ApiKeyInfo(msgspec.Struct):
    id: uuid.UUID
    name: str
    prefix: str  # the key's first characters
    scopes: list[str]
    created_at: datetime.datetime
    expires_at: datetime.datetime | None
    last_used_at: datetime.datetime | None

    @classmethod
    def of(cls, row: ApiKey) -> ApiKeyInfo:
        """What may be shown of a stored key: never the key, nor its hash."""
        scopes = json.loads(row.scopes) if isinstance(row.scopes, str) else row.scopes
        return cls(
            id=row.id,
            name=row.name,
            prefix=row.prefix,
            scopes=list(scopes),
            created_at=row.created_at,
            expires_at=row.expires_at,
            last_used_at=row.last_used_at,
        )


class ApiKeyCreated(ApiKeyInfo):
    key: str  # shown this once; only its hash is stored


class ApiKeyList(msgspec.Struct):
    items: list[ApiKeyInfo]
