"""Langfuse tracing of chat turns, on only when both Langfuse keys are configured.

Langfuse is an optional dependency (the ``tracing`` extra) and is imported here only, inside
:func:`build_tracer`, once the keys are known to be set: a server without keys never loads it and pays nothing.

With keys, a turn opens one root observation ("chat-turn") that carries the user, session and turn ids; the
LangChain callback handler hangs the graph's chains and model generations under it. Spans are handed to
OpenTelemetry's batch processor and sent by its background thread, so a turn never waits on Langfuse, and an
unreachable Langfuse costs a turn nothing: its traces are dropped and the log says so once.

The Langfuse SDK (v5) is given every setting explicitly, so it never depends on LANGFUSE_* variables for what
agentctl configures (it still honours its own switches such as LANGFUSE_TRACING_ENABLED, read by the SDK).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any, Literal

from loguru import logger

from agentctl.config import ObservabilitySettings

if TYPE_CHECKING:
    from langfuse import Langfuse, LangfuseSpan
    from opentelemetry.sdk.trace import TracerProvider

TRACE_NAME = "chat-turn"
# Whole seconds (the SDK takes an int): each export request, retries included, gives up after this. Exports run
# in a background thread, so this bounds how long a dead Langfuse holds a batch, never a turn.
_EXPORT_TIMEOUT_SECONDS = 2
# How often queued spans are sent. Also how long the SDK's score thread takes to notice a shutdown.
_FLUSH_INTERVAL_SECONDS = 0.5
_CLOSE_TIMEOUT_SECONDS = 5.0
_FAILURE_REPORT_INTERVAL_SECONDS = 600.0
# Where OpenTelemetry reports failed exports (one line per batch) and dropped spans (one line per span).
_EXPORT_LOGGERS = ("opentelemetry.exporter.otlp.proto.http.trace_exporter", "opentelemetry.sdk._shared_internal")
_NO_TRACE_ID = "0" * 32


class _RateLimitedWarning:
    """One warning per interval, whatever the number of failures: an outage fails every turn's trace."""

    def __init__(self, interval_seconds: float) -> None:
        self._interval = interval_seconds
        self._last: float | None = None
        self._lock = threading.Lock()

    def due(self) -> bool:
        with self._lock:
            now = time.monotonic()
            if self._last is not None and now - self._last < self._interval:
                return False
            self._last = now
            return True


class _ExportFailureLog(logging.Filter):
    """Replaces OpenTelemetry's per-batch export errors by one warning of ours every ten minutes.

    Its lines carry status codes and exception texts, never span contents; they are dropped rather than passed
    on because during an outage every batch fails, and a line per batch would bury the log.
    """

    def __init__(self, host: str) -> None:
        super().__init__()
        self._host = host
        self._warning = _RateLimitedWarning(_FAILURE_REPORT_INTERVAL_SECONDS)
        self._last_retry = ""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        detail = record.getMessage()
        # A retry is not a loss yet, but it names the cause ("Connection refused") that the final error does not.
        lost = record.levelno >= logging.ERROR or "dropping" in detail.lower()
        if not lost:
            self._last_retry = detail
        elif self._warning.due():
            logger.warning(
                "Langfuse at {} is not taking traces ({}{}); turns go on untraced. Not repeated for {} minutes.",
                self._host,
                detail,
                f" {self._last_retry}" if self._last_retry else "",
                int(_FAILURE_REPORT_INTERVAL_SECONDS // 60),
            )
        return False


class TurnTrace:
    """One turn's trace: its id (kept on the turn record), the callbacks for the LangGraph run, and its end.

    ``start_turn`` and ``finish`` must run in the same asyncio task: the root observation is the task's current
    OpenTelemetry span meanwhile, which is how the callback handler's spans find their parent.
    """

    def __init__(
        self,
        *,
        trace_id: str | None = None,
        callbacks: list[Any] | None = None,
        root: LangfuseSpan | None = None,
        context: ExitStack | None = None,
        on_failure: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.trace_id = trace_id
        self.callbacks: list[Any] = callbacks if callbacks is not None else []
        self._root = root
        self._context = context
        self._on_failure = on_failure
        self._finished = False

    def finish(self, *, output: str, status: str, error_type: str | None) -> None:
        """End the trace with the answer and how the turn ended; never raises, a second call does nothing."""
        if self._finished:
            return
        self._finished = True
        try:
            if self._root is not None:
                level: Literal["ERROR", "WARNING", "DEFAULT"] = (
                    "ERROR" if status == "error" else "WARNING" if status == "cancelled" else "DEFAULT"
                )
                self._root.update(
                    output=output,
                    level=level,
                    status_message=error_type,
                    metadata={"status": status, "error_type": error_type},
                )
                self._root.end()
        except Exception as error:
            if self._on_failure is not None:
                self._on_failure(error)
        finally:
            if self._context is not None:
                self._context.close()


class TurnTracer:
    """Opens a trace per turn and, at shutdown, sends what is still queued."""

    def __init__(
        self,
        *,
        client: Langfuse,
        provider: TracerProvider,
        new_callback_handler: Callable[[], Any],
        host: str,
        propagate_attributes: Callable[..., Any],
        export_failure_log: _ExportFailureLog,
    ) -> None:
        self._client = client
        self._provider = provider
        self._new_callback_handler = new_callback_handler
        self._host = host
        self._propagate_attributes = propagate_attributes
        self._export_failure_log = export_failure_log
        self._sdk_failure_warning = _RateLimitedWarning(_FAILURE_REPORT_INTERVAL_SECONDS)
        self._closed = False

    def start_turn(
        self, *, user_id: uuid.UUID, session_id: uuid.UUID | None, turn_id: uuid.UUID, input_text: str
    ) -> TurnTrace:
        """Open the turn's root observation and make it current; an untraced turn rather than an error if it fails."""
        if self._closed:
            return TurnTrace()
        context = ExitStack()
        try:
            # Entered first, so that the root observation and everything under it carry the ids.
            context.enter_context(
                self._propagate_attributes(
                    user_id=str(user_id),
                    session_id=str(session_id or turn_id),  # a turn without a session is a conversation of its own
                    trace_name=TRACE_NAME,
                    metadata={"turn_id": str(turn_id)},
                )
            )
            root = context.enter_context(
                self._client.start_as_current_observation(
                    name=TRACE_NAME,
                    as_type="span",
                    input=input_text,
                    metadata={"turn_id": str(turn_id)},
                    end_on_exit=False,
                )
            )
            # Sampled out or switched off by the SDK's own LANGFUSE_TRACING_ENABLED: nothing will be sent.
            trace_id = root.trace_id if root.trace_id != _NO_TRACE_ID else None
            # One handler per turn: it keeps per-run state, and a turn's runs must not meet another turn's.
            return TurnTrace(
                trace_id=trace_id,
                callbacks=[self._new_callback_handler()],
                root=root,
                context=context,
                on_failure=self._report_sdk_failure,
            )
        except Exception as error:
            context.close()
            self._report_sdk_failure(error)
            return TurnTrace()

    def _report_sdk_failure(self, error: BaseException) -> None:
        if self._sdk_failure_warning.due():
            # The exception's type only: its text could quote the turn's input.
            logger.warning(
                "Langfuse tracing failed ({}); the turn goes on untraced. Not repeated for {} minutes.",
                type(error).__name__,
                int(_FAILURE_REPORT_INTERVAL_SECONDS // 60),
            )

    async def close(self) -> None:
        """Send the queued spans and stop the SDK's threads, in a thread and for at most a few seconds."""
        if self._closed:
            return
        self._closed = True
        try:
            await asyncio.wait_for(asyncio.to_thread(self._shut_down), timeout=_CLOSE_TIMEOUT_SECONDS)
        except TimeoutError:
            logger.warning(
                "Langfuse at {} did not take the last traces within {} s; they are dropped.",
                self._host,
                _CLOSE_TIMEOUT_SECONDS,
            )

    def _shut_down(self) -> None:
        try:
            self._client.shutdown()  # flushes spans (bounded by the export timeout), then joins its threads
            self._provider.shutdown()  # ours, not the global one: stops the batch thread
        except Exception as error:
            logger.warning("Langfuse shutdown failed ({}); its last traces may be lost.", type(error).__name__)
        finally:
            for name in _EXPORT_LOGGERS:
                logging.getLogger(name).removeFilter(self._export_failure_log)


def build_tracer(settings: ObservabilitySettings, *, environment: str, release: str) -> TurnTracer | None:
    """The worker's tracer when both Langfuse keys are set, else None (and Langfuse is not even imported)."""
    public_key, secret_key = settings.langfuse_public_key, settings.langfuse_secret_key
    if not settings.tracing_enabled or public_key is None or secret_key is None:
        return None
    try:
        from langfuse import Langfuse, propagate_attributes
        from langfuse.langchain import CallbackHandler
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
    except ImportError:
        logger.warning(
            "Langfuse keys are set but the langfuse package is missing (pip install 'agentctl[tracing]'); "
            "turns are not traced."
        )
        return None
    # The SDK narrates every span at DEBUG, message texts included: never let it reach the log.
    logging.getLogger("langfuse").setLevel(logging.WARNING)
    host = settings.langfuse_host.rstrip("/")
    # A provider of our own rather than the process-wide one the SDK would otherwise install: nothing else's
    # spans reach Langfuse, and close() can stop it.
    provider = TracerProvider(resource=Resource.create({"service.name": "agentctl"}), shutdown_on_exit=False)
    export_failure_log = _ExportFailureLog(host)
    for name in _EXPORT_LOGGERS:
        logging.getLogger(name).addFilter(export_failure_log)
    try:
        client = Langfuse(
            public_key=public_key.get_secret_value(),
            secret_key=secret_key.get_secret_value(),
            base_url=host,  # base_url, not host: LANGFUSE_BASE_URL in the environment would win over host
            timeout=_EXPORT_TIMEOUT_SECONDS,
            flush_interval=_FLUSH_INTERVAL_SECONDS,
            environment=environment,
            release=release,
            sample_rate=1.0,
            tracer_provider=provider,
            otel_compression="gzip",
        )
    except Exception as error:
        for name in _EXPORT_LOGGERS:
            logging.getLogger(name).removeFilter(export_failure_log)
        logger.warning("Langfuse could not be set up ({}); turns are not traced.", type(error).__name__)
        return None
    logger.info("Langfuse tracing on: turns are traced to {}", host)
    return TurnTracer(
        client=client,
        provider=provider,
        # The handler finds the client by its public key, with all the settings above.
        new_callback_handler=lambda: CallbackHandler(public_key=public_key.get_secret_value()),
        host=host,
        propagate_attributes=propagate_attributes,
        export_failure_log=export_failure_log,
    )
