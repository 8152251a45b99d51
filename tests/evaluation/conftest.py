"""The evaluation tests: a real PostgreSQL (the session's migrated database), the simulator as the judge, and
`agentctl eval` through Typer's CliRunner. Each test puts its turns in a time window of its own, long ago, so
tests sharing the database never see each other's turns."""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from langchain_core.messages import BaseMessage
from langgraph.checkpoint.base import empty_checkpoint
from typer.testing import CliRunner, Result

from agentctl.cli import app
from agentctl.simulator.process import RunningSimulator
from server.evaluation.dataset import checkpoint_reader
from tests.support import fetch_rows

_WINDOWS = itertools.count()


def judge_says(score: float, reasoning: str = "scripted") -> str:
    """A judge answer as the simulator should send it."""
    return json.dumps({"score": score, "reasoning": reasoning})


@dataclass
class EvalWorld:
    """One test's corner of the database and of time, and the CLI pointed at them."""

    database_url: str
    simulator: RunningSimulator
    data_dir: Path
    since: datetime
    session_id: uuid.UUID | None = None

    @property
    def until(self) -> datetime:
        return self.since + timedelta(hours=1)

    def window_args(self) -> list[str]:
        return ["--since", self.since.isoformat(), "--until", self.until.isoformat()]

    def judge(self, rules: list[dict], *, ttft_ms: float = 0.0) -> None:
        """Script the simulated judge: rules match a substring of the judge's user message."""
        self.simulator.configure({"script": rules, "ttft_ms": ttft_ms})

    def add_turns(self, answers: list[tuple[str, str]]) -> list[uuid.UUID]:
        """(user message, answer) turns of a new user's session, a second apart from the window's start."""
        return asyncio.run(self.add_turns_async(answers))

    async def add_turns_async(self, answers: list[tuple[str, str]]) -> list[uuid.UUID]:
        connection = await asyncpg.connect(self.database_url)
        try:
            user_id, session_id = uuid.uuid4(), uuid.uuid4()
            await connection.execute(
                "INSERT INTO users (id, email, password_hash, created_at) VALUES ($1, $2, 'x', now())",
                user_id,
                f"{user_id.hex}@example.com",
            )
            await connection.execute(
                "INSERT INTO chat_sessions (id, owner, name, created_at, updated_at) VALUES ($1, $2, '', now(), now())",
                session_id,
                user_id,
            )
            self.session_id = session_id
            ids = [uuid.uuid4() for _ in answers]
            await connection.executemany(
                "INSERT INTO chat_turns (id, session, owner, input, output, status, created_at, tool_calls, fallbacks)"
                " VALUES ($1, $2, $3, $4, $5, 'done', $6, '[]', '[]')",
                [
                    (turn_id, session_id, user_id, question, answer, self.since + timedelta(seconds=index))
                    for index, (turn_id, (question, answer)) in enumerate(zip(ids, answers, strict=True))
                ],
            )
            return ids
        finally:
            await connection.close()

    def put_checkpoint(self, messages: list[BaseMessage]) -> str:
        """A checkpoint of the last session's conversation holding ``messages``, written by LangGraph's saver as the
        agent writes one; its id (what a turn's start_checkpoint or checkpoint_id names)."""
        return asyncio.run(self.put_checkpoint_async(messages))

    async def put_checkpoint_async(self, messages: list[BaseMessage]) -> str:
        async with checkpoint_reader(self.database_url) as saver:
            checkpoint = empty_checkpoint()
            versions: dict[str, str | int | float] = {"messages": saver.get_next_version(None, None)}
            checkpoint["channel_values"] = {"messages": messages}
            checkpoint["channel_versions"] = versions
            config = await saver.aput(
                {"configurable": {"thread_id": str(self.session_id), "checkpoint_ns": ""}},
                checkpoint,
                {"source": "loop", "step": 1, "parents": {}},
                versions,
            )
        return str(config["configurable"]["checkpoint_id"])

    def rows(self, query: str, *args: object) -> list[asyncpg.Record]:
        return fetch_rows(self.database_url, query, *args)

    def eval(self, *args: str, env: dict[str, str] | None = None) -> Result:
        """`agentctl eval` as an operator runs it, against this world's database and judge."""
        return CliRunner().invoke(
            app,
            ["--data-dir", str(self.data_dir), "eval", *args],
            env={
                "DATABASE_URL": self.database_url,
                "AGENTCTL_LLM__BASE_URL": self.simulator.base_url,
                "AGENTCTL_LLM__MODEL": "judge-model",
                "OPENAI_API_KEY": "sim",
                "AGENTCTL_LLM__MAX_ATTEMPTS": "1",
                "AGENTCTL_OBSERVABILITY__LOG_LEVEL": "WARNING",
                **(env or {}),
            },
        )


@pytest.fixture
def world(migrated_database_url: str, simulator: RunningSimulator, tmp_path: Path, workdir: Path) -> EvalWorld:
    """A fresh hour, years ago, that only this test writes turns into."""
    since = datetime(2001, 1, 1, tzinfo=UTC) + timedelta(days=next(_WINDOWS), minutes=uuid.uuid4().int % 1000)
    simulator.configure({})
    return EvalWorld(migrated_database_url, simulator, tmp_path / "data", since)
