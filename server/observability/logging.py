"""One log pipeline: loguru, with the standard library's loggers (uvicorn, asyncpg, ...) routed into it."""

from __future__ import annotations

import inspect
import logging
import sys
from typing import Any

from loguru import logger

from agentctl.config import Settings
from server.observability.request_id import current_request_id

_TEXT_FORMAT = (
    "<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> <level>{level: <7}</level> "
    "<cyan>{name}</cyan> pid={process} {extra[request_id]} - <level>{message}</level>"
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
        logger.opt(depth=depth, exception=record.exc_info).log(level, record.getMessage())


def _add_request_context(record: Any) -> None:
    record["extra"].setdefault("request_id", current_request_id.get() or "-")


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
        logger.add(_write_to_stderr, serialize=True, **common)
    else:
        logger.add(_write_to_stderr, format=_TEXT_FORMAT, colorize=sys.stderr.isatty(), **common)
    # The configured level at the root too: at level 0 every DEBUG record of httpx, openai and asyncio was
    # built and routed (~2.5 ms of CPU per chat turn), and uvicorn wrapped the app in its message tracer.
    stdlib_level = 5 if level == "TRACE" else level  # the standard library has no TRACE
    logging.basicConfig(handlers=[_InterceptHandler()], level=stdlib_level, force=True)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "litestar", "asyncpg", "pgserver"):
        std_logger = logging.getLogger(name)
        std_logger.handlers = []
        std_logger.propagate = True
    # These narrate routine steps at INFO; their warnings and errors still come through.
    for chatty in ("pgserver", "piccolo", "httpx"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
