"""Runs: turns with an id, accepted into PostgreSQL, one running at a time per session (across workers and
replicas), run as a task that outlives the request that asked for it, streamed as numbered events that any
worker can replay, recorded when they end."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, Literal

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Command
from loguru import logger

from agentctl.config import AgentSettings, BudgetSettings, ChatSettings, MultitaskStrategy, OnDisconnect
from server.admission.service import TurnAdmission, TurnSlot
from server.agent.turn import TurnRecorder
from server.budgets.service import Limits, ensure_within_budget, overrides_of
from server.chat.events import HEARTBEAT, RunLog, SharedEventLog, TurnEvent
from server.chat.runs import WORKER_LOST, Claimed, RunOutcome, RunRow, RunStore, worker_name
from server.database.engine import Database
from server.database.notifications import Subscription
from server.errors import (
    AppError,
    ConflictError,
    DatabaseUnavailableError,
    NotFoundError,
    RateLimitedError,
    is_database_unavailable,
)
from server.llm.service import LLMService, ModelStreamError
from server.memory.service import MemoryService, RememberJob
from server.observability.metrics import ChatMetrics
from server.observability.tracing import TurnTrace, TurnTracer
from server.sessions.service import owner_name_of_session
from server.tasks import running
from server.tools.approvals import CallDecision, Decision, is_approval, resolve_decisions, summary_of
from server.tools.catalog import ToolCatalog
from server.users.service import get_user

CANCEL_CHANNEL = "agentctl_cancel_run"  # a run id and a mode: every worker stops the run if it runs it
# Error types of error events and turn records, besides the codes of AppErrors.
_MODEL_STREAM_FAILED = "model-stream-failed"
_INTERNAL_ERROR = "internal-error"
# How long a new message waits for a cancelled turn of its session to finish recording itself.
_CANCELLED_TURN_WAIT_SECONDS = 5.0
# A follower of a run elsewhere waits this long for its next event before it asks whether the run has ended.
_SHARED_READ_SECONDS = 1.0
_FINAL_FLUSH_ATTEMPTS = 3
CancelMode = Literal["cancel", "rollback"]


class TurnInProgressError(ConflictError):
    code = "turn-in-progress"

    def __init__(self) -> None:
        super().__init__("this session is already answering a message; wait for it or cancel it")


class RunQueueFullError(RateLimitedError):
    code = "run-queue-full"

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"this session already has {limit} messages queued; wait for them or cancel one",
            headers={"Retry-After": "5"},
        )


class MessageNotFoundError(NotFoundError):
    code = "message-not-found"

    def __init__(self) -> None:
        super().__init__("no such message in this session")


class NotAUserMessageError(AppError):
    status = 422
    code = "not-a-user-message"
    title = "Unprocessable Content"

    def __init__(self) -> None:
        super().__init__("only the user's own messages can be edited; to get another answer, regenerate it")


class MessageTooOldError(ConflictError):
    code = "message-too-old"

    def __init__(self) -> None:
        super().__init__(
            "this message can no longer be edited or regenerated: the conversation's state before it is no longer "
            "kept (AGENTCTL_RETENTION__CHECKPOINT_TURNS_KEPT)"
        )


class RunNotFoundError(NotFoundError):
    code = "run-not-found"

    def __init__(self) -> None:
        super().__init__("no such run in this session")


class RunExpiredError(AppError):
    status = 410
    code = "run-events-expired"
    title = "Gone"

    def __init__(self) -> None:
        super().__init__("this run ended too long ago for its events to be replayed; its answer is in the history")


@dataclass(frozen=True)
class TurnOptions:
    """What a request may add to its turn beyond the message (the OpenAI-compatible API uses them)."""

    surface: str = "chat"  # who asked: chat, chat.completions or responses (recorded with the turn)
    instructions: str | None = None  # the user's instructions, added to the system prompt (never replacing it)
    prior: tuple[BaseMessage, ...] = ()  # without a session: the conversation before the message
    fork_from: str | None = None  # a checkpoint of the session to continue from (an earlier response: a branch)
    previous_run: uuid.UUID | None = None  # the run it continues (recorded)
    model_options: dict[str, Any] = field(default_factory=dict)  # max_tokens, temperature
    approval: ApprovalAnswer | None = None  # the user's decisions on the tool calls awaiting approval

    @property
    def queueable(self) -> bool:
        """Whether a run with these options may wait in the queue: its row keeps the surface and the fork point, not
        the rest (instructions, the conversation given, model options, an approval's decisions)."""
        return not (self.instructions or self.prior or self.model_options or self.previous_run or self.approval)

    @property
    def approvals(self) -> bool:
        """Whether someone can answer a tool's approval: on the chat API, not on the OpenAI-compatible one."""
        return self.surface == "chat"


@dataclass(frozen=True)
class ApprovalAnswer:
    """The answer to one pause for approval: which pause (its interrupt), and a decision per call."""

    interrupt_id: str
    decisions: dict[str, CallDecision]


@dataclass(frozen=True)
class PendingApproval:
    """Tool calls of the session's conversation waiting for the user's decision."""

    interrupt_id: str
    calls: list[dict[str, Any]]


class NoApprovalPendingError(ConflictError):
    code = "no-approval-pending"

    def __init__(self) -> None:
        super().__init__("no tool call of this session is waiting for approval (it may have been answered already)")


_NO_OPTIONS = TurnOptions()


@dataclass(frozen=True)
class TurnContext:
    """What every step of one turn needs to know: who asked what, where its events go, what it records."""

    turn_id: uuid.UUID
    owner_id: uuid.UUID
    session_id: uuid.UUID | None  # None: a conversation that is not stored (the request brought it)
    text: str
    recorder: TurnRecorder
    log: RunLog
    strategy: str = "reject"
    trace: TurnTrace = field(default_factory=TurnTrace)
    options: TurnOptions = _NO_OPTIONS

    @property
    def thread_id(self) -> str:
        """The LangGraph thread: the session's, or the run's own for a conversation kept only while it runs."""
        return str(self.session_id if self.session_id is not None else self.turn_id)

    @property
    def question(self) -> HumanMessage:
        """The user's message as the history keeps it; its id is the turn's, so a cancelled turn can tell whether
        it reached the checkpoint."""
        return HumanMessage(self.text, id=str(self.turn_id))


@dataclass
class _LocalRun:
    """A run this worker is running."""

    turn: TurnContext
    task: asyncio.Task[None]
    on_disconnect: str
    slot: TurnSlot | None = None  # its place among the turns this worker runs at once
    keep_partial: bool = True  # False once rolled back: its partial answer leaves the history
    queued_behind: bool = True  # runs of its session wait for it to end (as far as its record told)


@dataclass(frozen=True)
class RunTicket:
    """An accepted run: running here or elsewhere, or queued behind its session's active run."""

    id: uuid.UUID
    session_id: uuid.UUID | None
    status: Literal["running", "queued"]
    strategy: MultitaskStrategy
    on_disconnect: OnDisconnect


class ChatService:
    def __init__(
        self,
        *,
        agent: CompiledStateGraph,
        llm: LLMService,
        database: Database,
        settings: AgentSettings,
        chat_settings: ChatSettings,
        runs: RunStore,
        shared_events: SharedEventLog,
        memory: MemoryService | None = None,
        metrics: ChatMetrics | None = None,
        tracer: TurnTracer | None = None,
        budget: BudgetSettings | None = None,
        catalog: ToolCatalog | None = None,
        admission: TurnAdmission | None = None,
    ) -> None:
        self._agent = agent
        self._catalog = catalog
        self._admission = admission
        self._budget = budget
        # A conversation that is not stored runs on a checkpointer in memory, as its own thread, dropped once it ends:
        # the same graph, so tools and human questions work alike.
        self._unstored = InMemorySaver()
        self._unstored_agent = agent.copy(update={"checkpointer": self._unstored})
        self._llm = llm
        self._database = database
        self._settings = settings
        self._chat = chat_settings
        self._runs = runs
        self._shared = shared_events
        self._memory = memory
        self._metrics = metrics
        self._tracer = tracer
        self._local: dict[uuid.UUID, _LocalRun] = {}  # by run id
        self._local_by_session: dict[uuid.UUID, _LocalRun] = {}

    @property
    def settings(self) -> ChatSettings:
        return self._chat

    def refuse_if_saturated(self) -> None:
        """503 overloaded now, before a message is even read, when this worker would refuse it (admission control)."""
        if self._admission is not None:
            self._admission.refuse_if_saturated()

    async def submit(
        self,
        *,
        owner_id: uuid.UUID,
        session_id: uuid.UUID | None,
        text: str,
        user_name: str | None = None,
        streaming: bool = True,
        strategy: MultitaskStrategy | None = None,
        on_disconnect: OnDisconnect | None = None,
        options: TurnOptions = _NO_OPTIONS,
        budget_overrides: Limits | None = None,
    ) -> RunTicket:
        """Accept a message as a run: started at once in this worker when its session has no active run, else
        refused (409), queued, or queued after cancelling the active run, by ``strategy``. With every chat model's
        circuit open, or this worker running all the turns it can (admission control), it is refused at once (503
        with Retry-After) instead. Without a session, the run starts at once on the conversation ``options.prior``
        brings, and only its record is kept."""
        self._llm.ensure_available("chat")
        if self._budget is not None:
            if budget_overrides is None:  # the caller did not read the user's row: read it now
                budget_overrides = overrides_of(await get_user(owner_id))
            await ensure_within_budget(owner_id, self._budget, budget_overrides)
        slot = await self._admission.take() if self._admission is not None else None
        try:
            return await self._accept(
                owner_id=owner_id,
                session_id=session_id,
                text=text,
                user_name=user_name,
                streaming=streaming,
                strategy=strategy,
                on_disconnect=on_disconnect,
                options=options,
                slot=slot,
            )
        finally:
            if slot is not None and not slot.handed_over:
                slot.release()  # refused, or queued: a queued run takes a slot when it starts

    async def _accept(
        self,
        *,
        owner_id: uuid.UUID,
        session_id: uuid.UUID | None,
        text: str,
        user_name: str | None,
        streaming: bool,
        strategy: MultitaskStrategy | None,
        on_disconnect: OnDisconnect | None,
        options: TurnOptions,
        slot: TurnSlot | None,
    ) -> RunTicket:
        strategy = strategy or self._chat.multitask_strategy
        on_disconnect = on_disconnect or self._chat.on_disconnect
        local = self._local_by_session.get(session_id) if session_id is not None else None
        if local is not None and local.task.cancelling():
            # A cancelled turn of this session still keeping its partial answer: the new message waits for it.
            await asyncio.wait([local.task], timeout=_CANCELLED_TURN_WAIT_SECONDS)
        run_id = uuid.uuid4()
        if await self._runs.start_now(
            run_id,
            session_id=session_id,
            owner_id=owner_id,
            text=text,
            strategy=strategy,
            on_disconnect=on_disconnect,
            surface=options.surface,
            previous_run=options.previous_run,
            start_checkpoint=options.fork_from,
            resumed=options.approval is not None,
        ):
            run = Claimed(run_id, session_id, owner_id, text, strategy, on_disconnect, options.fork_from)
            self._launch(run, user_name, streaming, options, slot=slot)
            self._count("running", strategy)
            return RunTicket(run_id, session_id, "running", strategy, on_disconnect)
        if session_id is None:  # nothing else runs in a conversation of its own: only a lost insert gets here
            raise RuntimeError("a run without a session could not start")
        if not options.queueable:
            # Queued runs start elsewhere from their row alone: a request with options it does not keep is answered now
            # or refused.
            raise TurnInProgressError()
        if strategy == "reject":
            raise TurnInProgressError()
        if not await self._runs.enqueue(
            run_id,
            session_id=session_id,
            owner_id=owner_id,
            text=text,
            strategy=strategy,
            on_disconnect=on_disconnect,
            max_queued=self._chat.max_queued,
            start_checkpoint=options.fork_from,
        ):
            raise RunQueueFullError(self._chat.max_queued)
        self._count("queued", strategy)
        if strategy != "enqueue":
            await self._cancel_running(session_id, "rollback" if strategy == "rollback" else "cancel")
        # The active run may have ended between the two statements without seeing this one.
        claimed = await self._claim_and_launch(session_id)
        status: Literal["running", "queued"] = "running" if claimed == run_id else "queued"
        return RunTicket(run_id, session_id, status, strategy, on_disconnect)

    async def answer_approval(
        self,
        *,
        owner_id: uuid.UUID,
        session_id: uuid.UUID,
        user_name: str | None,
        decision: Decision | None,
        reason: str | None,
        decisions: list[dict[str, Any]],
        on_disconnect: OnDisconnect | None = None,
        budget_overrides: Limits | None = None,
    ) -> RunTicket:
        """Answer the tool calls awaiting approval (a decision each, or one for all): the turn resumes as a run of
        its own, on whichever worker or replica this is. 409 when nothing awaits approval, 422 for a decision that
        does not fit the calls (an unknown call, edited arguments the tool refuses)."""
        pending = await self.pending_approval(session_id)
        if self._catalog is None:
            raise RuntimeError("this chat service runs no tools")
        resolved = resolve_decisions(
            pending.calls, decision=decision, reason=reason, decisions=decisions, catalog=self._catalog
        )
        return await self.submit(
            owner_id=owner_id,
            session_id=session_id,
            text=summary_of(pending.calls, resolved),
            user_name=user_name,
            on_disconnect=on_disconnect,
            options=TurnOptions(approval=ApprovalAnswer(pending.interrupt_id, resolved)),
            budget_overrides=budget_overrides,
        )

    def _count(self, status: str, strategy: str) -> None:
        if self._metrics is not None:
            self._metrics.runs.labels(status, strategy).inc()

    async def _claim_and_launch(self, session_id: uuid.UUID) -> uuid.UUID | None:
        claimed = await self._runs.claim_next(session_id)
        if claimed is None:
            return None
        user_name = await owner_name_of_session(owner_id=claimed.owner_id, session_id=session_id)
        options = TurnOptions(fork_from=claimed.fork_from) if claimed.fork_from else _NO_OPTIONS
        self._launch(claimed, user_name, streaming=True, options=options)
        self._count("running", claimed.strategy)
        return claimed.id

    def _launch(
        self,
        claimed: Claimed,
        user_name: str | None,
        streaming: bool,
        options: TurnOptions = _NO_OPTIONS,
        *,
        slot: TurnSlot | None = None,
    ) -> None:
        if slot is None and self._admission is not None:  # a queued run starting: admitted when it was accepted
            slot = self._admission.take_now()
        if slot is not None:
            slot.handed_over = True
        recorder = TurnRecorder(
            user_name=user_name,
            streaming=streaming,
            instructions=options.instructions,
            model_options=options.model_options,
            approvals=options.approvals,
        )
        log = RunLog(claimed.id)
        turn = TurnContext(
            claimed.id,
            claimed.owner_id,
            claimed.session_id,
            claimed.input,
            recorder,
            log,
            claimed.strategy,
            options=options,
        )
        task = asyncio.create_task(self._run_holding(turn), name=f"run-{claimed.id}")
        local = _LocalRun(turn, task, claimed.on_disconnect, slot)
        self._local[claimed.id] = local
        if claimed.session_id is not None:
            self._local_by_session[claimed.session_id] = local

    async def _run_holding(self, turn: TurnContext) -> None:
        # Opened and finished in this task: the trace's root is the task's current span meanwhile.
        if self._tracer is not None:
            trace = self._tracer.start_turn(
                user_id=turn.owner_id, session_id=turn.session_id, turn_id=turn.turn_id, input_text=turn.text
            )
            turn = dataclasses.replace(turn, trace=trace)
        persisting = asyncio.ensure_future(self._persist(turn.log))
        try:
            with logger.contextualize(run_id=str(turn.turn_id)):
                await self._run(turn)
        finally:
            # Normally finished by _record with the turn's outcome; this only ends a trace _record never reached.
            turn.trace.finish(output=turn.recorder.partial, status="error", error_type=_INTERNAL_ERROR)
            if self._memory is not None:  # what the user said stands, however the turn ended
                self._memory.remember(RememberJob(turn.owner_id, turn.session_id, turn.turn_id, turn.text))
            turn.log.end()
            try:
                # Every event reaches the shared log before the run leaves this worker's memory: a follower that
                # arrives afterwards reads it there.
                with contextlib.suppress(Exception):
                    await asyncio.shield(persisting)
            finally:
                local = self._local.pop(turn.turn_id)
                if local.slot is not None:
                    local.slot.release()
                if turn.session_id is None:
                    await self._unstored.adelete_thread(turn.thread_id)
                elif (
                    here := self._local_by_session.get(turn.session_id)
                ) is not None and here.turn.turn_id == turn.turn_id:
                    del self._local_by_session[turn.session_id]
            if local.queued_behind and turn.session_id is not None:
                with contextlib.suppress(Exception):  # else the sweeper claims the next one
                    await asyncio.shield(self._claim_and_launch(turn.session_id))

    async def _persist(self, log: RunLog) -> None:
        """Write the run's events to the shared log in bursts (one write per ``event_flush_seconds`` at most),
        until the run has ended and every event is written. A failed write is retried with the next burst."""
        written = 0
        failures = 0
        while True:
            await log.wait_beyond(written)
            if log.ended and len(log.events) == written:
                return
            if not log.ended and self._chat.event_flush_seconds:
                await asyncio.sleep(self._chat.event_flush_seconds)
            burst = log.events[written:]
            if not burst:
                continue
            try:
                await self._shared.append(log.run_id, burst)
            except Exception as error:
                failures += 1
                self._observe_write("error")
                if failures == 1 or log.ended:
                    logger.warning("run events not written to the shared log: {}: {}", type(error).__name__, error)
                if log.ended and failures >= _FINAL_FLUSH_ATTEMPTS:
                    return
                await asyncio.sleep(min(1.0, 0.1 * failures))
                continue
            failures = 0
            written += len(burst)
            self._observe_write("ok", len(burst))

    def _observe_write(self, outcome: str, events: int = 0) -> None:
        if self._metrics is not None:
            self._metrics.event_log_writes.labels(outcome).inc()
            if events:
                self._metrics.events_logged.inc(events)

    async def cancel(self, session_id: uuid.UUID) -> bool:
        """Stop the session's running run, in whichever worker or replica runs it; True if one was running."""
        return await self._cancel_running(session_id, "cancel")

    async def _cancel_running(self, session_id: uuid.UUID, mode: CancelMode) -> bool:
        local = self._local_by_session.get(session_id)
        if local is not None and not local.task.done():
            self._cancel_local(local, mode)
            return True
        running_run = await self._runs.running_in(session_id)
        if running_run is None:
            return False
        await self._notify_cancel(running_run[0], mode)
        return True

    async def _notify_cancel(self, run_id: uuid.UUID, mode: CancelMode) -> None:
        if (local := self._local.get(run_id)) is not None:
            self._cancel_local(local, mode)
            return
        await self._database.pool.execute("SELECT pg_notify($1, $2)", CANCEL_CHANNEL, f"{run_id} {mode}")

    def cancel_here(self, run_id: uuid.UUID) -> None:
        """Stop a run of this worker (one without a session lives nowhere else)."""
        if (local := self._local.get(run_id)) is not None and not local.task.done():
            self._cancel_local(local, "cancel")

    async def cancel_run(self, run_id: uuid.UUID, *, session_id: uuid.UUID) -> RunRow:
        """Stop one run: a queued one never starts, a running one stops wherever it runs (keeping its partial
        answer). The run as it stands afterwards (a running one may take a moment to record itself)."""
        row = await self._runs.get(run_id, session_id=session_id)
        if row is None:
            raise RunNotFoundError()
        if row.status == "queued" and await self._runs.cancel_queued(run_id):
            self._count("cancelled", row.strategy)
            cancelled = TurnEvent("error", _cancelled_data(), seq=1)
            with contextlib.suppress(Exception):  # its followers end; without the log, at their next status check
                await self._shared.append(run_id, [cancelled])
        elif row.status == "running":
            await self._notify_cancel(run_id, "cancel")
        return await self._runs.get(run_id, session_id=session_id) or row

    def cancellations(self) -> Subscription:
        """What this worker listens for: cancellations asked of other workers and replicas."""
        return Subscription(CANCEL_CHANNEL, self._on_cancel_notice)

    def _on_cancel_notice(self, payload: str) -> None:
        try:
            run, mode = payload.split(" ", 1)
            local = self._local.get(uuid.UUID(run))
        except ValueError:
            logger.warning("ignored a malformed cancellation notice")
            return
        if local is not None and not local.task.done():
            self._cancel_local(local, "rollback" if mode == "rollback" else "cancel")

    def _cancel_local(self, local: _LocalRun, mode: CancelMode) -> None:
        if mode == "rollback":
            local.keep_partial = False
        # Once: a second cancellation would reach the turn mid-cleanup, where the libraries close the model's
        # response without shielding it, and leave its connection taken.
        if not local.task.cancelling():
            local.task.cancel()

    # -- following -----------------------------------------------------------------------------------------------

    async def find(self, run_id: uuid.UUID, *, session_id: uuid.UUID) -> RunRow:
        row = await self._runs.get(run_id, session_id=session_id)
        if row is None:
            raise RunNotFoundError()
        return row

    async def find_owned(self, run_id: uuid.UUID, *, owner_id: uuid.UUID) -> RunRow | None:
        """One of the user's runs, in any of their sessions or none."""
        return await self._runs.get_owned(run_id, owner_id=owner_id)

    async def checkpoint_kept(self, session_id: uuid.UUID, checkpoint_id: str) -> bool:
        """Whether the session's conversation still has that checkpoint (not cleared, not pruned by retention)."""
        return await self._runs.checkpoint_exists(session_id, checkpoint_id)

    async def conversation_at(self, session_id: uuid.UUID, checkpoint_id: str | None) -> list[BaseMessage]:
        """The session's messages as of one checkpoint (its latest without one)."""
        configurable: dict[str, Any] = {"thread_id": str(session_id)}
        if checkpoint_id is not None:
            configurable["checkpoint_id"] = checkpoint_id
        state = await self._agent.aget_state({"configurable": configurable})
        return list(state.values.get("messages", []))

    def runs_here(self, run_id: uuid.UUID, session_id: uuid.UUID | None) -> bool:
        local = self._local.get(run_id)
        return local is not None and local.turn.session_id == session_id

    async def open_follow(
        self, run_id: uuid.UUID, *, session_id: uuid.UUID | None, after: int = 0
    ) -> tuple[str, AsyncGenerator[list[TurnEvent]]]:
        """Where the run's events after ``after`` will come from ("memory" or "log") and the events themselves, in
        batches, until the run ends; 404 for a run not of this session, 410 for one whose events have expired."""
        if self.runs_here(run_id, session_id):
            return "memory", self._follow_here(run_id, after)
        if session_id is None:  # a run without a session lives only in the worker that runs it
            raise RunNotFoundError()
        row = await self.find(run_id, session_id=session_id)
        ttl = timedelta(seconds=self._chat.run_events_ttl_seconds)
        if row.finished_at is not None and row.finished_at + ttl < datetime.now(UTC):
            raise RunExpiredError()
        return "log", self._follow_shared(row, after)

    def _follow_here(self, run_id: uuid.UUID, after: int) -> AsyncGenerator[list[TurnEvent]]:
        """From the run's log in memory, taken now: it stays whole after the run leaves this worker's table."""
        return self._local[run_id].turn.log.follow(after, self._settings.stream_heartbeat_seconds)

    async def _follow_shared(self, row: RunRow, after: int) -> AsyncGenerator[list[TurnEvent]]:
        """A run's events from the shared log (from memory should the run come to this worker meanwhile), with
        heartbeats; a run that ended without its last events in the log (its worker died) ends with its outcome."""
        loop = asyncio.get_running_loop()
        heartbeat = self._settings.stream_heartbeat_seconds
        cursor, beat_at = after, loop.time() + heartbeat
        while True:
            if self.runs_here(row.id, row.session_id):
                async with contextlib.aclosing(self._follow_here(row.id, cursor)) as events:
                    async for batch in events:
                        yield batch
                return
            batch = await self._shared.read(row.id, cursor, min(heartbeat, _SHARED_READ_SECONDS))
            if not batch:
                current = await self._runs.get(row.id, session_id=row.session_id)
                if current is None or not current.active:  # ended: what reached the log meanwhile, else its outcome
                    batch = await self._shared.read(row.id, cursor, 0) or [_final_event_of(current, cursor + 1)]
            if batch:
                yield batch
                cursor = batch[-1].seq
                if batch[-1].final:
                    return
                continue
            if loop.time() >= beat_at:
                beat_at = loop.time() + heartbeat
                yield [HEARTBEAT]

    async def settled_if_cancelled(self, run_id: uuid.UUID) -> None:
        """Wait until a cancelled run of this worker has recorded itself and released its session (it may be keeping
        a partial answer). Waits for the task without awaiting it: a waiter that is cancelled would pass each
        cancellation on to an awaited task, cutting short the turn's own cleanup."""
        local = self._local.get(run_id)
        if local is not None and local.task.cancelling():
            await asyncio.wait([local.task])

    async def last_event_of(self, row: RunRow) -> int:
        local = self._local.get(row.id)
        if local is not None:
            return len(local.turn.log.events)
        if not row.active:
            return row.last_event
        return await self._shared.last_seq(row.id)

    async def page(
        self, *, session_id: uuid.UUID, statuses: list[str] | None, limit: int, before: uuid.UUID | None
    ) -> list[RunRow]:
        return await self._runs.page(session_id=session_id, statuses=statuses, limit=limit, before=before)

    # -- keeping runs alive ----------------------------------------------------------------------------------------

    async def _maintain_forever(self) -> None:
        """Renew this worker's leases; end the runs of workers that died; start queued runs nobody claimed; forget
        expired events. Every worker does it (each lapsed run is taken by one)."""
        period = self._chat.run_lease_seconds / 3
        forget_every = max(1, round(60 / period))
        rounds = 0
        while True:
            await asyncio.sleep(period)
            rounds += 1
            try:
                if self._local:
                    await self._runs.renew(list(self._local))
                for lost in await self._runs.expire_lost():
                    await self._end_lost(lost)
                for session_id in await self._runs.sessions_waiting():
                    await self._claim_and_launch(session_id)
                if rounds % forget_every == 0:
                    await self._shared.forget_expired()
            except Exception as error:
                if is_database_unavailable(error):
                    self._database.suspect_outage()
                logger.warning("run upkeep failed: {}: {}", type(error).__name__, error)

    async def _end_lost(self, lost: RunRow) -> None:
        logger.warning("run {} lost its worker; ended as {}", lost.id, WORKER_LOST)
        self._count("error", lost.strategy)
        if self._metrics is not None:
            self._metrics.turns.labels("error").inc()
        with contextlib.suppress(Exception):
            seq = await self._shared.last_seq(lost.id) + 1
            await self._shared.append(lost.id, [_final_event_of(lost, seq)])
        await self._claim_and_launch(lost.session_id)

    def _agent_of(self, turn: TurnContext) -> CompiledStateGraph:
        return self._agent if turn.session_id is not None else self._unstored_agent

    async def _run(self, turn: TurnContext) -> None:
        recorder, log = turn.recorder, turn.log
        configurable: dict[str, Any] = {"thread_id": turn.thread_id, "turn": recorder}
        if turn.options.fork_from is not None:  # LangGraph continues from that checkpoint: a branch if it is older
            configurable["checkpoint_id"] = turn.options.fork_from
        config: RunnableConfig = {
            "configurable": configurable,
            "recursion_limit": 2 * self._settings.max_steps + 4,
            "callbacks": turn.trace.callbacks,  # Langfuse's handler when tracing, else none
        }
        agent = self._agent_of(turn)
        status, error_type = "done", None
        resuming = False
        try:
            if self._memory is None:
                state = await agent.aget_state(config)
            else:  # independent reads, side by side; recall keeps to its own time budget
                state, recorder.memories = await asyncio.gather(
                    agent.aget_state(config), self._memory.recall(turn.owner_id, turn.text)
                )
            if recorder.memories:  # the user sees what the agent was reminded of, before its answer
                log.append("memory", {"content": "", "done": False, "memories": recorder.memories})
            resuming = bool(state.interrupts)
            recorder.resumed = resuming
            recorder.start_checkpoint = state.config.get("configurable", {}).get("checkpoint_id")
            recorder.first_of_conversation = recorder.start_checkpoint is None
            recorder.parent_run = _last_question_id(state.values.get("messages", []))
            approval = turn.options.approval
            if approval is not None and not any(pending.id == approval.interrupt_id for pending in state.interrupts):
                resuming = True  # nothing of this run enters the conversation
                raise NoApprovalPendingError()
            graph_input: Command[Any] | dict[str, Any]
            if approval is not None:
                decisions = {call_id: decision.as_dict() for call_id, decision in approval.decisions.items()}
                graph_input = Command(resume={approval.interrupt_id: {"decisions": decisions}})
            elif resuming:
                graph_input = Command(resume=turn.text)  # an answer to ask_human, or a message instead of approving
            else:
                graph_input = {"messages": [*turn.options.prior, turn.question]}
            recorder.emit = partial(_put_event, log)
            async for chunk in agent.astream(graph_input, config, stream_mode="updates"):
                if "__interrupt__" in chunk:
                    asked = chunk["__interrupt__"][0].value
                    if is_approval(asked):
                        status = "awaiting_approval"
                        recorder.tool_calls.extend(
                            {"name": call["tool"], "arguments": call["arguments"], "status": "awaiting_approval"}
                            for call in asked["calls"]
                        )
                        log.append("approval", {"content": "", "calls": asked["calls"], "done": False})
                        continue
                    status = "awaiting_human"
                    question = asked.get("question") if isinstance(asked, dict) else str(asked)
                    log.append("interrupt", {"content": "", "question": question, "done": False})
        except asyncio.CancelledError:
            # The cleanup runs in a task of its own: whoever cancelled this turn may cancel it again (and again),
            # and the partial answer and the record must be written all the same.
            cleanup = asyncio.ensure_future(self._end_cancelled(turn, config, asks_anew=not resuming))
            try:
                await asyncio.shield(cleanup)
            finally:
                log.append("error", _cancelled_data())
            raise
        except (ModelStreamError, AppError) as error:
            # Model failures, an over-long context: the user learns what happened, and the turn is recorded.
            status = "error"
            error_type = error.code if isinstance(error, AppError) else _MODEL_STREAM_FAILED
            await self._keep_partial_answer(turn, config, status, question_first=not resuming)
            detail = error.detail if isinstance(error, AppError) else str(error)
            log.append("error", {"error": {"type": error_type, "detail": detail}, "done": True}, cause=error)
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
            log.append("error", failure, cause=cause)
        try:
            record = await self._record(turn, status, error_type, events_to_come=0 if status == "error" else 2)
            if status != "error":
                log.append("usage", {"content": "", "done": False, "usage": _usage_of(record)})
                done = {"content": "", "done": True, "message_id": str(turn.turn_id)}
                if recorder.finish_reason:
                    done["finish_reason"] = recorder.finish_reason
                log.append("done", done)
        except Exception as error:
            # The answer was given (or the failure told); its record is what is missing.
            logger.warning("turn {} could not be recorded: {}: {}", turn.turn_id, type(error).__name__, error)
            if status != "error":
                lost = DatabaseUnavailableError("the answer could not be saved; the database is unavailable")
                failure = {"error": {"type": lost.code, "detail": lost.detail}, "done": True}
                log.append("error", failure, cause=lost)

    async def _end_cancelled(self, turn: TurnContext, config: RunnableConfig, *, asks_anew: bool) -> None:
        """A cancelled turn (a cancel, or a client gone) keeps what it said and is recorded as interrupted."""
        try:
            local = self._local.get(turn.turn_id)
            rolled_back = local is not None and not local.keep_partial
            await self._keep_partial_answer(
                turn, config, "interrupted", question_first=asks_anew, answer_too=not rolled_back
            )
            await self._record(turn, "cancelled", "rolled-back" if rolled_back else "cancelled", events_to_come=1)
        except Exception as error:
            logger.warning("cancelled turn {} not fully recorded: {}: {}", turn.turn_id, type(error).__name__, error)

    async def _keep_partial_answer(
        self,
        turn: TurnContext,
        config: RunnableConfig,
        status: str,
        *,
        question_first: bool = False,
        answer_too: bool = True,
    ) -> None:
        """What reached the user stays in the history, marked so nobody takes it for a complete answer, and always
        after the question it answers: a turn stopped before LangGraph saved its input checkpoint (saved in the
        background while the model starts) would otherwise leave an answer with no question."""
        missing: list[BaseMessage] = []
        agent = self._agent_of(turn)
        if question_first:
            saved = (await agent.aget_state(config)).values.get("messages", [])
            if not any(message.id == str(turn.turn_id) for message in saved):
                missing.extend([*turn.options.prior, turn.question])
        if turn.recorder.partial and answer_too:
            missing.append(AIMessage(content=turn.recorder.partial, response_metadata={"status": status}))
        if missing:
            with contextlib.suppress(Exception):
                await asyncio.shield(agent.aupdate_state(config, {"messages": missing}, as_node="chat"))

    async def _record(
        self, turn: TurnContext, status: str, error_type: str | None, *, events_to_come: int
    ) -> RunOutcome:
        """The run's record (its row, finished), with the number its last event will have once the ``events_to_come``
        after the record are sent."""
        recorder = turn.recorder
        reports = recorder.reports
        now = time.perf_counter()
        outcome = RunOutcome(
            status=status,
            error_type=error_type,
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
            trace_id=turn.trace.trace_id,
            last_event=len(turn.log.events) + events_to_come,
            start_checkpoint=recorder.start_checkpoint,
            first_of_conversation=recorder.first_of_conversation,
            parent_run=recorder.parent_run,
            resumed=recorder.resumed,
        )
        turn.trace.finish(output=recorder.partial, status=status, error_type=error_type)
        if self._metrics is not None:  # counted whether or not the record can be written
            self._metrics.turns.labels(status).inc()
            self._metrics.runs.labels(status, turn.strategy).inc()
            self._metrics.duration.observe(outcome.latency_ms / 1000)
            if outcome.time_to_first_token_ms is not None:
                self._metrics.time_to_first_token.observe(outcome.time_to_first_token_ms / 1000)
        queued_behind = await asyncio.shield(self._runs.finish(turn.turn_id, outcome))
        if (local := self._local.get(turn.turn_id)) is not None:
            local.queued_behind = queued_behind
        return outcome

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[None]:
        """The upkeep of runs (leases, lost workers, queued runs nobody claimed) for the worker's life. A worker
        that stops cancels the runs it still runs, which keep their partial answers and record themselves."""
        async with running(self._maintain_forever()):
            try:
                yield
            finally:
                for local in list(self._local.values()):
                    self._cancel_local(local, "cancel")
                if tasks := [local.task for local in self._local.values()]:
                    await asyncio.wait(tasks, timeout=_CANCELLED_TURN_WAIT_SECONDS)

    # -- branches ------------------------------------------------------------------------------------------------

    async def fork_point_of(self, session_id: uuid.UUID, message_id: str, *, answer_ok: bool) -> RunRow:
        """The run whose user message ``message_id`` is (with ``answer_ok``, an answer's id finds the question it
        answers), able to be forked: 404 for no such message in the session, 422 for a message that is not the
        user's, 409 for one whose starting point is no longer kept."""
        run_id = _uuid_or_none(message_id)
        row = await self._runs.get(run_id, session_id=session_id) if run_id is not None else None
        if row is None or row.resumed:
            messages = (await self._agent.aget_state({"configurable": {"thread_id": str(session_id)}})).values.get(
                "messages", []
            )
            index = next((i for i, message in enumerate(messages) if str(message.id) == message_id), None)
            if index is None:
                raise MessageNotFoundError()
            question = _last_question_id(messages[: index + 1]) if answer_ok else None
            row = await self._runs.get(question, session_id=session_id) if question is not None else None
            if row is None:
                raise NotAUserMessageError()
        if row.start_checkpoint is None or not await self._runs.checkpoint_exists(session_id, row.start_checkpoint):
            raise MessageTooOldError()
        return row

    async def branches(self, session_id: uuid.UUID) -> dict[str, dict[str, Any]]:
        """For each user message (a run's id) that has siblings (the same turn before it: edits and regenerations),
        its place among them: {"index": 1-based, "count", "siblings": [ids, oldest first]}."""
        runs = [row for row in await self._runs.all_in(session_id) if not row.resumed]
        groups: dict[uuid.UUID | None, list[RunRow]] = {}
        for row in runs:
            if row.start_checkpoint is not None or row.active:
                groups.setdefault(row.previous_run, []).append(row)
        places: dict[str, dict[str, Any]] = {}
        for siblings in groups.values():
            if len(siblings) < 2:
                continue
            ids = [str(row.id) for row in siblings]
            for index, run_id in enumerate(ids, start=1):
                places[run_id] = {"index": index, "count": len(ids), "siblings": ids}
        return places

    async def switch_branch(self, session_id: uuid.UUID, message_id: str) -> None:
        """Make the branch holding the user message ``message_id`` the session's conversation again, at its latest
        turn. LangGraph continues from the newest checkpoint: a copy of that branch's last state becomes it."""
        run_id = _uuid_or_none(message_id)
        chosen = await self._runs.get(run_id, session_id=session_id) if run_id is not None else None
        if chosen is None:
            raise MessageNotFoundError()
        runs = await self._runs.all_in(session_id)
        if any(row.active for row in runs):
            raise TurnInProgressError()
        children: dict[uuid.UUID | None, list[RunRow]] = {}
        for row in runs:
            children.setdefault(row.previous_run, []).append(row)
        head, frontier = chosen, [chosen]
        while frontier:  # the newest run of the branch that starts at the chosen message
            row = frontier.pop()
            if row.checkpoint_id is not None and (row.created_at, str(row.id)) > (head.created_at, str(head.id)):
                head = row
            frontier.extend(children.get(row.id, []))
        if head.checkpoint_id is None:
            raise MessageTooOldError()
        config: RunnableConfig = {
            "configurable": {"thread_id": str(session_id), "checkpoint_ns": "", "checkpoint_id": head.checkpoint_id}
        }
        await self._agent.aupdate_state(config, None, as_node="chat")

    async def conversation(self, session_id: uuid.UUID) -> tuple[list[dict[str, Any]], PendingApproval | None]:
        """The session's current branch without the system prompt, each user message with its place among its
        siblings (``branch``) where it has any; and the tool calls awaiting approval, if any."""
        places, state = await asyncio.gather(
            self.branches(session_id), self._agent.aget_state({"configurable": {"thread_id": str(session_id)}})
        )
        messages = [
            {**item, "branch": places.get(item["id"]) if item["role"] == "user" else None}
            for item in (_as_dict(message) for message in state.values.get("messages", []))
            if item["role"] != "system"
        ]
        return messages, _pending_approval_of(state.interrupts)

    async def pending_approval(self, session_id: uuid.UUID) -> PendingApproval:
        """The tool calls of the session's conversation awaiting approval; 409 when none does."""
        state = await self._agent.aget_state({"configurable": {"thread_id": str(session_id)}})
        pending = _pending_approval_of(state.interrupts)
        if pending is None:
            raise NoApprovalPendingError()
        return pending

    async def clear(self, session_id: uuid.UUID) -> None:
        """Forget the conversation, checkpoints included."""
        checkpointer = self._agent.checkpointer
        if isinstance(checkpointer, BaseCheckpointSaver):
            await checkpointer.adelete_thread(str(session_id))


async def stop_runs_of_owner(
    database: Database, owner_id: uuid.UUID, *, lease_seconds: float, wait_leases: float
) -> bool:
    """Cancel the user's queued runs, stop the running ones wherever they run (every worker listens on
    CANCEL_CHANNEL), and wait until they have recorded themselves (a stopped run writes its partial answer into its
    checkpoint first), at most ``wait_leases`` leases; False if one had not stopped by then. Needs no ChatService:
    the CLI stops runs of servers it does not run."""
    runs = RunStore(database, worker=worker_name(), lease_seconds=lease_seconds)
    active = await runs.active_of_owner(owner_id)
    for run in active:  # queued first: a run that ends starts the next queued run of its session
        if run.status == "queued":
            await runs.cancel_queued(run.id)
    for run in active:
        if run.status == "running":
            await database.pool.execute("SELECT pg_notify($1, $2)", CANCEL_CHANNEL, f"{run.id} cancel")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_leases * lease_seconds
    while any(run.status == "running" for run in await runs.active_of_owner(owner_id)):
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.1)
    return True


def _uuid_or_none(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


def _last_question_id(messages: list[BaseMessage]) -> uuid.UUID | None:
    """The run of the conversation's last user message (a user message's id is its run's): the turn before."""
    for message in reversed(messages):
        if isinstance(message, HumanMessage):
            with contextlib.suppress(TypeError, ValueError):
                return uuid.UUID(str(message.id))
            return None
    return None


def _pending_approval_of(interrupts: tuple[Any, ...]) -> PendingApproval | None:
    for pending in interrupts:
        if is_approval(pending.value):
            return PendingApproval(pending.id, list(pending.value["calls"]))
    return None


def _put_event(log: RunLog, event: dict[str, Any]) -> None:
    """A token or tool event of the graph (a dict of its own, completed in place: no copy per token), into the
    run's log."""
    kind = event.pop("type")
    event["done"] = False
    event.setdefault("content", "")
    log.append(kind, event)


def _cancelled_data() -> dict[str, Any]:
    return {"error": {"type": "cancelled", "detail": "the turn was cancelled"}, "done": True}


def _final_event_of(row: RunRow | None, seq: int) -> TurnEvent:
    """The last event of a run that ended without it reaching the shared log (its worker died, or the events have
    been forgotten): what its record says."""
    if row is None or row.status == "cancelled":
        return TurnEvent("error", _cancelled_data(), seq=seq)
    if row.status == "error":
        detail = "the worker running this turn stopped" if row.error_type == WORKER_LOST else "the turn failed"
        return TurnEvent("error", {"error": {"type": row.error_type, "detail": detail}, "done": True}, seq=seq)
    return TurnEvent("done", {"content": "", "done": True, "message_id": str(row.id)}, seq=seq)


def _usage_of(turn: RunOutcome) -> dict[str, Any]:
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
