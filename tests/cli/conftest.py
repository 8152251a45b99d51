from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agentctl.simulator.process import RunningSimulator
from agentctl.terminal.client import Profile, TokenStore
from tests.chat.conftest import serve_with_model
from tests.cli.terminal import Terminal
from tests.support import ApiClient, clean_environment, unique_email


@pytest.fixture(scope="module")
def chat_server(
    tmp_path_factory: pytest.TempPathFactory, migrated_database_url: str, simulator: RunningSimulator
) -> Iterator[ApiClient]:
    """One server for the module; every test signs in as a user of its own, from one address."""
    server = serve_with_model(
        tmp_path_factory.mktemp("chat-cli"),
        migrated_database_url,
        simulator,
        AGENTCTL_RATELIMIT__LOGIN_PER_IP="1000/minute",
    )
    try:
        server.wait_until_healthy()
        yield ApiClient(server)
    finally:
        server.terminate()


@dataclass
class ChatUser:
    """Someone at a terminal: their own config directory (XDG_CONFIG_HOME), never the developer's ~/.config."""

    api: ApiClient
    home: Path
    email: str
    password: str = ApiClient.password

    @property
    def config_dir(self) -> Path:
        return self.home / ".config" / "agentctl"

    @property
    def token_file(self) -> Path:
        return self.config_dir / "credentials.json"

    @property
    def server_url(self) -> str:
        return self.api.server.base_url

    def env(self) -> dict[str, str]:
        return clean_environment(HOME=str(self.home), XDG_CONFIG_HOME=str(self.home / ".config"), INPUTRC="/dev/null")

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "agentctl", "chat", "--server", self.server_url, *args]

    def run(self, *args: str, stdin: str | None = None, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """`agentctl chat` without a terminal: stdin a pipe (empty unless given), stdout and stderr captured."""
        return subprocess.run(
            self.command(*args),
            input=stdin or "",
            capture_output=True,
            text=True,
            env=self.env(),
            cwd=self.home,
            timeout=timeout,
            check=False,
        )

    def terminal(self, *args: str) -> Terminal:
        return Terminal(self.home, self.command(*args), env=self.env())

    def register(self) -> dict:
        return self.api.register(self.email, self.password)

    def signed_in(self, **changes: str) -> Profile:
        """Registered on the server, with its tokens in the token store as an earlier sign-in left them."""
        created = self.register()
        profile = Profile(
            email=self.email,
            access_token=created["token"]["access_token"],
            access_expires_at=created["token"]["expires_at"],
            refresh_token=created["refresh_token"],
        )
        for name, value in changes.items():
            setattr(profile, name, value)
        TokenStore(self.config_dir).save(self.server_url, profile)
        return profile

    def stored(self) -> Profile | None:
        return TokenStore(self.config_dir).load(self.server_url)


@pytest.fixture
def user(chat_server: ApiClient, tmp_path: Path) -> ChatUser:
    return ChatUser(chat_server, tmp_path, unique_email("chat"))


@pytest.fixture
def terminals() -> Iterator[list[Terminal]]:
    """Terminals opened by a test, closed after it whatever happened."""
    opened: list[Terminal] = []
    yield opened
    for terminal in opened:
        terminal.close()
