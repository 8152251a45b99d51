"""Where the turns to judge come from: the chat_turns records (the default) or Langfuse's traces, and where
scores go besides the database (Langfuse, when it is configured)."""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from loguru import logger

from agentctl.config import ObservabilitySettings
from server.chat.records import answered_turns
from server.errors import AppError
from server.evaluation.window import Window

if TYPE_CHECKING:
    from langfuse import Langfuse

# The root observation every traced turn opens (server.observability.tracing.TRACE_NAME).
_TURN_TRACE_NAME = "chat-turn"
_LANGFUSE_PAGE_SIZE = 500
_LANGFUSE_TIMEOUT_SECONDS = 20


class LangfuseUnavailableError(AppError):
    status = 503
    code = "langfuse-unavailable"
    title = "Langfuse is not available"


@dataclass(frozen=True)
class TurnToJudge:
    """One question and answer, from the turn records or from a trace."""

    turn_id: uuid.UUID | None
    trace_id: str | None
    session_id: str | None
    created_at: datetime
    user_message: str
    answer: str

    @property
    def key(self) -> str:
        """What scores of the same turn share, whichever source it came from."""
        return str(self.turn_id) if self.turn_id is not None else f"trace:{self.trace_id}"


async def turns_from_database(window: Window, *, session_id: uuid.UUID | None, limit: int | None) -> list[TurnToJudge]:
    records = await answered_turns(since=window.since, until=window.until, session_id=session_id, limit=limit)
    return [
        TurnToJudge(
            turn_id=record.id,
            trace_id=record.trace_id,
            session_id=str(record.session_id) if record.session_id else None,
            created_at=record.created_at,
            user_message=record.input,
            answer=record.output,
        )
        for record in records
    ]


class LangfuseScores:
    """Langfuse's client for an evaluation: reads turn traces, writes scores. Built only when the keys are set."""

    def __init__(self, client: Langfuse) -> None:
        self._client = client

    @classmethod
    def from_settings(cls, settings: ObservabilitySettings) -> LangfuseScores | None:
        """None without keys; a LangfuseUnavailableError when keys are set but the package is missing."""
        if not settings.tracing_enabled or settings.langfuse_public_key is None or settings.langfuse_secret_key is None:
            return None
        try:
            from langfuse import Langfuse
        except ImportError:
            raise LangfuseUnavailableError(
                "Langfuse keys are set but the langfuse package is missing: pip install 'agentctl[tracing]'"
            ) from None
        client = Langfuse(
            public_key=settings.langfuse_public_key.get_secret_value(),
            secret_key=settings.langfuse_secret_key.get_secret_value(),
            base_url=settings.langfuse_host.rstrip("/"),
            timeout=_LANGFUSE_TIMEOUT_SECONDS,
            tracing_enabled=True,
        )
        return cls(client)

    async def turns(self, window: Window, *, session_id: str | None, limit: int | None) -> list[TurnToJudge]:
        """The root observations of traced turns in the window, newest first."""
        found: list[TurnToJudge] = []
        cursor: str | None = None
        try:
            while limit is None or len(found) < limit:
                page = await self._client.async_api.observations.get_many(
                    name=_TURN_TRACE_NAME,
                    is_root_observation=True,
                    session_id=session_id,
                    from_start_time=window.since,
                    to_start_time=window.until,
                    fields="core,basic,io,metadata",
                    limit=_LANGFUSE_PAGE_SIZE,
                    cursor=cursor,
                )
                found.extend(turn for item in page.data if (turn := _turn_of(item)) is not None)
                cursor = getattr(page.meta, "cursor", None)
                if not page.data or not cursor:
                    break
        except Exception as error:  # the SDK raises its own types for HTTP, auth and network failures
            raise LangfuseUnavailableError(
                f"reading traces from Langfuse failed: {type(error).__name__}: {error}"
            ) from None
        found.sort(key=lambda turn: (turn.created_at, turn.key), reverse=True)
        return found[:limit] if limit is not None else found

    def push_score(
        self, *, trace_id: str, metric: str, quality: float, reasoning: str, metadata: dict[str, Any]
    ) -> None:
        """Queue one score on the turn's trace; the SDK sends it in the background."""
        self._client.create_score(
            name=f"eval.{metric}",
            value=quality,
            trace_id=trace_id,
            data_type="NUMERIC",
            comment=reasoning,
            metadata=metadata,
        )

    async def close(self) -> None:
        """Send the queued scores and stop the SDK's threads (in a thread: it blocks)."""
        try:
            await asyncio.to_thread(self._client.shutdown)
        except Exception as error:
            logger.warning("Langfuse did not take the last scores ({}); they are in the database.", error)


def _text(value: Any) -> str:
    """Input and output come back as raw strings: the JSON encoding of what the tracer gave (a string here)."""
    if value is None:
        return ""
    if isinstance(value, str):
        try:
            decoded = json.loads(value)
        except ValueError:
            return value
        return decoded if isinstance(decoded, str) else value
    return json.dumps(value)


def _turn_of(item: Any) -> TurnToJudge | None:
    answer, question = _text(item.output), _text(item.input)
    if not answer:
        return None
    # Keyed by trace: the turn it names may live in another deployment's database.
    return TurnToJudge(
        turn_id=None,
        trace_id=item.trace_id,
        session_id=getattr(item, "session_id", None),
        created_at=item.start_time,
        user_message=question,
        answer=answer,
    )
