"""Credentials under the HTTP catalogue: passwords, tokens and revocation, against real storage where they have any."""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import hmac
import os
import threading
import uuid

import jwt
import pytest
from argon2 import PasswordHasher
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from redis.asyncio import Redis

from agentctl.config import AuthSettings, Settings
from server.auth.passwords import PasswordHashing, password_problems
from server.auth.revocation import (
    DatabaseRevocationCheck,
    RedisRevocationCheck,
    RevocationKind,
    purge_expired,
    revoke,
)
from server.auth.tables import RefreshToken, RevokedToken
from server.auth.tokens import TokenCodec, TokenType
from server.database.engine import Database
from server.errors import UnauthorizedError
from server.ratelimit.service import RateLimiter
from server.threads import BACKGROUND_NICENESS
from server.users.service import create_user
from server.users.tables import User
from tests.support import b64url_json, unique_email

REDIS_URL = "redis://127.0.0.1:6379/15"


def now() -> datetime.datetime:
    return datetime.datetime.now(tz=datetime.UTC)


# --- passwords ----------------------------------------------------------------------------------------------


def test_password_policy_names_what_is_missing() -> None:
    settings = AuthSettings()
    assert password_problems("abc", settings) == ["at least 8 characters", "a digit"]
    assert password_problems("12345678", settings) == ["a letter"]
    assert password_problems("x1" * 70, settings) == ["at most 128 characters"]
    assert password_problems("пароль12", settings) == []
    relaxed = AuthSettings(password_require_digit=False, password_min_length=4)
    assert password_problems("word", relaxed) == []


async def test_hash_made_with_old_parameters_is_upgraded_at_login(database: Database) -> None:
    from server.auth.service import AuthService

    settings = Settings(env="test", auth={"jwt_secret": "s" * 40})
    old_hash = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash("old-params-1")
    email = unique_email()
    await create_user(email=email, password_hash=old_hash, username=None)
    hashing = PasswordHashing(settings.auth)
    assert hashing.needs_rehash(old_hash)
    auth = AuthService(
        settings,
        codec=TokenCodec(settings.auth, signing_key="s" * 40, verifying_key="s" * 40),
        hashing=hashing,
        revocations=DatabaseRevocationCheck(),
        limiter=RateLimiter(settings),
    )
    await auth.login(email=email, password="old-params-1")
    upgraded = (await User.objects().get(User.email == email)).password_hash
    assert upgraded != old_hash
    assert "m=19456,t=2,p=1" in upgraded
    assert not hashing.needs_rehash(upgraded)
    await auth.login(email=email, password="old-params-1")  # the new hash verifies


# --- tokens -------------------------------------------------------------------------------------------------


def test_token_types_are_checked_by_the_codec() -> None:
    settings = AuthSettings(jwt_secret="k" * 40)
    codec = TokenCodec(settings, signing_key="k" * 40, verifying_key="k" * 40)
    user, family, session = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    access = codec.issue(TokenType.ACCESS, user, family_id=family).token
    claims = codec.decode(access, TokenType.ACCESS)
    assert (claims.subject, claims.family_id, claims.session_id) == (user, family, None)
    for wrong in (TokenType.SESSION, TokenType.REFRESH):
        with pytest.raises(UnauthorizedError):
            codec.decode(access, wrong)
    session_token = codec.issue(TokenType.SESSION, user, family_id=family, session_id=session).token
    assert codec.decode(session_token, TokenType.SESSION).revocable_ids()[1:] == [family, session]


def test_asymmetric_keys_sign_and_verify() -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    private_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public_pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    settings = AuthSettings(jwt_algorithm="ES256", jwt_private_key=private_pem, jwt_public_key=public_pem)
    codec = TokenCodec(settings, signing_key=private_pem, verifying_key=public_pem)
    token = codec.issue(TokenType.ACCESS, uuid.uuid4()).token
    assert codec.decode(token, TokenType.ACCESS).token_type is TokenType.ACCESS
    # An HS256 token "signed" with the public key as a shared secret (algorithm confusion) is refused.
    claims = jwt.decode(token, options={"verify_signature": False})
    signing_input = f"{b64url_json({'alg': 'HS256', 'typ': 'JWT'})}.{b64url_json(claims)}"
    signature = hmac.new(public_pem.encode(), signing_input.encode(), hashlib.sha256).digest()
    confused = f"{signing_input}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"
    with pytest.raises(UnauthorizedError):
        codec.decode(confused, TokenType.ACCESS)


# --- revocation ---------------------------------------------------------------------------------------------


async def test_expired_revocations_and_refresh_tokens_are_purged(database: Database) -> None:
    user = await create_user(email=unique_email(), password_hash="h", username=None)
    expired_id, live_id = uuid.uuid4(), uuid.uuid4()
    await RevokedToken.insert(
        RevokedToken(id=expired_id, kind=RevocationKind.TOKEN, expires_at=now() - datetime.timedelta(seconds=1)),
        RevokedToken(id=live_id, kind=RevocationKind.TOKEN, expires_at=now() + datetime.timedelta(hours=1)),
    )
    old_refresh, live_refresh = uuid.uuid4(), uuid.uuid4()
    await RefreshToken.insert(
        RefreshToken(id=old_refresh, family_id=uuid.uuid4(), owner=user.id, expires_at=now() - datetime.timedelta(1)),
        RefreshToken(id=live_refresh, family_id=uuid.uuid4(), owner=user.id, expires_at=now() + datetime.timedelta(1)),
    )
    assert await purge_expired() >= 2
    assert not await RevokedToken.exists().where(RevokedToken.id == expired_id)
    assert await RevokedToken.exists().where(RevokedToken.id == live_id)
    assert not await RefreshToken.exists().where(RefreshToken.id == old_refresh)
    assert await RefreshToken.exists().where(RefreshToken.id == live_refresh)


async def test_redis_cache_refills_from_postgres_after_losing_its_keys(database: Database) -> None:
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    redis = Redis.from_url(REDIS_URL)
    try:
        check = RedisRevocationCheck(redis, prefix)
        revoked_id = uuid.uuid4()
        await revoke(check, revoked_id, kind=RevocationKind.TOKEN, expires_at=now() + datetime.timedelta(minutes=5))
        assert await check.any_revoked([uuid.uuid4(), revoked_id])
        assert not await check.any_revoked([uuid.uuid4()])

        # Redis restarted without persistence: every key is gone, the marker with them.
        await redis.delete(*[key async for key in redis.scan_iter(f"{prefix}:*")])
        assert await check.any_revoked([revoked_id])
        assert await redis.exists(f"{prefix}:revoked:{revoked_id}")
        ttl = await redis.ttl(f"{prefix}:revoked:{revoked_id}")
        assert 0 < ttl <= 301
    finally:
        await redis.delete(*[key async for key in redis.scan_iter(f"{prefix}:*")] or ["none"])
        await redis.aclose()


async def test_redis_unreachable_falls_back_to_postgres(database: Database) -> None:
    redis = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    try:
        check = RedisRevocationCheck(redis, "unreachable")
        revoked_id = uuid.uuid4()
        await RevokedToken.insert(
            RevokedToken(id=revoked_id, kind=RevocationKind.TOKEN, expires_at=now() + datetime.timedelta(minutes=5))
        )
        assert await check.any_revoked([revoked_id])
        assert not await check.any_revoked([uuid.uuid4()])
    finally:
        await redis.aclose()


async def test_database_check_without_redis(database: Database) -> None:
    check = DatabaseRevocationCheck()
    revoked_id = uuid.uuid4()
    assert not await check.any_revoked([revoked_id])
    await revoke(check, revoked_id, kind=RevocationKind.FAMILY, expires_at=now() + datetime.timedelta(minutes=5))
    assert await check.any_revoked([uuid.uuid4(), revoked_id])
    # Another process (a fresh check) sees it through PostgreSQL.
    assert await DatabaseRevocationCheck().any_revoked([revoked_id])


async def test_password_hashing_runs_below_the_event_loops_priority() -> None:
    """A sign-up storm's hashing yields the CPU to the event loop: its thread runs BACKGROUND_NICENESS lower."""
    hashing = PasswordHashing(Settings().auth)
    try:
        own = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        hashing_thread = await asyncio.get_running_loop().run_in_executor(
            hashing._pool, lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        )
        assert hashing_thread == own + BACKGROUND_NICENESS
        assert hashing.needs_rehash(await hashing.hash("a long enough password 1")) is False
    finally:
        hashing.close()
