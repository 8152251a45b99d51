"""PostgreSQL NOTIFY between workers and replicas: one listening connection per worker, shared by every capability
that needs a word from the others (a turn to cancel, a revocation the shared cache missed).

The connection is re-opened whenever it is lost; subscribers are told so (``on_reconnect``), since what was said
while it was down is gone.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg
from loguru import logger

from server.tasks import running

_RECONNECT_SECONDS = 2.0


@dataclass(frozen=True)
class Subscription:
    channel: str
    on_notice: Callable[[str], None]
    on_reconnect: Callable[[], Awaitable[None]] | None = None


class DatabaseNotifications:
    def __init__(self, url: str, *, connect_timeout_seconds: float) -> None:
        self._url = url
        self._connect_timeout = connect_timeout_seconds
        self._subscriptions: list[Subscription] = []

    def subscribe(self, subscription: Subscription) -> None:
        """Before listening starts."""
        self._subscriptions.append(subscription)

    @asynccontextmanager
    async def listening(self) -> AsyncIterator[None]:
        """Listen for the subscriptions made so far, for the duration."""
        async with running(self.listen_forever()):
            yield

    async def listen_forever(self) -> None:
        """Runs for the worker's lifetime."""
        connected_before = False
        while True:
            try:
                connection = await asyncpg.connect(self._url, timeout=self._connect_timeout)
            except (OSError, TimeoutError, asyncpg.PostgresError) as error:
                logger.debug("notification listener cannot connect, retrying: {}", error)
                await asyncio.sleep(_RECONNECT_SECONDS)
                continue
            closed = asyncio.Event()
            connection.add_termination_listener(lambda _connection, closed=closed: closed.set())
            try:
                for subscription in self._subscriptions:
                    await connection.add_listener(subscription.channel, _handler(subscription.on_notice))
                if connected_before:
                    logger.info("notification listener reconnected")
                    await asyncio.gather(
                        *(sub.on_reconnect() for sub in self._subscriptions if sub.on_reconnect is not None),
                        return_exceptions=True,
                    )
                connected_before = True
                await closed.wait()
                logger.warning("notification listener lost its connection; reconnecting")
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                logger.warning("notification listener failed, reconnecting: {}", error)
                await asyncio.sleep(_RECONNECT_SECONDS)
            finally:
                await asyncio.shield(connection.close())


def _handler(on_notice: Callable[[str], None]) -> Callable[[object, int, str, str], None]:
    def handle(_connection: object, _pid: int, _channel: str, payload: str) -> None:
        on_notice(payload)

    return handle
