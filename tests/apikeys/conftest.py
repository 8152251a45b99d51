from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from agentctl.simulator.process import RunningSimulator
from tests.chat.conftest import running_replicas
from tests.support import ApiClient


@dataclass
class KeyHolder:
    """A user (their access token) and one API key of theirs."""

    api: ApiClient
    user_token: str
    key: str
    key_id: str

    def with_key(self, method: str, path: str, **kwargs: object) -> httpx.Response:
        """A native API call (``path`` under /api/v1) with the key."""
        return self.api.request(method, path, token=self.key, **kwargs)

    def openai(self, method: str, path: str, **kwargs: object) -> httpx.Response:
        """An OpenAI-compatible call (``path`` under /v1) with the key."""
        headers = {"Authorization": f"Bearer {self.key}", **dict(kwargs.pop("headers", {}) or {})}  # type: ignore[call-overload]
        url = f"{self.api.server.base_url}/v1{path}"
        return httpx.request(method, url, headers=headers, timeout=30, **kwargs)  # type: ignore[arg-type]


def new_key(api: ApiClient, user_token: str | None = None, **body: object) -> KeyHolder:
    """A fresh user (or the user of ``user_token``) with a new key: ``body`` as POST /auth/api-keys takes it."""
    user_token = user_token or api.new_user()[1]
    created = api.request("POST", "/auth/api-keys", token=user_token, json={"name": "test key", **body})
    assert created.status_code == 201, created.text
    return KeyHolder(api, user_token, created.json()["key"], created.json()["id"])


@pytest.fixture(scope="module")
def replicas(
    tmp_path_factory: pytest.TempPathFactory, migrated_database_url: str, simulator: RunningSimulator
) -> Iterator[tuple[ApiClient, ApiClient]]:
    """Two `agentctl serve` processes sharing one PostgreSQL: two replicas."""
    with running_replicas(tmp_path_factory, migrated_database_url, simulator, "replica") as replicas:
        yield replicas
