"""API keys: created for a user with scopes and an optional expiry, shown once, stored as a hash, checked on each
request by one indexed lookup (so a deleted key stops working at once on every worker and replica)."""

from __future__ import annotations

import datetime
import hashlib
import json
import secrets
import uuid
from dataclasses import dataclass
from enum import StrEnum

from server.apikeys.tables import ApiKey
from server.errors import NotFoundError, UnauthorizedError

KEY_PREFIX = "agentctl_"
_SHOWN_PREFIX_LENGTH = len(KEY_PREFIX) + 8
# last_used_at is written at most this often per key: a write per request would cost every call a row update.
LAST_USED_RESOLUTION = datetime.timedelta(seconds=60)


class ApiKeyScope(StrEnum):
    CHAT = "chat"
    MEMORIES = "memories"


@dataclass(frozen=True)
class VerifiedApiKey:
    """A key that is known, not expired: the user it acts for and what it may do."""

    key_id: uuid.UUID
    owner_id: uuid.UUID
    scopes: frozenset[str]
    created_at: datetime.datetime
    expires_at: datetime.datetime | None


@dataclass(frozen=True)
class IssuedApiKey:
    key: str  # the only time the key itself exists outside its holder
    row: ApiKey


class ApiKeyNotFoundError(NotFoundError):
    code = "api-key-not-found"

    def __init__(self) -> None:
        super().__init__("no such API key")


def looks_like_api_key(token: str) -> bool:
    """Whether a bearer credential is meant as an API key (rather than a JWT)."""
    return token.startswith(KEY_PREFIX)


def _hash_of(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


async def create_api_key(
    *, owner_id: uuid.UUID, name: str, scopes: list[ApiKeyScope], expires_at: datetime.datetime | None
) -> IssuedApiKey:
    """A new key for ``owner_id``: 32 random bytes behind a recognisable prefix, returned once."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(
        owner=owner_id,
        name=name,
        prefix=key[:_SHOWN_PREFIX_LENGTH],
        secret_hash=_hash_of(key),
        scopes=json.dumps(sorted({scope.value for scope in scopes})),
        expires_at=expires_at,
    )
    await row.save()
    return IssuedApiKey(key=key, row=row)


async def list_api_keys(*, owner_id: uuid.UUID) -> list[ApiKey]:
    """The user's keys, newest first."""
    return await ApiKey.objects().where(ApiKey.owner == owner_id).order_by(ApiKey.created_at, ascending=False)


async def delete_api_key(*, owner_id: uuid.UUID, key_id: uuid.UUID) -> None:
    """Delete one of the user's keys: from the next request on, on every worker, it is unknown."""
    deleted = await ApiKey.delete().where((ApiKey.id == key_id) & (ApiKey.owner == owner_id)).returning(ApiKey.id)
    if not deleted:
        raise ApiKeyNotFoundError()


async def delete_api_keys_of(*, owner_id: uuid.UUID) -> list[uuid.UUID]:
    """Delete every key of the user: from the next request on, on every worker, they are unknown. Their ids."""
    deleted = await ApiKey.delete().where(ApiKey.owner == owner_id).returning(ApiKey.id)
    return [row["id"] for row in deleted]


async def verify_api_key(key: str) -> VerifiedApiKey:
    """The key's owner and scopes; 401 for a key that is unknown (never issued, or deleted) or expired, or whose
    account is disabled."""
    # The owner's row in the same lookup: a disabled account's keys fail at once, at no extra round trip.
    rows = await ApiKey.raw(
        "SELECT k.id, k.owner, k.scopes, k.created_at, k.expires_at, k.last_used_at, u.disabled_at "
        "FROM api_keys k JOIN users u ON u.id = k.owner WHERE k.secret_hash = {}",
        _hash_of(key),
    )
    if not rows:
        raise UnauthorizedError("the API key is invalid or has been revoked")
    row = rows[0]
    if row["disabled_at"] is not None:
        raise UnauthorizedError("the API key's account is disabled")
    now = datetime.datetime.now(tz=datetime.UTC)
    if row["expires_at"] is not None and row["expires_at"] <= now:
        raise UnauthorizedError("the API key has expired")
    if row["last_used_at"] is None or row["last_used_at"] < now - LAST_USED_RESOLUTION:
        await ApiKey.update({ApiKey.last_used_at: now}).where(ApiKey.id == row["id"])
    scopes = row["scopes"]
    return VerifiedApiKey(
        key_id=row["id"],
        owner_id=row["owner"],
        scopes=frozenset(json.loads(scopes) if isinstance(scopes, str) else scopes),
        created_at=row["created_at"],
        expires_at=row["expires_at"],
    )
