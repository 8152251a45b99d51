"""Sign-up, sign-in, token rotation, sign-out, and the per-request check of a bearer token."""

from __future__ import annotations

import datetime
import uuid
from dataclasses import dataclass

from litestar.types import Scope
from loguru import logger

from agentctl.config import AuthSettings, Settings
from server.apikeys.service import VerifiedApiKey, looks_like_api_key, verify_api_key
from server.auth.passwords import PasswordHashing, enforce_password_policy
from server.auth.revocation import RevocationCheck, RevocationKind, revoke
from server.auth.tables import RefreshToken
from server.auth.tokens import IssuedToken, TokenClaims, TokenCodec, TokenType
from server.errors import ForbiddenError, UnauthorizedError
from server.ratelimit.service import RateLimiter, RouteClass
from server.users.service import create_user, find_user_by_email, get_user, replace_password_hash
from server.users.tables import User

_BAD_CREDENTIALS = "wrong email or password"
_CLAIMS_STATE_KEY = "agentctl.bearer_claims"


class AccountDisabledError(ForbiddenError):
    code = "account-disabled"

    def __init__(self) -> None:
        super().__init__("this account is disabled; ask the operator to enable it")


class WrongPasswordError(UnauthorizedError):
    code = "wrong-password"

    def __init__(self) -> None:
        super().__init__("wrong password")


@dataclass(frozen=True)
class TokenPair:
    access: IssuedToken
    refresh: IssuedToken


@dataclass(frozen=True)
class Registration:
    user: User
    tokens: TokenPair


class AuthService:
    def __init__(
        self,
        settings: Settings,
        *,
        codec: TokenCodec,
        hashing: PasswordHashing,
        revocations: RevocationCheck,
        limiter: RateLimiter,
    ) -> None:
        self._settings = settings
        self.codec = codec
        self._hashing = hashing
        self.refuse_if_hashing_backlogged = hashing.refuse_if_backlogged
        self._revocations = revocations
        self._limiter = limiter

    async def register(self, *, email: str, password: str, username: str | None) -> Registration:
        """Create an account and sign it in."""
        enforce_password_policy(password, self._settings.auth)
        user = await create_user(email=email, password_hash=await self._hashing.hash(password), username=username)
        logger.info("account created for user {}", user.id)
        return Registration(user=user, tokens=await self._start_family(user.id))

    async def login(self, *, email: str, password: str) -> TokenPair:
        """Check the password (same work and the same answer whether or not the email exists)."""
        if self._limiter.enabled:
            (await self._limiter.hit(RouteClass.LOGIN_EMAIL, email)).raise_if_refused("sign-in attempts for this email")
        user = await find_user_by_email(email)
        verified = await self._hashing.verify(user.password_hash if user else None, password)
        if user is None or not verified:
            raise UnauthorizedError(_BAD_CREDENTIALS)
        if user.disabled_at is not None:  # said only to whoever knows the password
            raise AccountDisabledError()
        if self._hashing.needs_rehash(user.password_hash):
            await replace_password_hash(user_id=user.id, password_hash=await self._hashing.hash(password))
            logger.info("password hash of user {} upgraded to the current parameters", user.id)
        return await self._start_family(user.id)

    async def confirm_password(self, *, user_id: uuid.UUID, password: str) -> None:
        """The account's password again, for what a token alone may not do (deleting the account); attempts count
        against the same limit as sign-ins to that email."""
        user = await get_user(user_id)
        if self._limiter.enabled:
            (await self._limiter.hit(RouteClass.LOGIN_EMAIL, user.email)).raise_if_refused("password attempts")
        if not await self._hashing.verify(user.password_hash, password):
            raise WrongPasswordError()

    @property
    def revocations(self) -> RevocationCheck:
        return self._revocations

    async def refresh(self, *, refresh_token: str) -> TokenPair:
        """Exchange a refresh token for a new pair. A token used twice was stolen: its whole family dies."""
        claims = self.codec.decode(refresh_token, TokenType.REFRESH)
        if claims.family_id is None or await self._revocations.any_revoked(claims.revocable_ids()):
            raise UnauthorizedError("the token has been revoked")
        async with RefreshToken._meta.db.transaction():
            rows = await RefreshToken.raw(
                "SELECT used_at FROM refresh_tokens WHERE id = {} AND owner = {} FOR UPDATE",
                claims.jti,
                claims.subject,
            )
            if rows and rows[0]["used_at"] is None:
                await RefreshToken.update({RefreshToken.used_at: _now()}).where(RefreshToken.id == claims.jti)
                return await self._issue_pair(claims.subject, claims.family_id)
        if rows:
            await self._revoke_family(claims.family_id)
            logger.warning("refresh token reuse for user {}: family {} revoked", claims.subject, claims.family_id)
            raise UnauthorizedError("the refresh token was already used; every token of that sign-in is revoked")
        raise UnauthorizedError("the token has been revoked")

    async def logout(self, *, claims: TokenClaims) -> None:
        """Revoke the presented access token and its whole sign-in (refresh family), on every worker at once."""
        await revoke(self._revocations, claims.jti, kind=RevocationKind.TOKEN, expires_at=claims.expires_at)
        if claims.family_id is not None:
            await self._revoke_family(claims.family_id)

    async def authenticate(self, scope: Scope, expected: TokenType, *, api_key_scope: str | None = None) -> TokenClaims:
        """Verify the request's bearer token: of the expected type, and nothing it belongs to revoked. An API key
        passes only where ``api_key_scope`` says a key may act, and only with that scope (403 otherwise)."""
        claims = await self._bearer_claims(scope)
        if claims.api_key_scopes is not None:
            if api_key_scope is None:
                raise ForbiddenError(
                    "an API key cannot manage the account or API keys; sign in with a password for that"
                )
            if api_key_scope not in claims.api_key_scopes:
                raise ForbiddenError(f"this API key does not have the {api_key_scope} scope")
            return claims  # its lookup was the revocation check: a revoked key is no longer stored
        claims = self.codec.check_type(claims, expected)
        if await self._revocations.any_revoked(claims.revocable_ids()):
            raise UnauthorizedError("the token has been revoked")
        return claims

    async def revoke_session_tokens(self, session_id: uuid.UUID) -> None:
        """Every token ever issued for the session stops working."""
        await self._revoke_for_session_lifetime(session_id, RevocationKind.SESSION)

    async def revoke_api_key_tokens(self, key_id: uuid.UUID) -> None:
        """Every session token an API key minted stops working (they carry the key's id as their family)."""
        await self._revoke_for_session_lifetime(key_id, RevocationKind.FAMILY)

    async def _revoke_for_session_lifetime(self, revoked_id: uuid.UUID, kind: str) -> None:
        expires_at = _family_revocation_end([], self._settings.auth)  # as long as a session token minted now
        await revoke(self._revocations, revoked_id, kind=kind, expires_at=expires_at)

    def issue_session_token(self, claims: TokenClaims, session_id: uuid.UUID) -> IssuedToken:
        """A token that acts for one session only; it dies with the sign-in (or the API key) it came from, and never
        outlives an expiring key."""
        not_after = None
        if claims.api_key_scopes is not None:  # verifiers accept a token up to the leeway past its expiry
            not_after = claims.expires_at - datetime.timedelta(seconds=self._settings.auth.jwt_leeway_seconds)
        return self.codec.issue(
            TokenType.SESSION, claims.subject, family_id=claims.family_id, session_id=session_id, not_after=not_after
        )

    async def bearer_subject(self, scope: Scope) -> str | None:
        """The user id of a well-signed bearer token or a known API key, for keying rate limits (the limits of a
        key's requests are its user's)."""
        try:
            return str((await self._bearer_claims(scope)).subject)
        except UnauthorizedError:
            return None

    async def _bearer_claims(self, scope: Scope) -> TokenClaims:
        """The bearer token's claims, verified once per request (rate limiting and authentication both ask)."""
        state = scope.setdefault("state", {})
        outcome = state.get(_CLAIMS_STATE_KEY)
        if outcome is None:
            token = bearer_token(scope)
            try:
                if token is None:
                    raise UnauthorizedError("a bearer token is required (Authorization: Bearer <token>)")
                if looks_like_api_key(token):
                    outcome = _claims_of_key(await verify_api_key(token))
                else:
                    outcome = self.codec.decode_any(token)
            except UnauthorizedError as error:
                outcome = error
            state[_CLAIMS_STATE_KEY] = outcome
        if isinstance(outcome, UnauthorizedError):
            raise UnauthorizedError(outcome.detail)
        return outcome

    async def _start_family(self, user_id: uuid.UUID) -> TokenPair:
        return await self._issue_pair(user_id, uuid.uuid4())

    async def _issue_pair(self, user_id: uuid.UUID, family_id: uuid.UUID) -> TokenPair:
        access = self.codec.issue(TokenType.ACCESS, user_id, family_id=family_id)
        refresh = self.codec.issue(TokenType.REFRESH, user_id, family_id=family_id)
        # Only for an account that is enabled, read under a share lock: disabling (or deleting) an account updates
        # its row, so it waits for a sign-in that got here first, whose family it then sees and revokes, and a
        # sign-in that comes after sees the account disabled.
        inserted = await RefreshToken.raw(
            "WITH owner AS (SELECT id FROM users WHERE id = {} AND disabled_at IS NULL FOR SHARE) "
            "INSERT INTO refresh_tokens (id, family_id, owner, expires_at, used_at, created_at) "
            "SELECT {}, {}, owner.id, {}, NULL, now() FROM owner RETURNING id",
            user_id,
            refresh.claims.jti,
            family_id,
            refresh.claims.expires_at,
        )
        if not inserted:
            raise AccountDisabledError()
        return TokenPair(access=access, refresh=refresh)

    async def _revoke_family(self, family_id: uuid.UUID) -> None:
        newest = await RefreshToken.select(RefreshToken.expires_at).where(RefreshToken.family_id == family_id)
        expires_at = _family_revocation_end([row["expires_at"] for row in newest], self._settings.auth)
        await revoke(self._revocations, family_id, kind=RevocationKind.FAMILY, expires_at=expires_at)


def _family_revocation_end(refresh_expiries: list[datetime.datetime], settings: AuthSettings) -> datetime.datetime:
    """How long a sign-in's revocation must last: its tokens live at most as long as its newest refresh token, or a
    session token minted now."""
    return max([*refresh_expiries, _now() + datetime.timedelta(seconds=settings.session_token_ttl_seconds)])


def session_tokens_outlive_sign_ins(settings: AuthSettings) -> bool:
    """Whether a session token can outlive every refresh token of the sign-in it came from (an access token lives
    past its refresh token, or a session token minted at the end of one does), so that revoking the sign-in no longer
    reaches it once its refresh tokens are purged. Not with the defaults (30 min + 1 day against 30 days)."""
    return settings.access_token_ttl_seconds + settings.session_token_ttl_seconds > settings.refresh_token_ttl_seconds


async def revoke_every_token_of(
    check: RevocationCheck,
    settings: AuthSettings,
    *,
    user_id: uuid.UUID,
    api_key_ids: list[uuid.UUID],
    session_ids: list[uuid.UUID],
) -> int:
    """Every token of the user stops working, on every worker and replica at once: each sign-in (refresh family:
    its access, refresh and session tokens), each session token an API key minted (the key's id is their family) and,
    given ``session_ids``, every token of those sessions. The user's id is stored nowhere: revocations hold the
    revoked ids only. The keys themselves are refused where they are looked up. How many ids were revoked."""
    families = await RefreshToken.raw(
        "SELECT family_id, max(expires_at) AS expires_at FROM refresh_tokens WHERE owner = {} GROUP BY family_id",
        user_id,
    )
    for family in families:
        expires_at = _family_revocation_end([family["expires_at"]], settings)
        await revoke(check, family["family_id"], kind=RevocationKind.FAMILY, expires_at=expires_at)
    session_lifetime_end = _family_revocation_end([], settings)
    for key_id in api_key_ids:
        await revoke(check, key_id, kind=RevocationKind.FAMILY, expires_at=session_lifetime_end)
    for session_id in session_ids:
        await revoke(check, session_id, kind=RevocationKind.SESSION, expires_at=session_lifetime_end)
    return len(families) + len(api_key_ids) + len(session_ids)


# What a key that never expires is taken to expire at, where a date is needed (it is never compared with now).
_NEVER = datetime.datetime(9999, 1, 1, tzinfo=datetime.UTC)


def _claims_of_key(key: VerifiedApiKey) -> TokenClaims:
    """An API key as the caller it acts for: its user, with the key's id as token and family id."""
    return TokenClaims(
        subject=key.owner_id,
        token_type=TokenType.ACCESS,
        jti=key.key_id,
        issued_at=key.created_at,
        expires_at=key.expires_at or _NEVER,
        family_id=key.key_id,
        api_key_scopes=key.scopes,
    )


def bearer_token(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


def _now() -> datetime.datetime:
    return datetime.datetime.now(tz=datetime.UTC)
