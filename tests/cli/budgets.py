"""A user's budget set as an operator sets it, in the users table (`agentctl users set-budget` does the same)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import uuid

import asyncpg


def set_budget(database_url: str, user_id: str, **columns: float | None) -> None:
    """``daily_tokens=1000`` sets users.budget_daily_tokens (None: unlimited). On a thread of its own, with an event
    loop of its own: callers may be running one already (Playwright's sync API does)."""

    async def update() -> None:
        connection = await asyncpg.connect(database_url)
        try:
            for name, value in columns.items():
                update = f"UPDATE users SET budget_{name} = $1 WHERE id = $2"
                await connection.execute(update, value, uuid.UUID(user_id))
        finally:
            await connection.close()

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, update()).result()
