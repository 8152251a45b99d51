"""(in use, waiting) of the connection pools, for the pool gauges."""

from __future__ import annotations

from typing import Any

import asyncpg


def asyncpg_pool_usage(pool: asyncpg.Pool) -> tuple[int, int]:
    # asyncpg has no public count of waiting acquirers: they are the getters of its internal queue.
    waiting = len(getattr(getattr(pool, "_queue", None), "_getters", ()) or ())
    return pool.get_size() - pool.get_idle_size(), waiting


def psycopg_pool_usage(pool: Any) -> tuple[int, int]:
    """psycopg_pool's ConnectionPool or AsyncConnectionPool (get_stats does not reset the counters)."""
    stats = pool.get_stats()
    return stats.get("pool_size", 0) - stats.get("pool_available", 0), stats.get("requests_waiting", 0)
