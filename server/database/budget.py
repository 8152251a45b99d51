"""How many PostgreSQL connections a deployment opens at most, against what the database allows.

Every worker process of every replica holds pools of its own: the request pool (asyncpg), the checkpoints' pool
(psycopg, for LangGraph), Mem0's pool (psycopg, when memory is on) and one connection listening for
notifications (cancellations, revocations). Besides them the database keeps ``superuser_reserved_connections``
for its administrators, and operators need a few for `agentctl migrate`, `eval`, `retention` and psql.
"""

from __future__ import annotations

from dataclasses import dataclass

from agentctl.config import Settings

# Connections kept for operators' commands (migrate, eval, retention, usage, psql) beside the servers.
OPERATOR_HEADROOM = 5
# PostgreSQL's defaults, used when the database is not asked.
DEFAULT_MAX_CONNECTIONS = 100
DEFAULT_SUPERUSER_RESERVED = 3


@dataclass(frozen=True)
class ConnectionBudget:
    replicas: int
    workers: int
    request_pool: int
    checkpoint_pool: int
    memory_pool: int
    listeners: int
    max_connections: int
    superuser_reserved: int
    headroom: int = OPERATOR_HEADROOM

    @property
    def per_worker(self) -> int:
        return self.request_pool + self.checkpoint_pool + self.memory_pool + self.listeners

    @property
    def servers(self) -> int:
        return self.replicas * self.workers * self.per_worker

    @property
    def needed(self) -> int:
        return self.servers + self.headroom

    @property
    def available(self) -> int:
        return self.max_connections - self.superuser_reserved

    @property
    def fits(self) -> bool:
        return self.needed <= self.available

    def largest_pool_that_fits(self) -> int:
        """The largest pool_max_size (for both the request and the checkpoint pool) with which it would fit."""
        per_process = (self.available - self.headroom) // max(1, self.replicas * self.workers)
        return max(0, (per_process - self.memory_pool - self.listeners) // 2)

    def lines(self) -> list[tuple[str, str]]:
        """The arithmetic, one (what, how many) per line."""
        return [
            ("request pool (AGENTCTL_DATABASE__POOL_MAX_SIZE)", str(self.request_pool)),
            ("checkpoint pool (the same setting)", str(self.checkpoint_pool)),
            ("memory pool (AGENTCTL_MEMORY__POOL_MAX_SIZE; 0 with memory off)", str(self.memory_pool)),
            ("notification listener", str(self.listeners)),
            ("per worker", str(self.per_worker)),
            (
                f"servers: {self.replicas} replicas x {self.workers} workers x {self.per_worker}",
                str(self.servers),
            ),
            ("operators' commands (migrate, eval, retention, psql)", f"+ {self.headroom}"),
            ("needed", str(self.needed)),
            (
                f"available: max_connections {self.max_connections} - superuser_reserved_connections "
                f"{self.superuser_reserved}",
                str(self.available),
            ),
        ]


def connection_budget(
    settings: Settings,
    *,
    replicas: int,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    superuser_reserved: int = DEFAULT_SUPERUSER_RESERVED,
) -> ConnectionBudget:
    return ConnectionBudget(
        replicas=replicas,
        workers=settings.server.workers,
        request_pool=settings.database.pool_max_size,
        checkpoint_pool=settings.database.pool_max_size,
        memory_pool=settings.memory.pool_max_size if settings.memory.enabled else 0,
        listeners=1,
        max_connections=max_connections,
        superuser_reserved=superuser_reserved,
    )
