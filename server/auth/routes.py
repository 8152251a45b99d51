from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
from litestar import Controller, Request, post
from litestar.di import NamedDependency, Provide
from litestar.openapi.spec import OpenAPIMediaType, Operation, RequestBody, Schema
from litestar.openapi.spec.enums import OpenAPIFormat, OpenAPIType
from litestar.params import JSONBody

from server.admission.middleware import ADMISSION_OPTION
from server.auth.dependencies import USER_TOKEN, provide_user_claims
from server.auth.schemas import (
    EMAIL_MAX_LENGTH,
    PASSWORD_MAX_LENGTH,
    LoginRequest,
    RefreshRequest,
    RegisterRequest,
    RegisterResponse,
    Token,
    TokenPairResponse,
)
from server.auth.service import AuthService, TokenPair
from server.auth.tokens import TokenClaims
from server.errors import InvalidFieldError, problem_responses
from server.ratelimit.service import RouteClass
from server.security.body import TOO_DEEP, InvalidBodyError
from server.security.text import email_pattern

_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


def _pair(tokens: TokenPair) -> TokenPairResponse:
    return TokenPairResponse(
        access_token=tokens.access.token,
        token_type="bearer",
        expires_at=tokens.access.claims.expires_at,
        refresh_token=tokens.refresh.token,
    )


_EMAIL_SCHEMA = Schema(
    type=OpenAPIType.STRING,
    format=OpenAPIFormat.EMAIL,
    min_length=3,
    max_length=EMAIL_MAX_LENGTH,
    pattern=email_pattern(),
)
_PASSWORD_SCHEMA = Schema(
    type=OpenAPIType.STRING, min_length=1, max_length=PASSWORD_MAX_LENGTH, description="Any Unicode text; never altered"
)
_GRANT_TYPE_SCHEMA = Schema(type=OpenAPIType.STRING, enum=["password"])
# What OAuth2 password-grant clients send besides the credentials; accepted in a form, and ignored.
_OAUTH2_FORM_EXTRAS = ("scope", "client_id", "client_secret")


def _login_body() -> RequestBody:
    as_json = Schema(
        type=OpenAPIType.OBJECT,
        properties={"email": _EMAIL_SCHEMA, "password": _PASSWORD_SCHEMA, "grant_type": _GRANT_TYPE_SCHEMA},
        required=["email", "password"],
        additional_properties=False,
        description="email and password",
    )
    as_form = Schema(
        type=OpenAPIType.OBJECT,
        properties={
            "email": _EMAIL_SCHEMA,
            "username": Schema(
                type=OpenAPIType.STRING,
                format=OpenAPIFormat.EMAIL,
                min_length=3,
                max_length=EMAIL_MAX_LENGTH,
                pattern=email_pattern(),
                description="The email, as OAuth2 clients send it",
            ),
            "password": _PASSWORD_SCHEMA,
            "grant_type": _GRANT_TYPE_SCHEMA,
            **{
                name: Schema(type=OpenAPIType.STRING, description="Accepted and ignored")
                for name in _OAUTH2_FORM_EXTRAS
            },
        },
        required=["password"],
        any_of=[Schema(required=["email"]), Schema(required=["username"])],
        additional_properties=False,
        description="an OAuth2 password-grant form: username (the email) and password",
    )
    return RequestBody(
        required=True,
        content={
            "application/json": OpenAPIMediaType(schema=as_json),
            "application/x-www-form-urlencoded": OpenAPIMediaType(schema=as_form),
        },
    )


@dataclass
class _LoginOperation(Operation):
    """Documents that login reads JSON and forms alike (the handler parses the body itself)."""

    def __post_init__(self) -> None:
        self.request_body = _login_body()


class AuthController(Controller):
    path = "/api/v1/auth"
    tags = ["auth"]

    @post(
        "/register",
        status_code=201,
        opt={ADMISSION_OPTION: "password", "rate_limit": RouteClass.REGISTER},
        responses=problem_responses(409, 413, 422, 429, 503),
    )
    async def register(self, data: JSONBody[RegisterRequest], auth: NamedDependency[AuthService]) -> RegisterResponse:
        """Create an account and return its first access and refresh tokens."""
        registration = await auth.register(email=data.email, password=data.password, username=data.username)
        return RegisterResponse(
            id=registration.user.id,
            email=registration.user.email,
            username=registration.user.username,
            token=Token.of(registration.tokens.access),
            refresh_token=registration.tokens.refresh.token,
        )

    @post(
        "/login",
        status_code=200,
        opt={ADMISSION_OPTION: "password", "rate_limit": RouteClass.LOGIN},
        responses=problem_responses(401, 403, 413, 422, 429, 503),
        operation_class=_LoginOperation,
    )
    async def login(self, request: Request, auth: NamedDependency[AuthService]) -> TokenPairResponse:
        """Sign in with email and password (JSON, or an OAuth2 password-grant form); 403 account-disabled for an account
        an operator disabled."""
        credentials = await _login_request(request)
        return _pair(await auth.login(email=credentials.email, password=credentials.password))

    @post("/refresh", status_code=200, responses=problem_responses(401, 403, 422, 429))
    async def refresh(self, data: JSONBody[RefreshRequest], auth: NamedDependency[AuthService]) -> TokenPairResponse:
        """Exchange a refresh token (single use) for a new access and refresh token."""
        return _pair(await auth.refresh(refresh_token=data.refresh_token))

    @post(
        "/logout",
        status_code=204,
        security=USER_TOKEN,
        dependencies={"user": Provide(provide_user_claims)},
        responses=problem_responses(401, 429),
    )
    async def logout(self, user: NamedDependency[TokenClaims], auth: NamedDependency[AuthService]) -> None:
        """Revoke this access token and every token of its sign-in, on every worker at once."""
        await auth.logout(claims=user)


async def _login_request(request: Request) -> LoginRequest:
    content_type = request.headers.get("content-type", "")
    try:
        if content_type.startswith(_FORM_TYPES):
            form: dict[str, Any] = dict(await request.form())
            for extra in _OAUTH2_FORM_EXTRAS:
                form.pop(extra, None)
            # OAuth2 password-grant clients send the email as "username"; with both, the email is the one.
            username = form.pop("username", None)
            if username is not None and "email" not in form:
                form["email"] = username
            return msgspec.convert(form, LoginRequest)
        return msgspec.json.decode(await request.body(), type=LoginRequest)
    except msgspec.ValidationError as error:
        message = str(error)
        field = message.rsplit("$.", 1)[1].rstrip("`") if "$." in message else "body"
        if "unknown field" in message or "missing required field" in message:
            field = message.split("`")[1]
        raise InvalidFieldError(field, message.split(" - at ")[0]) from None
    except msgspec.DecodeError as error:
        raise InvalidFieldError("body", f"not valid JSON: {error}") from None
    except RecursionError:
        raise InvalidBodyError(TOO_DEEP) from None
