"""One log pipeline: loguru, with the standard library's loggers (uvicorn, asyncpg, ...) routed into it."""

from __future__ import annotations

import inspect
import json
import logging
import sys
import traceback
from typing import Any

from loguru import logger

from agentctl.config import Settings
from server.outages import RateLimitedLog
from server.request_context import current_request_id, current_session_id, current_user_id

_TEXT_FORMAT = (
    "<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> <level>{level: <7}</level> "
    "<cyan>{name}</cyan> pid={process} {extra[request_id]}{extra[caller]} - <level>{message}</level>"
)


class _InterceptHandler(logging.Handler):
    """Hands a stdlib record to loguru, keeping its level and the caller's location."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        frame, depth = inspect.currentframe(), 0
        while frame and (depth == 0 or frame.f_code.co_filename == logging.__file__):
            frame, depth = frame.f_back, depth + 1
        logger.bind(stdlib_logger=record.name).opt(depth=depth, exception=record.exc_info).log(
            level, record.getMessage()
        )


def _add_request_context(record: Any) -> None:
    """request_id always ("-" outside a request); user_id and session_id once the request's token said so; run_id
    in a run's task."""
    extra = record["extra"]
    extra.setdefault("request_id", current_request_id.get() or "-")
    caller = ""
    if (user_id := current_user_id.get()) is not None:
        extra.setdefault("user_id", user_id)
        caller = f" user={user_id}"
    if (session_id := current_session_id.get()) is not None:
        extra.setdefault("session_id", session_id)
        caller += f" session={session_id}"
    if (run_id := extra.get("run_id")) is not None:  # bound by the task running a run (server.chat.service)
        caller += f" run={run_id}"
    extra["caller"] = caller


_CONTEXT_FIELDS = ("request_id", "user_id", "session_id", "run_id")
_REPEAT_SECONDS = 60.0


class _RateLimitedLibraryTrouble(logging.Filter):
    """Libraries that log every failure of a dependency that is down (mem0 an ERROR per memory write, asyncpg and
    psycopg's pools a warning with a stack trace per reconnection attempt) get one WARNING line per kind of message
    a minute, without the trace; agentctl reports what it does about the failure itself."""

    def __init__(self, *libraries: str) -> None:
        super().__init__()
        self._libraries = libraries
        self._log = RateLimitedLog()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or not record.name.startswith(self._libraries):
            return True
        kind = f"{record.name}:{str(record.msg).split(':', 1)[0][:80]}"
        left_out = self._log.allows(kind)
        if left_out is None:
            return False
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.exc_info, record.exc_text = None, None
        if left_out:
            record.msg = f"{record.msg} ({left_out} more like it in the last {_REPEAT_SECONDS:g} s)"
        return True


def _json_line(record: Any) -> str:
    """One flat JSON object per line, the shape log collectors index: time, level, message, where it came
    from, the request context, and the exception when there is one."""
    extra = record["extra"]
    line: dict[str, Any] = {
        "time": record["time"].isoformat(),
        "level": record["level"].name,
        "message": record["message"],
        "logger": extra.get("stdlib_logger") or record["name"],
        "function": record["function"],
        "line": record["line"],
        "pid": record["process"].id,
    }
    line.update({field: extra[field] for field in _CONTEXT_FIELDS if extra.get(field) not in (None, "-")})
    if record["exception"] is not None:
        kind, value, trace = record["exception"]
        line["exception"] = "".join(traceback.format_exception(kind, value, trace)).rstrip()
    extra["json"] = json.dumps(line, ensure_ascii=False, default=str)
    return "{extra[json]}\n"


def _write_to_stderr(message: str) -> None:
    # Looked up on every write: whoever owns sys.stderr now (a test runner, say) gets the line.
    sys.stderr.write(message)


def configure_logging(settings: Settings) -> None:
    """Send every log line to stderr, as text for people or one JSON object per line for collectors."""
    level = settings.observability.log_level
    logger.remove()
    logger.configure(patcher=_add_request_context)
    # diagnose=False: variable values in tracebacks could include secrets.
    common: dict[str, Any] = {"level": level, "backtrace": False, "diagnose": False}
    if settings.effective_log_format == "json":
        logger.add(_write_to_stderr, format=_json_line, **common)
    else:
        logger.add(_write_to_stderr, format=_TEXT_FORMAT, colorize=sys.stderr.isatty(), **common)
    # The configured level at the root too: at level 0 every DEBUG record of httpx, openai and asyncio was
    # built and routed (~2.5 ms of CPU per chat turn), and uvicorn wrapped the app in its message tracer.
    stdlib_level = 5 if level == "TRACE" else level  # the standard library has no TRACE
    handler = _InterceptHandler()
    handler.addFilter(_RateLimitedLibraryTrouble("mem0", "asyncpg", "psycopg", "psycopg_pool"))
    logging.basicConfig(handlers=[handler], level=stdlib_level, force=True)
    for name in ("uvicorn", "uvicorn.error", "litestar", "asyncpg", "pgserver"):
        std_logger = logging.getLogger(name)
        std_logger.handlers = []
        std_logger.propagate = True
    # agentctl writes its own access log line (server.observability.http): with the request id and the caller,
    # and without the query string, which uvicorn's includes (a memory search is user text).
    logging.getLogger("uvicorn.access").disabled = True
    # These narrate routine steps at INFO; their warnings and errors still come through. Some also write
    # request bodies (the openai SDK's request options: every message) or memory texts (mem0) at DEBUG and
    # INFO, which must never reach a log, whatever the configured level.
    for chatty in ("pgserver", "piccolo", "httpx", "httpcore", "openai", "mem0", "langchain", "langgraph"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
