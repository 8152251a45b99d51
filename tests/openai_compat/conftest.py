from __future__ import annotations

from collections.abc import Iterator

import pytest

from agentctl.simulator.process import RunningSimulator
from tests.apikeys.conftest import KeyHolder, new_key
from tests.chat.conftest import serve_with_model
from tests.support import ApiClient

AGENT = "Agent"  # the model name /v1 answers as: the agent's name (AGENTCTL_AGENT__NAME's default)


@pytest.fixture(scope="module")
def openai_api(
    tmp_path_factory: pytest.TempPathFactory, migrated_database_url: str, simulator: RunningSimulator
) -> Iterator[ApiClient]:
    server = serve_with_model(tmp_path_factory.mktemp("openai"), migrated_database_url, simulator)
    try:
        server.wait_until_healthy()
        yield ApiClient(server)
    finally:
        server.terminate()


@pytest.fixture
def holder(openai_api: ApiClient) -> KeyHolder:
    """A new user with a chat key."""
    return new_key(openai_api)


def v1_url(api: ApiClient) -> str:
    return f"{api.server.base_url}/v1"
