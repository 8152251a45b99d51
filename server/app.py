"""The one place routes, middleware, error handlers and lifespan are wired together."""

from __future__ import annotations

from litestar import Litestar, Router
from litestar.config.cors import CORSConfig
from litestar.datastructures import State
from litestar.di import Provide
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.types import ControllerRouterHandler, Scope

from agentctl import __version__
from agentctl.config import Settings, SettingsError, load_settings
from server.accounts.routes import AccountController
from server.admission.middleware import admission_middleware
from server.apikeys.routes import ApiKeyController
from server.auth.browser import BrowserAuthController, RefreshCookie
from server.auth.dependencies import BEARER_SCHEME, SESSION_HEADER
from server.auth.routes import AuthController
from server.budgets.routes import UsageController
from server.chat.routes import ChatController, RunsController
from server.dependencies import SERVICES
from server.errors import ERROR_SHAPES_STATE_KEY, EXCEPTION_HANDLERS, is_database_unavailable
from server.health.routes import HealthController
from server.lifespan import build_lifespan
from server.memory.routes import MemoryController
from server.observability.http import http_metrics_middleware
from server.observability.logging import configure_logging
from server.observability.metrics import HttpMetrics
from server.observability.routes import metrics
from server.openai_compat.errors import OPENAI_PREFIX, openai_error
from server.openai_compat.routes import OpenAIController
from server.openapi import (
    StrictStructSchemaPlugin,
    answer_options_for_every_method,
    state_the_configured_limits,
    state_the_zero_bounds,
)
from server.ratelimit.middleware import rate_limit_middleware
from server.request_context import add_request_id_header, request_context_middleware
from server.resources import open_resources_of
from server.security.body import BoundedRequest
from server.security.headers import security_headers_hook
from server.sessions.routes import SessionController
from server.web.routes import PAGE_CSP, PAGE_PATH, web_routes

OPENAPI_PATH = "/schema"


def create_app(settings: Settings) -> Litestar:
    """Build the API for these settings; refuses settings that are unsafe for their environment."""
    problems = settings.production_problems()
    if problems:
        raise SettingsError(problems)
    cors = (
        CORSConfig(
            allow_origins=settings.server.cors_allowed_origins,
            allow_methods=["GET", "POST", "PATCH", "DELETE", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID", SESSION_HEADER],
            expose_headers=[
                "X-Request-ID",
                "X-Run-Id",
                SESSION_HEADER,
                "RateLimit-Limit",
                "RateLimit-Remaining",
                "RateLimit-Reset",
                "Retry-After",
            ],
            allow_credentials=False,  # bearer tokens, not cookies
            max_age=settings.server.cors_max_age_seconds,
        )
        if settings.server.cors_allowed_origins
        else None
    )
    web = settings.server.web_enabled
    app = Litestar(
        route_handlers=[
            HealthController,
            AuthController,
            AccountController,
            SessionController,
            ApiKeyController,
            UsageController,
            ChatController,
            RunsController,
            MemoryController,
            OpenAIController,
            metrics,
            *(_web_page(settings) if web else []),
        ],
        lifespan=[build_lifespan(settings)],
        dependencies=SERVICES,
        # Admission first: a request refused for overload costs no token check and no Redis round trip.
        middleware=[
            DefineMiddleware(admission_middleware, services=open_resources_of),
            DefineMiddleware(rate_limit_middleware, services=open_resources_of),
        ],
        before_send=[
            add_request_id_header,
            security_headers_hook(settings, docs_path=OPENAPI_PATH, page_policies={PAGE_PATH: PAGE_CSP} if web else {}),
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        state=State({ERROR_SHAPES_STATE_KEY: {OPENAI_PREFIX: openai_error}}),
        after_exception=[notice_database_outage],
        cors_config=cors,
        request_max_body_size=settings.server.request_max_body_bytes,
        request_class=BoundedRequest,
        openapi_config=OpenAPIConfig(
            title="agentctl",
            version=__version__,
            description="Run an AI agent as a service.",
            path=OPENAPI_PATH,
            render_plugins=[ScalarRenderPlugin()],
            components=Components(
                security_schemes={
                    BEARER_SCHEME: SecurityScheme(
                        type="http",
                        scheme="bearer",
                        bearer_format="JWT or API key",
                        description="A user (access) token from /api/v1/auth/login, a session token where noted, or "
                        "an API key (agentctl_...) where its scope allows.",
                    )
                }
            ),
        ),
        plugins=[StrictStructSchemaPlugin()],
        logging_config=None,  # logs go through loguru (server.observability.logging), not Litestar's root logger
        debug=settings.debug,
    )
    answer_options_for_every_method(app)
    state_the_configured_limits(app, settings)
    state_the_zero_bounds(app)
    # Around the whole app rather than as route middleware, which runs only for requests that match a route: a
    # scan of unknown paths (404) or methods (405) gets its access line and its count too. Outermost first: the
    # request context wraps the metrics, so that the access line carries the request id.
    app.asgi_handler = request_context_middleware(http_metrics_middleware(app.asgi_handler, metrics=_http_metrics))
    return app


def _web_page(settings: Settings) -> list[ControllerRouterHandler]:
    """The chat page, its assets, and the cookie sign-in that only the page uses."""
    cookie = RefreshCookie.for_settings(settings)
    browser_auth = Router(
        path="/",
        route_handlers=[BrowserAuthController],
        dependencies={"refresh_cookie": Provide(lambda: cookie, sync_to_thread=False, use_cache=True)},
    )
    return [*web_routes(), browser_auth]


def _http_metrics(app: Litestar) -> HttpMetrics | None:
    resources = open_resources_of(app)
    return resources.metrics.http if resources is not None else None


async def notice_database_outage(exception: BaseException, scope: Scope) -> None:
    """A request that failed for want of the database: the pools renew their connections once it is back."""
    resources = open_resources_of(scope["app"])
    if resources is not None and is_database_unavailable(exception):
        resources.database.suspect_outage()


def create_app_from_environment() -> Litestar:
    """Uvicorn's factory for worker processes: `agentctl serve` exported the resolved settings beforehand."""
    settings = load_settings()
    configure_logging(settings)
    return create_app(settings)
