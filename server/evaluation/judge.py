"""The judge: one model call per (turn, metric) through the `judge` role, its answer validated by a schema.

Transport failures (timeouts, 5xx, open circuits) are retried and fall back along the role's chain in the model
layer. An answer that arrives but does not fit ``{score: 0..1, reasoning}`` is asked again here, up to
``attempts`` times, then becomes a judge failure: an unusable answer is never turned into a score.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from langchain_core.messages import HumanMessage, SystemMessage
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


class Judge:
    def __init__(self, llm: LLMService, *, attempts: int, max_chars: int) -> None:
        self._llm = llm
        self._attempts = attempts
        self._max_chars = max_chars

    async def judge(self, metric: EvalMetric, *, user_message: str, answer: str) -> Verdict:
        """The judge's verdict on one answer for one metric; never raises for a model failure."""
        messages = [
            SystemMessage(metric.instructions + _OUTPUT_CONTRACT),
            HumanMessage(
                f"Metric: {metric.name}\n\n"
                f"<user_message>\n{self._clip(user_message)}\n</user_message>\n\n"
                f"<answer>\n{self._clip(answer)}\n</answer>"
            ),
        ]
        started = time.perf_counter()
        model: str | None = None
        problem = ""
        for _ in range(self._attempts):
            try:
                completion = await self._llm.complete("judge", messages, response_format=RESPONSE_FORMAT)
            except (ModelUnavailableError, ModelDeadlineError) as error:
                return Verdict(None, "", f"judge unavailable: {error.detail}", model, _since(started))
            model = completion.report.model_id or completion.report.model
            try:
                judgement = parse_judgement(completion.message.text)
            except ValueError as error:
                problem = str(error)
                continue
            return Verdict(judgement.score, judgement.reasoning, None, model, _since(started))
        return Verdict(
            None, "", f"invalid judge answer after {self._attempts} attempt(s): {problem}", model, _since(started)
        )

    def _clip(self, text: str) -> str:
        if len(text) <= self._max_chars:
            return text
        return text[: self._max_chars] + f"\n[... {len(text) - self._max_chars} more characters not shown]"


def parse_judgement(text: str) -> Judgement:
    """The judge's answer as a Judgement (a JSON code fence around it is tolerated); ValueError says why not."""
    stripped = text.strip()
    fenced = _FENCED.match(stripped)
    if fenced is not None:
        stripped = fenced.group(1)
    try:
        return Judgement.model_validate_json(stripped)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(map(str, first["loc"])) or "answer"
        return_text = stripped if len(stripped) <= 80 else stripped[:77] + "..."
        raise ValueError(f"{where}: {first['msg']} (got {return_text!r})") from None


def _since(started: float) -> float:
    return (time.perf_counter() - started) * 1000
