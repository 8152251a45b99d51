"""Sign-in for the web page: the refresh token travels only in an httpOnly cookie, never through JavaScript.

The JSON routes of ``server.auth.routes`` hand both tokens to the caller, which suits a program; a page would have
to keep its refresh token where any injected script could read it. These routes answer the same requests with the
access token alone and put the refresh token in a cookie that scripts cannot read (HttpOnly), that no other site's
request carries (SameSite=Strict), that travels only to the refresh route (Path) and, outside development, only
over HTTPS (Secure). The refresh route also requires a custom header, which a cross-site form or image cannot send
and a cross-origin script could send only after a CORS preflight this server never allows: a second, independent
guard against cross-site request forgery.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import msgspec
from litestar import Controller, Response, post
from litestar.datastructures import Cookie
from litestar.di import NamedDependency, Provide
from litestar.params import HeaderParameter, JSONBody, Parameter

from agentctl.config import Settings
from server.admission.middleware import ADMISSION_OPTION
from server.auth.dependencies import USER_TOKEN, provide_user_claims
from server.auth.schemas import LoginRequest, RegisterRequest, Token
from server.auth.service import AuthService, TokenPair
from server.auth.tokens import TokenClaims
from server.errors import AppError, UnauthorizedError, problem_responses
from server.ratelimit.service import RouteClass
from server.users.service import get_user

BROWSER_AUTH_PATH = "/api/v1/auth/web"
REFRESH_COOKIE = "agentctl_refresh"
CSRF_HEADER = "X-Agentctl-CSRF"


class CsrfHeaderMissingError(AppError):
    status = 403
    code = "csrf-header-missing"
    title = "Forbidden"

    def __init__(self) -> None:
        super().__init__(f"this route needs the {CSRF_HEADER} header, which only the web page sends")


@dataclass(frozen=True)
class RefreshCookie:
    """How the refresh cookie is set and cleared, from the settings."""

    secure: bool
    max_age: int

    @classmethod
    def for_settings(cls, settings: Settings) -> RefreshCookie:
        # Browsers keep Secure cookies only from HTTPS origins (and loopback); development may be served over HTTP.
        return cls(secure=settings.env != "development", max_age=settings.auth.refresh_token_ttl_seconds)

    def carrying(self, token: str) -> Cookie:
        return self._cookie(token, self.max_age)

    def cleared(self) -> Cookie:
        return self._cookie("", 0)

    def _cookie(self, value: str, max_age: int) -> Cookie:
        return Cookie(
            key=REFRESH_COOKIE,
            value=value,
            path=f"{BROWSER_AUTH_PATH}/refresh",
            max_age=max_age,
            httponly=True,
            secure=self.secure,
            samesite="strict",
        )


class BrowserUser(msgspec.Struct):
    id: str
    email: str
    username: str | None


class BrowserSignIn(msgspec.Struct):
    """What the page keeps, in memory only: an access token and who it belongs to. No refresh token."""

    token: Token
    user: BrowserUser


async def _signed_in(tokens: TokenPair, cookie: RefreshCookie, status_code: int) -> Response[BrowserSignIn]:
    account = await get_user(tokens.access.claims.subject)
    body = BrowserSignIn(
        token=Token.of(tokens.access),
        user=BrowserUser(id=str(account.id), email=account.email, username=account.username),
    )
    return Response(body, status_code=status_code, cookies=[cookie.carrying(tokens.refresh.token)])


class BrowserSignOut(msgspec.Struct):
    signed_out: bool


class BrowserAuthController(Controller):
    """Cookie-based sign-in for the web page; programs keep using /api/v1/auth/register, /login and /refresh."""

    path = BROWSER_AUTH_PATH
    tags = ["auth"]

    @post(
        "/register",
        status_code=201,
        opt={ADMISSION_OPTION: "password", "rate_limit": RouteClass.REGISTER},
        responses=problem_responses(409, 413, 422, 429, 503),
    )
    async def register(
        self, data: JSONBody[RegisterRequest], auth: NamedDependency[AuthService], refresh_cookie: RefreshCookie
    ) -> Response[BrowserSignIn]:
        """Create an account; the access token in the body, the refresh token in an httpOnly cookie."""
        registration = await auth.register(email=data.email, password=data.password, username=data.username)
        return await _signed_in(registration.tokens, refresh_cookie, 201)

    @post(
        "/login",
        status_code=200,
        opt={ADMISSION_OPTION: "password", "rate_limit": RouteClass.LOGIN},
        responses=problem_responses(401, 403, 413, 422, 429, 503),
    )
    async def login(
        self, data: JSONBody[LoginRequest], auth: NamedDependency[AuthService], refresh_cookie: RefreshCookie
    ) -> Response[BrowserSignIn]:
        """Sign in; the access token in the body, the refresh token in an httpOnly cookie."""
        return await _signed_in(await auth.login(email=data.email, password=data.password), refresh_cookie, 200)

    @post("/refresh", status_code=200, responses=problem_responses(401, 403, 429))
    async def refresh(
        self,
        auth: NamedDependency[AuthService],
        refresh_cookie: RefreshCookie,
        csrf: Annotated[str | None, HeaderParameter(header=CSRF_HEADER, required=False)] = None,
        refresh_token: Annotated[str | None, Parameter(cookie=REFRESH_COOKIE, required=False)] = None,
    ) -> Response[BrowserSignIn]:
        """Rotate the cookie's refresh token (single use) for a new access token; needs the CSRF header."""
        if not csrf:
            raise CsrfHeaderMissingError()
        if not refresh_token:
            raise UnauthorizedError("not signed in on this browser")
        try:
            tokens = await auth.refresh(refresh_token=refresh_token)
        except UnauthorizedError as error:
            # A dead cookie is dropped, so that the page stops presenting it.
            error.headers["Set-Cookie"] = refresh_cookie.cleared().to_header(header="")
            raise
        return await _signed_in(tokens, refresh_cookie, 200)

    @post(
        "/logout",
        status_code=200,
        security=USER_TOKEN,
        dependencies={"user": Provide(provide_user_claims)},
        responses=problem_responses(401, 429),
    )
    async def logout(
        self, user: NamedDependency[TokenClaims], auth: NamedDependency[AuthService], refresh_cookie: RefreshCookie
    ) -> Response[BrowserSignOut]:
        """Revoke the sign-in (its access and refresh tokens, on every worker) and clear the cookie."""
        await auth.logout(claims=user)
        # A body, unlike the JSON API's 204: a 204 that sets a cookie cannot be documented as having no content.
        return Response(BrowserSignOut(signed_out=True), status_code=200, cookies=[refresh_cookie.cleared()])
