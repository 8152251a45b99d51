"""The judge: one model call per (turn, metric) through the `judge` role, its answer validated by a schema.

Transport failures (timeouts, 5xx, open circuits) are retried and fall back along the role's chain in the model
layer. An answer that arrives but does not fit ``{score: 0..1, reasoning}`` is asked again here, up to
``attempts`` times, then becomes a judge failure: an unusable answer is never turned into a score.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from server.evaluation.definitions import EvalMetric
from server.llm.service import LLMService, ModelDeadlineError, ModelUnavailableError

_FENCED = re.compile(r"\A```(?:json)?\s*(.*?)\s*```\Z", re.S)
_OUTPUT_CONTRACT = (
    "\n\n## Your answer\nReply with one JSON object and nothing else: "
    '{"score": <a number from 0 to 1 on the scale above>, "reasoning": "<one or two sentences>"}'
)


class Judgement(BaseModel):
    model_config = ConfigDict(extra="forbid")

    score: float = Field(ge=0, le=1, allow_inf_nan=False)
    reasoning: str


# Range checks stay with pydantic: strict structured-output modes of some providers reject minimum/maximum.
RESPONSE_FORMAT: dict[str, Any] = {
    "type": "json_schema",
    "json_schema": {
        "name": "judgement",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {"score": {"type": "number"}, "reasoning": {"type": "string"}},
            "required": ["score", "reasoning"],
            "additionalProperties": False,
        },
    },
}


@dataclass(frozen=True)
class Verdict:
    """A judgement (score set) or a judge failure (error set), with the model that gave it."""

    score: float | None
    reasoning: str
    error: str | None
    judge_model: str | None
    latency_ms: float


class Pairwise(BaseModel):
    model_config = ConfigDict(extra="forbid")

    winner: Literal["A", "B", "tie"]
    reasoning: str


PAIRWISE_RESPONSE_FORMAT: dict[str, Any] = {
    "type": "json_schema",
    "json_schema": {
        "name": "preference",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {"winner": {"type": "string", "enum": ["A", "B", "tie"]}, "reasoning": {"type": "string"}},
            "required": ["winner", "reasoning"],
            "additionalProperties": False,
        },
    },
}
_PAIRWISE_CONTRACT = (
    "\n\n## Your answer\nReply with one JSON object and nothing else: "
    '{"winner": "A" or "B" or "tie", "reasoning": "<one or two sentences>"}'
)


@dataclass(frozen=True)
class PairwiseVerdict:
    """Which of two answers the judge prefers (winner set), or a judge failure (error set)."""

    winner: Literal["A", "B", "tie"] | None
    reasoning: str
    error: str | None
    judge_model: str | None
    latency_ms: float


ParsedT = TypeVar("ParsedT", bound=BaseModel)


class Judge:
    def __init__(self, llm: LLMService, *, attempts: int, max_chars: int) -> None:
        self._llm = llm
        self._attempts = attempts
        self._max_chars = max_chars

    async def judge(self, metric: EvalMetric, *, user_message: str, answer: str, context: str = "") -> Verdict:
        """The judge's verdict on one answer for one metric; never raises for a model failure. ``context``: the
        conversation before the message, when the answer is judged as a reply to it (a replay)."""
        messages = [
            SystemMessage(metric.instructions + _OUTPUT_CONTRACT),
            HumanMessage(
                f"Metric: {metric.name}\n\n{self._context(context)}"
                f"<user_message>\n{self._clip(user_message)}\n</user_message>\n\n"
                f"<answer>\n{self._clip(answer)}\n</answer>"
            ),
        ]
        judgement, model, error, latency_ms = await self._ask(messages, RESPONSE_FORMAT, Judgement)
        if judgement is None:
            return Verdict(None, "", error, model, latency_ms)
        return Verdict(judgement.score, judgement.reasoning, None, model, latency_ms)

    async def compare(
        self, instructions: str, *, user_message: str, context: str, answer_a: str, answer_b: str
    ) -> PairwiseVerdict:
        """Which of two answers to the same message is better, by the pairwise prompt ``instructions``."""
        messages = [
            SystemMessage(instructions + _PAIRWISE_CONTRACT),
            HumanMessage(
                f"{self._context(context)}<user_message>\n{self._clip(user_message)}\n</user_message>\n\n"
                f"<answer_a>\n{self._clip(answer_a)}\n</answer_a>\n\n"
                f"<answer_b>\n{self._clip(answer_b)}\n</answer_b>"
            ),
        ]
        preference, model, error, latency_ms = await self._ask(messages, PAIRWISE_RESPONSE_FORMAT, Pairwise)
        if preference is None:
            return PairwiseVerdict(None, "", error, model, latency_ms)
        return PairwiseVerdict(preference.winner, preference.reasoning, None, model, latency_ms)

    async def _ask(
        self, messages: list[BaseMessage], response_format: dict[str, Any], shape: type[ParsedT]
    ) -> tuple[ParsedT | None, str | None, str | None, float]:
        """The judge's answer in ``shape``, asked again up to ``attempts`` times while it does not fit; or why not.
        Returns (answer, model, error, latency in ms)."""
        started = time.perf_counter()
        model: str | None = None
        problem = ""
        for _ in range(self._attempts):
            try:
                completion = await self._llm.complete("judge", messages, response_format=response_format)
            except (ModelUnavailableError, ModelDeadlineError) as error:
                return None, model, f"judge unavailable: {error.detail}", _since(started)
            model = completion.report.model_id or completion.report.model
            try:
                return parse_answer(completion.message.text, shape), model, None, _since(started)
            except ValueError as error:
                problem = str(error)
        return None, model, f"invalid judge answer after {self._attempts} attempt(s): {problem}", _since(started)

    def _clip(self, text: str) -> str:
        if len(text) <= self._max_chars:
            return text
        return text[: self._max_chars] + f"\n[... {len(text) - self._max_chars} more characters not shown]"

    def _context(self, context: str) -> str:
        """The conversation before the message, its end kept when it is too long (what the message follows)."""
        if not context:
            return ""
        if len(context) > self._max_chars:
            context = (
                f"[... {len(context) - self._max_chars} earlier characters not shown]\n" + context[-self._max_chars :]
            )
        return f"<conversation_before>\n{context}\n</conversation_before>\n\n"


def parse_judgement(text: str) -> Judgement:
    """The judge's answer as a Judgement (a JSON code fence around it is tolerated); ValueError says why not."""
    return parse_answer(text, Judgement)


def parse_answer(text: str, shape: type[ParsedT]) -> ParsedT:
    """The judge's answer in ``shape`` (a JSON code fence around it is tolerated); ValueError says why not."""
    stripped = text.strip()
    fenced = _FENCED.match(stripped)
    if fenced is not None:
        stripped = fenced.group(1)
    try:
        return shape.model_validate_json(stripped)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(map(str, first["loc"])) or "answer"
        return_text = stripped if len(stripped) <= 80 else stripped[:77] + "..."
        raise ValueError(f"{where}: {first['msg']} (got {return_text!r})") from None


def _since(started: float) -> float:
    return (time.perf_counter() - started) * 1000
