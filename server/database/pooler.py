"""Whether the connections agentctl gets are real PostgreSQL sessions, as it needs them to be.

agentctl relies on session-level features: LISTEN/NOTIFY (run cancellations and token revocations reach every
worker and replica through them), advisory locks (one migration, one retention sweep at a time), and prepared
statements (asyncpg and psycopg prepare what they run). A pooler in transaction mode — PgBouncer's
``pool_mode = transaction``, the transaction poolers of managed services — hands each transaction to whichever
server connection is free, which silently breaks all three: notifications go to another client or nowhere, a lock
outlives its transaction on a connection someone else now holds, a prepared statement is missing on the next
connection. So it is refused at start, saying why, rather than failing later in ways nobody could trace. A pooler
in session mode keeps a client on one server connection, and works.
"""

from __future__ import annotations

import asyncio
import uuid

import asyncpg

from server.errors import AppError

PROBE_SECONDS = 3.0


class TransactionPoolerError(AppError):
    status = 503
    code = "transaction-pooler"
    title = "The database connection is not a PostgreSQL session"

    def __init__(self) -> None:
        super().__init__(
            "a notification sent through the database did not reach this process's listening connection: "
            "DATABASE_URL looks like a pooler in transaction mode (PgBouncer pool_mode=transaction). agentctl needs "
            "session features — LISTEN/NOTIFY for cancellations and revocations across replicas, advisory locks "
            "for migrations and retention, prepared statements — so point DATABASE_URL at PostgreSQL itself or at "
            "a pooler in session mode"
        )


async def ensure_sessions(url: str, *, connect_timeout: float, probe_seconds: float = PROBE_SECONDS) -> None:
    """Send a notification from one connection to another listening for it: through PostgreSQL (or a session
    pooler) it arrives within milliseconds; through a transaction pooler it does not arrive at all."""
    # Plain statements only (no prepared ones, which a transaction pooler would break before the probe could tell).
    listener = await asyncpg.connect(url, timeout=connect_timeout, statement_cache_size=0)
    try:
        sender = await asyncpg.connect(url, timeout=connect_timeout, statement_cache_size=0)
        try:
            channel = f"agentctl_probe_{uuid.uuid4().hex}"
            arrived = asyncio.Event()
            await listener.add_listener(channel, lambda *_: arrived.set())
            await sender.execute(f"NOTIFY {channel}")
            try:
                async with asyncio.timeout(probe_seconds):
                    await arrived.wait()
            except TimeoutError:
                raise TransactionPoolerError() from None
            await listener.remove_listener(channel, lambda *_: None)
        finally:
            await sender.close()
    finally:
        await listener.close()
