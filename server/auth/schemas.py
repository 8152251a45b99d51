"""What the auth API reads and writes. Strict: unknown fields are rejected, sizes are bounded."""

from __future__ import annotations

import datetime
import uuid
from typing import Annotated

import msgspec
from msgspec import Meta

from server.auth.tokens import IssuedToken
from server.errors import InvalidFieldError
from server.schemas import Strict
from server.security.text import normalize_email, normalize_text

EMAIL_MAX_LENGTH = 254  # what an address may be (RFC 5321's path limit, as email-validator checks it)
PASSWORD_MAX_LENGTH = 1024
Email = Annotated[
    str,
    Meta(
        min_length=3,
        max_length=EMAIL_MAX_LENGTH,
        extra_json_schema={
            "description": "Email address; compared in compatibility form (NFKC) and case-insensitively.",
            "extra": {"format": "email"},
        },
    ),
]
# Passwords are never altered; the policy (agentctl config) bounds them further.
Password = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=PASSWORD_MAX_LENGTH,
        extra_json_schema={"description": "Any Unicode text, stored only as a hash."},
    ),
]
Username = Annotated[str, Meta(min_length=1, max_length=64)]


def _checked_email(value: str) -> str:
    try:
        return normalize_email(value)
    except ValueError as error:
        raise InvalidFieldError("email", str(error)) from None


class RegisterRequest(Strict):
    email: Email
    password: Password
    username: Username | None = None

    def __post_init__(self) -> None:
        self.email = _checked_email(self.email)
        if self.username is not None:
            self.username = normalize_text(self.username).strip() or None


class LoginRequest(Strict):
    email: Email
    password: Password
    grant_type: Annotated[str, Meta(pattern="^password$")] | None = None

    def __post_init__(self) -> None:
        self.email = _checked_email(self.email)


class RefreshRequest(Strict):
    refresh_token: Annotated[str, Meta(min_length=1, max_length=4096)]


class Token(msgspec.Struct):
    access_token: str
    expires_at: datetime.datetime
    token_type: str = "bearer"

    @classmethod
    def of(cls, issued: IssuedToken) -> Token:
        return cls(access_token=issued.token, expires_at=issued.claims.expires_at)


class TokenPairResponse(msgspec.Struct):
    access_token: str
    token_type: str
    expires_at: datetime.datetime
    refresh_token: str


class RegisterResponse(msgspec.Struct):
    id: uuid.UUID
    email: str
    username: str | None
    token: Token
    refresh_token: str


class UserResponse(msgspec.Struct):
    id: uuid.UUID
    email: str
    username: str | None
    created_at: datetime.datetime
