from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.support import ApiClient, ServeProcess

JWT_SECRET = "test-signing-key-" + "k" * 40
ALLOWED_ORIGIN = "https://app.example"


def _serve(tmp_path_factory: pytest.TempPathFactory, database_url: str, **env: str) -> Iterator[ApiClient]:
    workdir = tmp_path_factory.mktemp("api")
    server = ServeProcess(
        workdir,
        "--workers",
        "2",
        env={
            "DATABASE_URL": database_url,
            "REDIS_URL": "redis://127.0.0.1:6379/15",
            "AGENTCTL_REDIS__KEY_PREFIX": f"test-{uuid.uuid4().hex[:8]}",
            "AGENTCTL_AUTH__JWT_SECRET": JWT_SECRET,
            "AGENTCTL_SERVER__TRUSTED_PROXIES": "127.0.0.1",
            "AGENTCTL_SERVER__CORS_ALLOWED_ORIGINS": ALLOWED_ORIGIN,
            "AGENTCTL_SERVER__REQUEST_MAX_BODY_BYTES": "65536",
            **env,
        },
    )
    try:
        server.wait_until_healthy()
        yield ApiClient(server)
    finally:
        server.terminate()


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, migrated_database_url: str) -> Iterator[ApiClient]:
    """A real server, two workers and Redis, with limits high enough to stay out of the way."""
    yield from _serve(
        tmp_path_factory,
        migrated_database_url,
        AGENTCTL_RATELIMIT__REGISTER_PER_IP="10000/hour",
        AGENTCTL_RATELIMIT__LOGIN_PER_IP="10000/minute",
        AGENTCTL_RATELIMIT__LOGIN_PER_EMAIL="10000/minute",
    )


@pytest.fixture(scope="module")
def limited_api(tmp_path_factory: pytest.TempPathFactory, migrated_database_url: str) -> Iterator[ApiClient]:
    """A real server, two workers and Redis, with the default login limits and a small sign-up limit."""
    yield from _serve(tmp_path_factory, migrated_database_url, AGENTCTL_RATELIMIT__REGISTER_PER_IP="5/hour")
