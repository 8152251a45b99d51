"""JWTs (pyjwt): issuing and verifying access, refresh and session tokens.

Every token carries ``sub``, ``typ``, ``jti``, ``iat``, ``exp`` and ``iss``; tokens born of one login
also carry ``fam`` (the refresh family, revoked at logout) and session tokens carry ``sid``.
Verification pins the configured algorithm, so ``alg: none`` and algorithm swaps fail like a bad signature.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import secrets
import uuid
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import jwt

from agentctl.config import AuthSettings, Settings
from server.errors import UnauthorizedError


class TokenType(StrEnum):
    ACCESS = "access"
    REFRESH = "refresh"
    SESSION = "session"


@dataclass(frozen=True)
class TokenClaims:
    subject: uuid.UUID
    token_type: TokenType
    jti: uuid.UUID
    issued_at: datetime.datetime
    expires_at: datetime.datetime
    family_id: uuid.UUID | None = None
    session_id: uuid.UUID | None = None
    # Set when the caller is an API key (jti and family are the key's id): what the key may do.
    api_key_scopes: frozenset[str] | None = None

    def revocable_ids(self) -> list[uuid.UUID]:
        """Every identifier whose revocation kills this token: itself, its login family, its session."""
        return [value for value in (self.jti, self.family_id, self.session_id) if value is not None]


@dataclass(frozen=True)
class SessionClaims:
    """A verified session token's caller: the user, and the one session the token acts for (never missing)."""

    subject: uuid.UUID
    session_id: uuid.UUID
    token: TokenClaims
    created: bool = False  # started for this request (an API key that named no session)

    @classmethod
    def of(cls, claims: TokenClaims) -> SessionClaims:
        if claims.session_id is None:  # decode_any refuses a session token without its session
            raise UnauthorizedError("the token is invalid")
        return cls(subject=claims.subject, session_id=claims.session_id, token=claims)


@dataclass(frozen=True)
class IssuedToken:
    token: str
    claims: TokenClaims


class TokenCodec:
    """Signs and verifies tokens with the configured algorithm and keys; knows nothing of storage."""

    def __init__(self, settings: AuthSettings, *, signing_key: str, verifying_key: str) -> None:
        self._settings = settings
        self._signing_key = signing_key
        self._verifying_key = verifying_key
        self._lifetimes = {
            TokenType.ACCESS: datetime.timedelta(seconds=settings.access_token_ttl_seconds),
            TokenType.REFRESH: datetime.timedelta(seconds=settings.refresh_token_ttl_seconds),
            TokenType.SESSION: datetime.timedelta(seconds=settings.session_token_ttl_seconds),
        }

    def issue(
        self,
        token_type: TokenType,
        subject: uuid.UUID,
        *,
        family_id: uuid.UUID | None = None,
        session_id: uuid.UUID | None = None,
        not_after: datetime.datetime | None = None,
    ) -> IssuedToken:
        """``not_after``: the token expires then if that is sooner than its type's lifetime."""
        now = datetime.datetime.now(tz=datetime.UTC).replace(microsecond=0)
        expires_at = now + self._lifetimes[token_type]
        if not_after is not None:
            expires_at = min(expires_at, not_after.replace(microsecond=0))
        claims = TokenClaims(
            subject=subject,
            token_type=token_type,
            jti=uuid.uuid4(),
            issued_at=now,
            expires_at=expires_at,
            family_id=family_id,
            session_id=session_id,
        )
        payload: dict[str, object] = {
            "sub": str(subject),
            "typ": token_type.value,
            "jti": str(claims.jti),
            "iat": now,
            "exp": claims.expires_at,
            "iss": self._settings.jwt_issuer,
        }
        if family_id is not None:
            payload["fam"] = str(family_id)
        if session_id is not None:
            payload["sid"] = str(session_id)
        token = jwt.encode(payload, self._signing_key, algorithm=self._settings.jwt_algorithm)
        return IssuedToken(token=token, claims=claims)

    def decode(self, token: str, expected: TokenType) -> TokenClaims:
        """Verify signature, issuer, lifetime and type; raise UnauthorizedError saying what is wrong."""
        return self.check_type(self.decode_any(token), expected)

    def decode_any(self, token: str) -> TokenClaims:
        """Verify signature, issuer and lifetime, whatever the token's type (the caller checks it)."""
        try:
            payload = jwt.decode(
                token,
                self._verifying_key,
                algorithms=[self._settings.jwt_algorithm],
                issuer=self._settings.jwt_issuer,
                leeway=self._settings.jwt_leeway_seconds,
                options={"require": ["sub", "typ", "jti", "iat", "exp", "iss"]},
            )
        except jwt.ExpiredSignatureError:
            raise UnauthorizedError("the token has expired") from None
        except jwt.PyJWTError:
            raise UnauthorizedError("the token is invalid") from None
        try:
            token_type = TokenType(payload["typ"])
            if token_type is TokenType.SESSION and "sid" not in payload:
                raise ValueError("a session token without its session")
            return TokenClaims(
                subject=uuid.UUID(payload["sub"]),
                token_type=token_type,
                jti=uuid.UUID(payload["jti"]),
                issued_at=datetime.datetime.fromtimestamp(payload["iat"], tz=datetime.UTC),
                expires_at=datetime.datetime.fromtimestamp(payload["exp"], tz=datetime.UTC),
                family_id=uuid.UUID(payload["fam"]) if "fam" in payload else None,
                session_id=uuid.UUID(payload["sid"]) if "sid" in payload else None,
            )
        except (ValueError, TypeError):
            raise UnauthorizedError("the token is invalid") from None

    @staticmethod
    def check_type(claims: TokenClaims, expected: TokenType) -> TokenClaims:
        if claims.token_type is not expected:
            raise UnauthorizedError(f"this endpoint needs a {expected.value} token")
        return claims


def token_codec_for(settings: Settings) -> TokenCodec:
    """The codec with the configured keys; outside production an unset secret is kept in the data directory."""
    auth = settings.auth
    if not auth.jwt_algorithm.startswith("HS"):
        if auth.jwt_private_key is None or auth.jwt_public_key is None:  # the settings refuse this already
            raise ValueError(f"{auth.jwt_algorithm} needs a private and a public key")
        return TokenCodec(auth, signing_key=auth.jwt_private_key.get_secret_value(), verifying_key=auth.jwt_public_key)
    secret = auth.jwt_secret.get_secret_value() if auth.jwt_secret else _development_secret(settings.data_dir)
    return TokenCodec(auth, signing_key=secret, verifying_key=secret)


def _development_secret(data_dir: Path) -> str:
    # Shared by every worker through the file; production refuses to start without a configured secret.
    path = data_dir / "jwt-secret"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        draft = path.with_name(f".jwt-secret-{os.getpid()}")
        draft.write_text(secrets.token_urlsafe(48), encoding="utf-8")
        draft.chmod(0o600)
        with contextlib.suppress(FileExistsError):  # another worker got there first; its key stands
            os.link(draft, path)  # atomic: readers never see a half-written key
        draft.unlink()
    return path.read_text(encoding="utf-8").strip()
