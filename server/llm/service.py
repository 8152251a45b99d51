"""Every model call goes through here: retries with backoff on retryable failures, a circuit breaker per
model, fallback along the role's chain, one deadline per call, and the usage and cost of what was used.

A fallback decision belongs to the one call that made it; other calls only share the breakers' view of
each model's health. When streaming, fallback is possible only until the first token has been handed to
the caller; a failure after that ends the stream with :class:`ModelStreamError`, never silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import add_ai_message_chunks
from loguru import logger

from agentctl.config import LLMSettings, ModelSpec, Role
from server.errors import AppError
from server.llm.deadline import StreamDeadline
from server.llm.registry import ModelRegistry, RegisteredModel
from server.llm.resilience import (
    BreakerState,
    Lane,
    Permit,
    StreamEndedEarlyError,
    backoff_seconds,
    counts_against_the_model,
    is_retryable,
    retry_after_seconds,
)
from server.observability.metrics import ModelMetrics
from server.outages import RateLimitedLog

T = TypeVar("T")
# Roles whose calls nobody waits for: they get the background lane (connections and circuits of their own).
BACKGROUND_ROLES: frozenset[Role] = frozenset({"memory", "judge"})


def lane_of(role: Role) -> Lane:
    return Lane.BACKGROUND if role in BACKGROUND_ROLES else Lane.FOREGROUND


@dataclass(frozen=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float = 0.0

    @classmethod
    def of(cls, message: BaseMessage, spec: ModelSpec) -> Usage:
        metadata = getattr(message, "usage_metadata", None) or {}
        input_tokens = int(metadata.get("input_tokens", 0))
        output_tokens = int(metadata.get("output_tokens", 0))
        cached = int((metadata.get("input_token_details") or {}).get("cache_read", 0) or 0)
        cached_price = (
            spec.price_cached_input_per_million
            if spec.price_cached_input_per_million is not None
            else spec.price_input_per_million
        )
        cost = (
            (input_tokens - cached) * spec.price_input_per_million
            + cached * cached_price
            + output_tokens * spec.price_output_per_million
        ) / 1_000_000
        return cls(input_tokens, output_tokens, cached, round(cost, 10))


@dataclass(frozen=True)
class Fallback:
    model: str
    reason: str


@dataclass
class CallReport:
    """What one call cost and how it went; the agent stores it with the turn."""

    role: Role
    model: str = ""
    model_id: str = ""
    fallbacks: list[Fallback] = field(default_factory=list)
    attempts: int = 0
    retries: int = 0
    usage: Usage = field(default_factory=Usage)
    latency_seconds: float = 0.0
    time_to_first_token_seconds: float | None = None


@dataclass
class Completion:
    message: AIMessage
    report: CallReport


@dataclass
class Embedded:
    vectors: list[list[float]]
    report: CallReport


@dataclass(frozen=True)
class StreamToken:
    text: str


@dataclass(frozen=True)
class StreamEnd:
    message: AIMessage
    report: CallReport


class ModelUnavailableError(AppError):
    status = 503
    code = "model-unavailable"
    title = "No model answered"


class ModelDeadlineError(AppError):
    status = 504
    code = "model-deadline"
    title = "The model call ran out of time"


class ModelStreamError(Exception):
    """The stream failed after text had reached the caller; it cannot fall back, it must end with an error."""

    def __init__(self, model: str, partial: str, cause: BaseException) -> None:
        super().__init__(f"{model} failed mid-answer: {type(cause).__name__}: {cause}")
        self.model = model
        self.partial = partial
        self.cause = cause


class LLMService:
    def __init__(
        self,
        registry: ModelRegistry,
        settings: LLMSettings,
        *,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        observe: Callable[[CallReport, str], None] | None = None,
    ) -> None:
        self.registry = registry
        self._settings = settings
        self._rng = rng or random.Random()
        self._sleep = sleep
        self._observe = observe or (lambda report, outcome: None)
        self._fallback_log = RateLimitedLog()  # an outage makes every call fall back: one line a minute per model

    async def complete(
        self,
        role: Role,
        messages: Sequence[BaseMessage],
        *,
        tools: list | None = None,
        response_format: dict[str, Any] | None = None,
        deadline_seconds: float | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> Completion:
        """One answer from the first model of the role's chain that gives one (``response_format``: OpenAI's,
        such as JSON mode, for the models that take it; ``options``: max_tokens, temperature, see _bound)."""
        report = CallReport(role=role)
        started = time.perf_counter()
        lane = lane_of(role)

        async def ask(model: RegisteredModel, remaining: float) -> AIMessage:
            runnable: Any = model.with_tools(tools, lane) if tools else model.chat_model(lane)
            if response_format is not None and model.spec.provider != "local":
                runnable = runnable.bind(response_format=response_format)
            runnable = _bound(runnable, model, options)
            async with asyncio.timeout(remaining):
                return await runnable.ainvoke(list(messages))

        with self._observed(report):
            message, model, _ = await self._resilient(role, lane, report, ask, deadline_seconds)
            self._finish(report, model, message, started)
        return Completion(message=message, report=report)

    async def stream(
        self,
        role: Role,
        messages: Sequence[BaseMessage],
        *,
        tools: list | None = None,
        deadline_seconds: float | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> AsyncIterator[StreamToken | StreamEnd]:
        """Tokens as they come, then a StreamEnd with the whole message and the report."""
        report = CallReport(role=role)
        started = time.perf_counter()
        deadline = time.monotonic() + (deadline_seconds or self._settings.call_deadline_seconds)
        lane = lane_of(role)

        async def open_stream(model: RegisteredModel, remaining: float) -> tuple[AsyncIterator, list[AIMessageChunk]]:
            # Read until the first chunk with output: until then a failure can still fall back.
            runnable: Any = model.with_tools(tools, lane) if tools else model.chat_model(lane)
            chunks = aiter(_bound(runnable, model, options).astream(list(messages)))
            opened: list[AIMessageChunk] = []
            try:
                async with asyncio.timeout(remaining):
                    async for chunk in chunks:
                        opened.append(chunk)
                        if chunk.content or chunk.tool_call_chunks:
                            break
            except BaseException:
                await asyncio.shield(_close_quietly(chunks))
                raise
            return chunks, opened

        with self._observed(report, success=False):
            (chunks, opened), model, permit = await self._resilient(
                role, lane, report, open_stream, deadline - time.monotonic(), settle_success=False
            )
        report.time_to_first_token_seconds = time.perf_counter() - started
        received: list[AIMessageChunk] = []  # merged once at the end: merging as they come costs a message each
        finished = False
        loop = asyncio.get_running_loop()
        try:
            pending = list(opened)
            # One timer for the whole answer, interrupting only the waits for the model, not the consumer's work
            # between two tokens (a timeout per chunk cost 8 µs per token).
            with StreamDeadline(loop.time() + max(0.001, deadline - time.monotonic())) as stream_deadline:
                while True:
                    if pending:
                        chunk = pending.pop(0)
                    else:
                        try:
                            chunk = await stream_deadline.wait(anext(chunks))
                        except StopAsyncIteration:
                            break
                    received.append(chunk)
                    finished = finished or bool(chunk.response_metadata.get("finish_reason"))
                    if isinstance(chunk.content, str) and chunk.content:
                        yield StreamToken(chunk.content)
            if not finished:
                raise StreamEndedEarlyError("the stream ended without a finish reason")
            permit.succeeded()
        except Exception as error:
            permit.failed()
            partial = "".join(chunk.content for chunk in received if isinstance(chunk.content, str))
            logger.warning("model {} failed mid-stream after {} characters: {}", model.name, len(partial), error)
            report.model, report.model_id = model.name, model.spec.model_id
            self._observe(report, "stream_error")
            raise ModelStreamError(model.name, partial, error) from error
        finally:
            # Whoever stopped reading (a cancelled turn, a client gone), the response is closed now and its
            # connection goes back to the pool: left to the garbage collector, it stayed in CLOSE-WAIT for good.
            permit.released()  # no verdict if neither settled it: a cancel says nothing about the model
            await asyncio.shield(_close_quietly(chunks))  # to its end, even if cancelled again meanwhile
        whole = add_ai_message_chunks(received[0], *received[1:]) if received else None
        message = AIMessage(
            content=whole.content if whole else "",
            tool_calls=whole.tool_calls if whole else [],
            usage_metadata=whole.usage_metadata if whole else None,
            response_metadata=whole.response_metadata if whole else {},
            id=whole.id if whole else None,
        )
        self._finish(report, model, message, started)
        self._observe(report, "ok")
        yield StreamEnd(message=message, report=report)

    async def embed(
        self,
        texts: list[str],
        *,
        query: bool = False,
        background: bool = False,
        deadline_seconds: float | None = None,
    ) -> Embedded:
        """Vectors of ``texts``: as search queries (``query``; e5-style models embed those differently) or as
        documents; ``background`` work keeps off the lane requests use, where the model has one."""
        report = CallReport(role="embedding")
        started = time.perf_counter()
        lane = Lane.BACKGROUND if background else Lane.FOREGROUND

        async def embed_with(model: RegisteredModel, remaining: float) -> list[list[float]]:
            embeddings = model.embedding_model(lane)
            async with asyncio.timeout(remaining):
                if query:
                    return list(await asyncio.gather(*(embeddings.aembed_query(text) for text in texts)))
                return await embeddings.aembed_documents(texts)

        with self._observed(report):
            vectors, model, _ = await self._resilient("embedding", lane, report, embed_with, deadline_seconds)
            report.model, report.model_id = model.name, model.spec.model_id
            report.latency_seconds = time.perf_counter() - started
        return Embedded(vectors=vectors, report=report)

    def _retry_after(self, role: Role, lane: Lane) -> int:
        """Seconds worth waiting before asking again: until the first open circuit of the chain lets probes through."""
        waits = [model.breakers[lane].seconds_until_half_open() for model in self.registry.chain(role)]
        return max(1, math.ceil(min(waits)))

    def ensure_available(self, role: Role) -> None:
        """Refuse at once (503 with Retry-After) when every model of the role's chain has its circuit open:
        the call could only fail, after taking whatever it holds (a session's turn, a connection)."""
        chain = self.registry.chain(role)
        breakers = [model.breakers[lane_of(role)] for model in chain]
        if all(breaker.state is BreakerState.OPEN for breaker in breakers):
            wait = self._retry_after(role, lane_of(role))
            raise ModelUnavailableError(
                f"every model of the {role} role is unavailable (circuit open); retry in {wait} s",
                headers={"Retry-After": str(wait)},
            )

    async def _resilient(
        self,
        role: Role,
        lane: Lane,
        report: CallReport,
        operation: Callable[[RegisteredModel, float], Awaitable[T]],
        deadline_seconds: float | None,
        *,
        settle_success: bool = True,
    ) -> tuple[T, RegisteredModel, Permit]:
        """The operation's result from the first model of the chain that gives one, with its model and the
        permit of the attempt that succeeded (settled already, unless ``settle_success`` is False: a stream
        settles it when it ends)."""
        settings = self._settings
        deadline = time.monotonic() + (deadline_seconds or settings.call_deadline_seconds)
        for model in self.registry.chain(role):
            breaker = model.breakers[lane]
            if lane is Lane.BACKGROUND and model.breaker.state is not BreakerState.CLOSED:
                # Background work is shed first: a model chat is struggling with gets none of it.
                report.fallbacks.append(Fallback(model.name, "shed: the model's chat circuit is not closed"))
                continue
            reason = ""
            for attempt in range(settings.max_attempts):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ModelDeadlineError(f"no answer for the {role} role within the deadline", extra=_extra(report))
                permit = breaker.try_acquire()
                if permit is None:
                    reason = reason or "circuit open"
                    break
                report.attempts += 1
                try:
                    result = await operation(model, remaining)
                except asyncio.CancelledError:
                    permit.released()
                    raise
                except Exception as error:
                    reason = _describe(error)
                    cut_short = isinstance(error, TimeoutError) and remaining < model.spec.timeout_seconds
                    if counts_against_the_model(error) and not cut_short:
                        permit.failed()
                    else:
                        permit.released()  # the request was bad, or our own deadline or queue cut it short
                    logger.debug("model {} attempt {} failed: {}", model.name, attempt + 1, reason)
                    if not is_retryable(error) or breaker.state is not BreakerState.CLOSED:
                        break
                    wait = max(
                        backoff_seconds(
                            attempt,
                            initial=settings.backoff_initial_seconds,
                            maximum=settings.backoff_max_seconds,
                            rng=self._rng,
                        ),
                        retry_after_seconds(error) or 0.0,
                    )
                    if time.monotonic() + wait >= deadline:
                        reason += f"; its retry wait ({wait:.1f} s) would pass the deadline"
                        break
                    report.retries += 1
                    await self._sleep(wait)
                else:
                    if settle_success:
                        permit.succeeded()
                    return result, model, permit
            report.fallbacks.append(Fallback(model.name, reason))
            self._fallback_log.warning(f"{role}:{model.name}", "{} call leaves model {}: {}", role, model.name, reason)
        raise ModelUnavailableError(
            f"no model of the {role} role answered ({'; '.join(f'{f.model}: {f.reason}' for f in report.fallbacks)})",
            extra=_extra(report),
            headers={"Retry-After": str(self._retry_after(role, lane))},
        )

    @contextlib.contextmanager
    def _observed(self, report: CallReport, *, success: bool = True) -> Iterator[None]:
        """Report the call's outcome to the observer (metrics): ok, or why it failed."""
        try:
            yield
        except ModelDeadlineError:
            self._observe(report, "deadline")
            raise
        except ModelUnavailableError:
            self._observe(report, "unavailable")
            raise
        if success:
            self._observe(report, "ok")

    def _finish(self, report: CallReport, model: RegisteredModel, message: BaseMessage, started: float) -> None:
        report.model, report.model_id = model.name, model.spec.model_id
        report.usage = Usage.of(message, model.spec)
        report.latency_seconds = time.perf_counter() - started


def _bound(runnable: Any, model: RegisteredModel, options: Mapping[str, Any] | None) -> Any:
    """The call with a request's max_tokens and temperature, within the model's own bounds: never more output
    tokens than the model is configured for."""
    if not options:
        return runnable
    bound = dict(options)
    ceiling = model.spec.max_output_tokens
    if ceiling is not None and bound.get("max_tokens") is not None:
        bound["max_tokens"] = min(int(bound["max_tokens"]), ceiling)
    return runnable.bind(**{key: value for key, value in bound.items() if value is not None})


async def _close_quietly(stream: AsyncIterator[Any]) -> None:
    """Close a model's response stream, whatever state it is in (finished, failed or abandoned)."""
    close = getattr(stream, "aclose", None)
    if close is not None:
        with contextlib.suppress(Exception):
            await close()


def metrics_recorder(metrics: ModelMetrics) -> Callable[[CallReport, str], None]:
    """What LLMService tells of each call (``observe``), recorded in the model metrics."""

    def record(report: CallReport, outcome: str) -> None:
        usage = report.usage
        metrics.record(
            model=report.model or "none",
            role=report.role,
            outcome=outcome,
            fallbacks=[fallback.model for fallback in report.fallbacks],
            retries=report.retries,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cached_tokens=usage.cached_tokens,
            cost_usd=usage.cost_usd,
            latency_seconds=report.latency_seconds,
            time_to_first_token_seconds=report.time_to_first_token_seconds,
        )

    return record


def _describe(error: BaseException) -> str:
    status = getattr(error, "status_code", None)
    name = type(error).__name__
    return f"{name} {status}" if status else (f"{name}: {error}" if str(error) else name)


def _extra(report: CallReport) -> dict[str, Any]:
    return {
        "attempts": report.attempts,
        "fallbacks": [{"model": f.model, "reason": f.reason} for f in report.fallbacks],
    }
