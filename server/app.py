"""The one place routes, middleware, error handlers and lifespan are wired together."""

from __future__ import annotations

from litestar import Litestar
from litestar.config.cors import CORSConfig
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin

from agentctl import __version__
from agentctl.config import Settings, SettingsError, load_settings
from server.errors import EXCEPTION_HANDLERS
from server.health.routes import HealthController
from server.lifespan import build_lifespan
from server.observability.logging import configure_logging
from server.observability.request_id import add_request_id_header, request_context_middleware


def create_app(settings: Settings) -> Litestar:
    """Build the API for these settings; refuses settings that are unsafe for their environment."""
    problems = settings.production_problems()
    if problems:
        raise SettingsError(problems)
    cors = (
        CORSConfig(allow_origins=settings.server.cors_allowed_origins, allow_credentials=True, max_age=600)
        if settings.server.cors_allowed_origins
        else None
    )
    return Litestar(
        route_handlers=[HealthController],
        lifespan=[build_lifespan(settings)],
        middleware=[request_context_middleware],
        before_send=[add_request_id_header],
        exception_handlers=EXCEPTION_HANDLERS,
        cors_config=cors,
        request_max_body_size=settings.server.request_max_body_bytes,
        openapi_config=OpenAPIConfig(
            title="agentctl",
            version=__version__,
            description="Run an AI agent as a service.",
            path="/schema",
            render_plugins=[ScalarRenderPlugin()],
        ),
        logging_config=None,  # logs go through loguru (server.observability.logging), not Litestar's root logger
        debug=settings.debug,
    )


def create_app_from_environment() -> Litestar:
    """Uvicorn's factory for worker processes: `agentctl serve` exported the resolved settings beforehand."""
    settings = load_settings()
    configure_logging(settings)
    return create_app(settings)
