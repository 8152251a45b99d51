"""Security headers the app sends, as the settings ask."""

from __future__ import annotations

from litestar.testing import AsyncTestClient

from agentctl.config import Settings
from server.app import create_app
from tests.support import NO_MODEL_SETTINGS


async def test_production_sends_hsts(migrated_database_url: str) -> None:
    settings = Settings(
        env="production",
        database={"url": migrated_database_url},
        auth={"jwt_secret": "p" * 48},
        server={"cors_allowed_origins": ["https://app.example"]},
        llm=NO_MODEL_SETTINGS,
    )
    async with AsyncTestClient(create_app(settings)) as client:
        response = await client.get("/health")
    assert response.headers["strict-transport-security"].startswith("max-age=")
