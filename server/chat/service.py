"""Turns: one at a time per session (across workers), run as a task the caller can abandon or cancel,
streamed as typed events, recorded when they end."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal, cast

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Command
from loguru import logger

from agentctl.config import AgentSettings
from server.agent.turn import TurnRecorder
from server.chat.locks import SessionBusyError, TurnLocks, turn_lock_key
from server.chat.tables import ChatTurn
from server.database.engine import Database
from server.database.notifications import Subscription
from server.errors import AppError, ConflictError, DatabaseUnavailableError, is_database_unavailable
from server.llm.service import LLMService, ModelStreamError
from server.memory.service import MemoryService, RememberJob
from server.observability.metrics import ChatMetrics
from server.observability.tracing import TurnTrace, TurnTracer

EventKind = Literal["memory", "token", "tool", "interrupt", "usage", "error", "done", "heartbeat"]
_CANCEL_CHANNEL = "agentctl_cancel_turn"
# Error types of error events and turn records, besides the codes of AppErrors.
_MODEL_STREAM_FAILED = "model-stream-failed"
_INTERNAL_ERROR = "internal-error"
# How long a new message waits for a cancelled turn of its session to finish recording itself.
_CANCELLED_TURN_WAIT_SECONDS = 5.0


class TurnInProgressError(ConflictError):
    code = "turn-in-progress"

    def __init__(self) -> None:
        super().__init__("this session is already answering a message; wait for it or cancel it")


@dataclass(frozen=True)
class TurnEvent:
    kind: EventKind
    data: dict[str, Any]
    cause: BaseException | None = None  # an error event's exception, for a caller that answers with a status


class Turn:
    """A running turn, seen from its caller: its events, until the turn ends or the caller stops listening."""

    def __init__(self, task: asyncio.Task[None], events: asyncio.Queue[TurnEvent | None]) -> None:
        self._task = task
        self._events = events

    async def events(self) -> AsyncIterator[TurnEvent]:
        """The turn's events, one by one, until it ends (or the caller stops reading, which cancels it)."""
        try:
            async with contextlib.aclosing(self.event_batches()) as batches:
                async for batch in batches:
                    for event in batch:
                        yield event
        finally:
            await self.settled()

    async def event_batches(self, heartbeat_seconds: float | None = None) -> AsyncGenerator[list[TurnEvent]]:
        """The turn's events in lists of those that were waiting together, so that a stream can send each list
        in one write (a fast model's tokens arrive in bursts); with ``heartbeat_seconds``, a heartbeat event that
        often too, for streams that must not look idle to proxies. A timer puts it in the queue: a per-event
        timeout would cost a task and a wait for every token."""
        ended = False
        beat = None if heartbeat_seconds is None else _Heartbeat(self._events, heartbeat_seconds)
        queue = self._events
        try:
            while not ended:
                waiting: list[TurnEvent | None] = [await queue.get()]
                while not queue.empty():
                    waiting.append(queue.get_nowait())
                if None in waiting:  # the turn's end: nothing after it counts
                    ended = True
                    waiting = waiting[: waiting.index(None)]
                if waiting:
                    yield cast(list[TurnEvent], waiting)  # no None left in it
        finally:
            if beat is not None:
                beat.cancel()
            if not ended and not self._task.cancelling():
                self._task.cancel()  # the caller left: stop the turn, keep its partial answer

    async def settled(self) -> None:
        """Wait until the turn has recorded itself and released its session (it may be keeping a partial answer).

        Waits for the task without awaiting it: a waiter that is cancelled (a server answering a client that left
        cancels it again and again) would pass each cancellation on to an awaited task, cutting short the turn's
        own cleanup (its record, its partial answer, its model connection)."""
        await asyncio.wait([self._task])


class _Heartbeat:
    """Puts a heartbeat event into a turn's queue every ``seconds`` until cancelled."""

    def __init__(self, events: asyncio.Queue[TurnEvent | None], seconds: float) -> None:
        self._events = events
        self._seconds = seconds
        self._handle = asyncio.get_running_loop().call_later(seconds, self._beat)

    def _beat(self) -> None:
        self._events.put_nowait(_HEARTBEAT)
        self._handle = asyncio.get_running_loop().call_later(self._seconds, self._beat)

    def cancel(self) -> None:
        self._handle.cancel()


_HEARTBEAT = TurnEvent("heartbeat", {})


@dataclass
class _RunningTurn:
    task: asyncio.Task[None]
    events: asyncio.Queue[TurnEvent | None]


@dataclass(frozen=True)
class TurnContext:
    """What every step of one turn needs to know: who asked what, where its events go, what it records."""

    turn_id: uuid.UUID
    owner_id: uuid.UUID
    session_id: uuid.UUID
    text: str
    recorder: TurnRecorder
    events: asyncio.Queue[TurnEvent | None]
    trace: TurnTrace = field(default_factory=TurnTrace)

    @property
    def question(self) -> HumanMessage:
        """The user's message as the history keeps it; its id is the turn's, so a cancelled turn can tell whether
        it reached the checkpoint."""
        return HumanMessage(self.text, id=str(self.turn_id))


class ChatService:
    def __init__(
        self,
        *,
        agent: CompiledStateGraph,
        llm: LLMService,
        database: Database,
        settings: AgentSettings,
        memory: MemoryService | None = None,
        metrics: ChatMetrics | None = None,
        tracer: TurnTracer | None = None,
    ) -> None:
        self._agent = agent
        self._llm = llm
        self._database = database
        self._settings = settings
        self._memory = memory
        self._metrics = metrics
        self._tracer = tracer
        self._running: dict[uuid.UUID, _RunningTurn] = {}

    async def start_turn(
        self,
        *,
        owner_id: uuid.UUID,
        session_id: uuid.UUID,
        text: str,
        user_name: str | None = None,
        streaming: bool = True,
    ) -> Turn:
        """Take the session's turn (TurnInProgressError if another is running) and start it.

        The turn runs in its own task and releases the session itself when it ends; whoever watches its
        events can stop watching at any time, which cancels it and keeps what was said so far, marked as
        interrupted. With every chat model's circuit open, it is refused at once (503 with Retry-After) instead."""
        self._llm.ensure_available("chat")
        running = self._running.get(session_id)
        if running is not None and running.task.cancelling():
            # A cancelled turn of this session still keeping its partial answer: the new message waits for it.
            await asyncio.wait([running.task], timeout=_CANCELLED_TURN_WAIT_SECONDS)
        try:
            await self._locks.take(session_id)
        except SessionBusyError:
            raise TurnInProgressError() from None
        events: asyncio.Queue[TurnEvent | None] = asyncio.Queue()
        recorder = TurnRecorder(user_name=user_name, streaming=streaming)
        turn = TurnContext(uuid.uuid4(), owner_id, session_id, text, recorder, events)
        task = asyncio.create_task(self._run_holding(turn), name=f"turn-{session_id}")
        self._running[session_id] = _RunningTurn(task=task, events=events)
        return Turn(task, events)

    async def _run_holding(self, turn: TurnContext) -> None:
        # Opened and finished in this task: the trace's root is the task's current span meanwhile.
        if self._tracer is not None:
            trace = self._tracer.start_turn(
                user_id=turn.owner_id, session_id=turn.session_id, turn_id=turn.turn_id, input_text=turn.text
            )
            turn = dataclasses.replace(turn, trace=trace)
        try:
            await self._run(turn)
        finally:
            # Normally finished by _record with the turn's outcome; this only ends a trace _record never reached.
            turn.trace.finish(output=turn.recorder.partial, status="error", error_type=_INTERNAL_ERROR)
            if self._memory is not None:  # what the user said stands, however the turn ended
                self._memory.remember(RememberJob(turn.owner_id, turn.session_id, turn.turn_id, turn.text))
            running = self._running.get(turn.session_id)
            if running is not None and running.events is turn.events:
                del self._running[turn.session_id]
            await self._locks.release(turn.session_id)

    async def cancel(self, session_id: uuid.UUID) -> bool:
        """Stop the session's running turn, in whichever worker or replica runs it; True if one was running."""
        if self._cancel_here(session_id):
            return True
        async with self._database.pool.acquire() as connection:
            key = turn_lock_key(session_id)
            if await connection.fetchval("SELECT pg_try_advisory_lock($1)", *key):
                await connection.execute("SELECT pg_advisory_unlock($1)", *key)
                return False  # nobody holds the turn lock: no turn is running anywhere
            await connection.execute("SELECT pg_notify($1, $2)", _CANCEL_CHANNEL, str(session_id))
        return True

    def cancellations(self) -> Subscription:
        """What this worker listens for: cancellations asked of other workers and replicas."""
        return Subscription(_CANCEL_CHANNEL, self._on_cancel_notice)

    def _on_cancel_notice(self, payload: str) -> None:
        try:
            self._cancel_here(uuid.UUID(payload))
        except ValueError:
            logger.warning("ignored a malformed cancellation notice")

    def _cancel_here(self, session_id: uuid.UUID) -> bool:
        running = self._running.get(session_id)
        if running is None or running.task.done():
            return False
        # Once: a second cancellation would reach the turn mid-cleanup, where the libraries close the model's
        # response without shielding it, and leave its connection taken.
        if not running.task.cancelling():
            running.task.cancel()
        return True

    async def _run(self, turn: TurnContext) -> None:
        recorder, events = turn.recorder, turn.events
        config: RunnableConfig = {
            "configurable": {"thread_id": str(turn.session_id), "turn": recorder},
            "recursion_limit": 2 * self._settings.max_steps + 4,
            "callbacks": turn.trace.callbacks,  # Langfuse's handler when tracing, else none
        }
        status, error_type = "ok", None
        resuming = False
        try:
            if self._memory is None:
                state = await self._agent.aget_state(config)
            else:  # independent reads, side by side; recall keeps to its own time budget
                state, recorder.memories = await asyncio.gather(
                    self._agent.aget_state(config), self._memory.recall(turn.owner_id, turn.text)
                )
            if recorder.memories:  # the user sees what the agent was reminded of, before its answer
                await events.put(TurnEvent("memory", {"content": "", "done": False, "memories": recorder.memories}))
            resuming = bool(state.interrupts)
            graph_input: Command[Any] | dict[str, Any] = (
                Command(resume=turn.text) if resuming else {"messages": [turn.question]}
            )
            recorder.emit = partial(_put_event, events)
            async for chunk in self._agent.astream(graph_input, config, stream_mode="updates"):
                if "__interrupt__" in chunk:
                    asked = chunk["__interrupt__"][0].value
                    status = "awaiting_human"
                    question = asked.get("question") if isinstance(asked, dict) else str(asked)
                    await events.put(TurnEvent("interrupt", {"content": "", "question": question, "done": False}))
        except asyncio.CancelledError:
            # The cleanup runs in a task of its own: whoever cancelled this turn may cancel it again (and again),
            # and the partial answer and the record must be written all the same.
            cleanup = asyncio.ensure_future(self._end_cancelled(turn, config, asks_anew=not resuming))
            try:
                await asyncio.shield(cleanup)
            finally:
                cancelled = {"error": {"type": "cancelled", "detail": "the turn was cancelled"}, "done": True}
                events.put_nowait(TurnEvent("error", cancelled))
                events.put_nowait(None)
            raise
        except (ModelStreamError, AppError) as error:
            # Model failures, an over-long context: the user learns what happened, and the turn is recorded.
            status = "error"
            error_type = error.code if isinstance(error, AppError) else _MODEL_STREAM_FAILED
            await self._keep_partial_answer(turn, config, status, question_first=not resuming)
            detail = error.detail if isinstance(error, AppError) else str(error)
            await events.put(
                TurnEvent("error", {"error": {"type": error_type, "detail": detail}, "done": True}, cause=error)
            )
        except Exception as error:
            status = "error"
            cause: AppError | None = None
            if is_database_unavailable(error):
                self._database.suspect_outage()
                cause = DatabaseUnavailableError()
                error_type, detail = cause.code, cause.detail
                logger.warning("turn {} failed: the database is unavailable ({})", turn.turn_id, type(error).__name__)
            else:
                logger.opt(exception=error).error("turn {} failed", turn.turn_id)
                error_type, detail = _INTERNAL_ERROR, "the turn failed"
            failure = {"error": {"type": error_type, "detail": detail}, "done": True}
            await events.put(TurnEvent("error", failure, cause=cause))
        try:
            record = await self._record(turn, status, error_type)
            if status != "error":
                await events.put(TurnEvent("usage", {"content": "", "done": False, "usage": _usage_of(record)}))
                await events.put(TurnEvent("done", {"content": "", "done": True, "message_id": str(turn.turn_id)}))
        except Exception as error:
            # The answer was given (or the failure told); its record is what is missing.
            logger.warning("turn {} could not be recorded: {}: {}", turn.turn_id, type(error).__name__, error)
            if status != "error":
                lost = DatabaseUnavailableError("the answer could not be saved; the database is unavailable")
                failure = {"error": {"type": lost.code, "detail": lost.detail}, "done": True}
                await events.put(TurnEvent("error", failure, cause=lost))
        finally:
            await events.put(None)

    async def _end_cancelled(self, turn: TurnContext, config: RunnableConfig, *, asks_anew: bool) -> None:
        """A cancelled turn (a cancel, or a client gone) keeps what it said and is recorded as interrupted."""
        try:
            await self._keep_partial_answer(turn, config, "interrupted", question_first=asks_anew)
            await self._record(turn, "interrupted", "cancelled")
        except Exception as error:
            logger.warning("cancelled turn {} not fully recorded: {}: {}", turn.turn_id, type(error).__name__, error)

    async def _keep_partial_answer(
        self, turn: TurnContext, config: RunnableConfig, status: str, *, question_first: bool = False
    ) -> None:
        """What reached the user stays in the history, marked so nobody takes it for a complete answer, and always
        after the question it answers: a turn stopped before LangGraph saved its input checkpoint (saved in the
        background while the model starts) would otherwise leave an answer with no question."""
        missing: list[BaseMessage] = []
        if question_first:
            saved = (await self._agent.aget_state(config)).values.get("messages", [])
            if not any(message.id == str(turn.turn_id) for message in saved):
                missing.append(turn.question)
        if turn.recorder.partial:
            missing.append(AIMessage(content=turn.recorder.partial, response_metadata={"status": status}))
        if missing:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._agent.aupdate_state(config, {"messages": missing}, as_node="chat"))

    async def _record(self, turn: TurnContext, status: str, error_type: str | None) -> ChatTurn:
        recorder = turn.recorder
        reports = recorder.reports
        now = time.perf_counter()
        record = ChatTurn(
            id=turn.turn_id,
            session=turn.session_id,
            owner=turn.owner_id,
            input=turn.text,
            output=recorder.partial,
            tool_calls=recorder.tool_calls,
            model=reports[-1].model if reports else None,
            fallbacks=[{"model": f.model, "reason": f.reason} for r in reports for f in r.fallbacks],
            input_tokens=sum(r.usage.input_tokens for r in reports),
            output_tokens=sum(r.usage.output_tokens for r in reports),
            cached_tokens=sum(r.usage.cached_tokens for r in reports),
            cost_usd=sum(r.usage.cost_usd for r in reports),
            time_to_first_token_ms=(recorder.first_token_at - recorder.started) * 1000
            if recorder.first_token_at
            else None,
            latency_ms=(now - recorder.started) * 1000,
            status=status,
            error_type=error_type,
            trace_id=turn.trace.trace_id,
        )
        turn.trace.finish(output=recorder.partial, status=status, error_type=error_type)
        if self._metrics is not None:  # counted whether or not the record can be written
            self._metrics.turns.labels(status).inc()
            self._metrics.duration.observe(record.latency_ms / 1000)
            if record.time_to_first_token_ms is not None:
                self._metrics.time_to_first_token.observe(record.time_to_first_token_ms / 1000)
        await asyncio.shield(record.save().run())
        return record

    async def open(self) -> None:
        self._locks = TurnLocks(self._database.url, self._database.settings)
        await self._locks.open()

    async def close(self) -> None:
        await self._locks.close()

    def lock_connection_usage(self) -> tuple[int, int]:
        return self._locks.usage()

    async def history(self, session_id: uuid.UUID) -> list[dict[str, Any]]:
        state = await self._agent.aget_state({"configurable": {"thread_id": str(session_id)}})
        return [_as_dict(message) for message in state.values.get("messages", [])]

    async def clear(self, session_id: uuid.UUID) -> None:
        """Forget the conversation, checkpoints included."""
        checkpointer = self._agent.checkpointer
        if isinstance(checkpointer, BaseCheckpointSaver):
            await checkpointer.adelete_thread(str(session_id))


def _put_event(events: asyncio.Queue[TurnEvent | None], event: dict[str, Any]) -> None:
    """A token or tool event of the graph, into the turn's queue (unbounded: put_nowait never fails)."""
    kind = event.pop("type")
    events.put_nowait(TurnEvent(kind, {**event, "done": False, "content": event.get("content", "")}))


def _usage_of(turn: ChatTurn) -> dict[str, Any]:
    return {
        "input_tokens": turn.input_tokens,
        "output_tokens": turn.output_tokens,
        "cached_tokens": turn.cached_tokens,
        "cost_usd": turn.cost_usd,
        "model": turn.model,
    }


def _as_dict(message: Any) -> dict[str, Any]:
    role = {"human": "user", "ai": "assistant", "tool": "tool", "system": "system"}.get(message.type, message.type)
    item: dict[str, Any] = {"id": message.id, "role": role, "content": message.text}
    if isinstance(message, AIMessage):
        if message.tool_calls:
            item["tool_calls"] = [{"name": call["name"], "arguments": call["args"]} for call in message.tool_calls]
        status = message.response_metadata.get("status")
        if status:
            item["status"] = status
    if isinstance(message, ToolMessage):
        item["name"] = message.name
        item["status"] = message.status
    return item
