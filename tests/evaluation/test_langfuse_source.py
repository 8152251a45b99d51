"""The Langfuse side without a Langfuse: off without keys, and how a traced turn becomes a turn to judge."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from types import SimpleNamespace

from agentctl.config import ObservabilitySettings
from server.evaluation.sources import LangfuseScores, _turn_of


def test_no_keys_no_langfuse() -> None:
    assert LangfuseScores.from_settings(ObservabilitySettings()) is None
    assert LangfuseScores.from_settings(ObservabilitySettings(langfuse_public_key="pk")) is None


def test_a_traced_turn_is_keyed_by_its_trace() -> None:
    started = datetime(2026, 11, 1, tzinfo=UTC)
    observation = SimpleNamespace(
        trace_id="abc123",
        session_id="s-1",
        start_time=started,
        input=json.dumps("What is 2 + 2?"),  # Langfuse returns input and output as raw JSON text
        output="4.",
        metadata={"turn_id": "not checked"},
    )
    turn = _turn_of(observation)
    assert turn is not None
    assert (turn.key, turn.user_message, turn.answer, turn.created_at) == (
        "trace:abc123",
        "What is 2 + 2?",
        "4.",
        started,
    )
    assert _turn_of(SimpleNamespace(**{**vars(observation), "output": None})) is None
