"""Replay cases: one recorded (or hand-written) turn per line of a JSON Lines file, the input of `agentctl eval
replay` and the output of `agentctl eval dataset`.

A case holds what the agent needs to answer the turn again (the user's message, the conversation before it, the
user's own instructions) and what it answered then (the answer, its tool calls with their results, the model, cost
and latency). Only ``input`` is required, so a hand-written file is a line of JSON per question. Reading is strict:
a line that does not parse stops the run with the file, the line and the problem, before any model is called.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from server.errors import AppError

CASE_ID_MAX_CHARS = 200
ReplayStatus = Literal["done", "asked", "error"]


class DatasetError(AppError):
    """A dataset file that cannot be used: the operator fixes the file, so the message names it and the line."""

    status = 400
    code = "dataset-invalid"
    title = "Invalid dataset"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CaseToolCall(_Strict):
    """A tool call an assistant message asked for (in ``context``)."""

    id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    arguments: dict[str, Any] = Field(default_factory=dict)


class CaseMessage(_Strict):
    """One message of the conversation before the case's turn."""

    role: Literal["user", "assistant", "tool"]
    content: str = ""
    tool_calls: list[CaseToolCall] = Field(default_factory=list)  # assistant only
    tool_call_id: str | None = None  # tool only: the call it answers
    name: str | None = None  # tool only: the tool's name

    @model_validator(mode="after")
    def _fields_of_the_role(self) -> CaseMessage:
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only an assistant message has tool_calls")
        if (self.role == "tool") != (self.tool_call_id is not None):
            raise ValueError("a tool message, and only a tool message, has a tool_call_id")
        return self


class RecordedToolCall(_Strict):
    """A tool call the recorded turn made, with what it returned (what a `recorded` stub answers with)."""

    name: str = Field(min_length=1)
    arguments: dict[str, Any] = Field(default_factory=dict)
    result: str = ""
    status: str = "success"


class RecordedUsage(_Strict):
    input_tokens: int = Field(default=0, ge=0)
    output_tokens: int = Field(default=0, ge=0)
    cost_usd: float = Field(default=0.0, ge=0)


class ReplayCase(_Strict):
    id: str = Field(default="", max_length=CASE_ID_MAX_CHARS)  # unset: a hash of the input and context
    input: str = Field(min_length=1)
    context: list[CaseMessage] = Field(default_factory=list)
    instructions: str | None = None  # the user's own instructions (an API client's system message)
    output: str | None = None  # the recorded answer: the baseline unless the baseline is replayed too
    tool_calls: list[RecordedToolCall] = Field(default_factory=list)
    model: str | None = None
    usage: RecordedUsage | None = None
    latency_ms: float | None = Field(default=None, ge=0)
    turn_id: uuid.UUID | None = None  # the recorded turn, when the case came from one
    session_id: uuid.UUID | None = None
    created_at: datetime | None = None
    surface: str | None = None

    @model_validator(mode="after")
    def _an_id(self) -> ReplayCase:
        if not self.id:
            object.__setattr__(self, "id", str(self.turn_id) if self.turn_id else self._content_hash())
        return self

    def _content_hash(self) -> str:
        body = json.dumps(
            [self.input, self.instructions, [message.model_dump(mode="json") for message in self.context]],
            ensure_ascii=False,
            sort_keys=True,
        )
        return "case-" + hashlib.sha256(body.encode()).hexdigest()[:16]

    def as_line(self) -> str:
        return json.dumps(self.model_dump(mode="json", exclude_none=True), ensure_ascii=False)


@dataclass(frozen=True)
class ReplayedAnswer:
    """What one side answered to one case, with what it cost."""

    answer: str
    status: ReplayStatus
    error: str | None = None
    model: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = 0.0
    latency_ms: float | None = 0.0
    tool_calls: list[dict[str, Any]] = field(default_factory=list)


def read_cases(path: Path) -> list[ReplayCase]:
    """Every case of the file, in order; a DatasetError names the first line that is not a case, or a repeated id.
    Blank lines are skipped."""
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise DatasetError(f"{path}: cannot be read: {error.strerror or error}") from None
    cases: list[ReplayCase] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except UnicodeDecodeError:
            raise DatasetError(f"{path}:{number}: not UTF-8 text") from None
        except json.JSONDecodeError as error:
            raise DatasetError(f"{path}:{number}: not JSON ({error.msg}, column {error.colno})") from None
        if not isinstance(data, dict):
            raise DatasetError(f"{path}:{number}: must be a JSON object, not {type(data).__name__}")
        try:
            case = ReplayCase.model_validate(data)
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(map(str, first["loc"])) or "case"
            raise DatasetError(f"{path}:{number}: {where}: {first['msg']}") from None
        if case.id in seen:
            raise DatasetError(f"{path}:{number}: id {case.id!r} repeats line {seen[case.id]}")
        seen[case.id] = number
        cases.append(case)
    if not cases:
        raise DatasetError(f"{path}: holds no cases")
    return cases


def write_cases(path: Path, cases: Iterable[ReplayCase]) -> int:
    """The cases as JSON Lines, readable by their owner only (they are users' conversations); how many."""
    count = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".partial")
    with temporary.open("w", encoding="utf-8") as file:
        temporary.chmod(0o600)
        for case in cases:
            file.write(case.as_line() + "\n")
            count += 1
    temporary.replace(path)
    return count


def dataset_digest(cases: list[ReplayCase]) -> str:
    """What identifies a dataset's content (the same cases in the same order), for resuming a replay."""
    hasher = hashlib.sha256()
    for case in cases:
        hasher.update(case.as_line().encode())
        hasher.update(b"\n")
    return hasher.hexdigest()
