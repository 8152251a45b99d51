"""The embedded PostgreSQL 16 + pgvector (pgserver) used when no DATABASE_URL is configured."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from loguru import logger

from agentctl.config import Settings


class EmbeddedPostgres:
    """A handle on the embedded server; the server stops when the last process holding a handle lets go."""

    def __init__(self, data_dir: Path) -> None:
        with warnings.catch_warnings():
            # platformdirs warns about a missing XDG_RUNTIME_DIR and falls back to /tmp; that is fine here.
            warnings.simplefilter("ignore")
            import pgserver

        self.data_dir = data_dir / "postgres"
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        self._server = pgserver.get_server(self.data_dir, cleanup_mode="stop")
        self.url = self._server.get_uri()
        logger.info("embedded PostgreSQL ready in {}", self.data_dir)

    def stop(self) -> None:
        """Release this process's handle; the server stops if no other process holds one."""
        self._server.cleanup()


@contextmanager
def database_url(settings: Settings) -> Iterator[str]:
    """The URL to connect to: DATABASE_URL's, or the embedded server's, started for as long as this lasts."""
    if settings.database.url is not None:
        yield settings.database.url.get_secret_value()
        return
    embedded = EmbeddedPostgres(settings.data_dir)
    try:
        yield embedded.url
    finally:
        embedded.stop()
