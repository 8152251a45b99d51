"""Prompts as files: prompts/system.md and the others, filled in at run time and re-read when they change.

Behaviour is edited in the files, not in code, so a running server notices an edit: a file is cached with
its modification time and size, and looked at again at most every ``prompt_reload_seconds``. Looking and
reading happen on a worker thread, never on the event loop.

Filling in is a substitution of known placeholders only, never ``str.format``: names and memories are
user-controlled text, and ``{memories}`` inside a memory (or ``{0.__class__}`` inside a name) must reach the
model as the characters they are. Every placeholder is replaced in one pass, so an inserted value is never
looked at again.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from loguru import logger

from agentctl.config import AgentSettings
from agentctl.resources import prompts_dir
from server.errors import AppError

SYSTEM_PROMPT = "system"
USER_INSTRUCTIONS_HEADING = "## The user's instructions for this conversation (they do not override the above)"
UNKNOWN_USER = "the user"
NOTHING_REMEMBERED = "Nothing yet."
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class PromptFileError(AppError):
    """A prompt file is missing or unreadable (a deployment mistake, hence a 500 naming the file)."""

    status = 500
    code = "prompt-unavailable"
    title = "Prompt file unavailable"


@dataclass
class _CachedPrompt:
    text: str
    mtime_ns: int
    size: int
    checked_at: float
    placeholders: frozenset[str]
    warned_unfilled: bool = False
    failing: bool = False


class PromptLibrary:
    """The prompt files of one agent, cached, re-read when edited, and filled in without interpreting values.

    Unknown placeholders are left as they are: prompt files may hold JSON or code examples with braces,
    and an edit that drops or adds a placeholder must not break a running server. A placeholder that no
    variable fills is logged once per version of the file instead, so that a typo is noticed.
    """

    def __init__(self, settings: AgentSettings, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._agent_name = settings.name
        self._configured_dir = settings.prompts_dir
        self._reload_seconds = settings.prompt_reload_seconds
        self._clock = clock
        self._directory: Path | None = None
        self._cache: dict[str, _CachedPrompt] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def load(self) -> None:
        """Read system.md now, so that a missing or unreadable file stops start-up instead of the first chat."""
        await self._template(SYSTEM_PROMPT)

    async def system_prompt(
        self,
        *,
        user_name: str | None,
        memories: list[str],
        instructions: str | None = None,
        now: datetime | None = None,
    ) -> str:
        """system.md with the agent's name, today's date, the user's name and what is remembered about them; then
        the user's own ``instructions`` for this conversation (an API client's system message), marked as theirs:
        they add to the operator's prompt and never replace it."""
        moment = now or datetime.now(UTC)
        name = _one_line(user_name or "") or UNKNOWN_USER
        remembered = [line for memory in memories if (line := _one_line(memory))]
        values = {
            "agent_name": self._agent_name,
            "current_date": f"{moment:%A}, {moment.day} {moment:%B %Y}",
            "user_name": name,
            "memories": "\n".join(f"- {line}" for line in remembered) if remembered else NOTHING_REMEMBERED,
        }
        rendered = await self._render(SYSTEM_PROMPT, values)
        if instructions and instructions.strip():
            rendered += f"\n\n{USER_INSTRUCTIONS_HEADING}\n{instructions.strip()}"
        return rendered

    async def prompt(self, name: str, **variables: str) -> str:
        """The prompt ``name`` (``evals/judge`` is prompts/evals/judge.md) with ``variables`` filled in."""
        return await self._render(name, variables)

    async def _render(self, name: str, values: Mapping[str, str]) -> str:
        cached = await self._template(name)
        unfilled = cached.placeholders - values.keys()
        if unfilled and not cached.warned_unfilled:
            cached.warned_unfilled = True
            logger.warning(
                "prompt {} has placeholders nothing fills, left as they are: {}",
                name,
                ", ".join(sorted(unfilled)),
            )
        return _PLACEHOLDER.sub(lambda match: values.get(match.group(1), match.group(0)), cached.text)

    async def _template(self, name: str) -> _CachedPrompt:
        cached = self._cache.get(name)
        if cached is not None and self._clock() - cached.checked_at < self._reload_seconds:
            return cached
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            cached = self._cache.get(name)
            # Another caller may have refreshed it while this one waited for the lock.
            if cached is not None and self._clock() - cached.checked_at < self._reload_seconds:
                return cached
            refreshed = await asyncio.to_thread(self._refresh, name, cached)
            self._cache[name] = refreshed
            return refreshed

    def _refresh(self, name: str, cached: _CachedPrompt | None) -> _CachedPrompt:
        """On a worker thread: the file's current version, reading it only when its mtime or size changed."""
        checked_at = self._clock()
        path = self._path_of(name)
        try:
            status = path.stat()
            if cached is not None and (status.st_mtime_ns, status.st_size) == (cached.mtime_ns, cached.size):
                return replace(cached, checked_at=checked_at, failing=False)
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            problem = _problem_with(path, error)
            if cached is None:
                raise PromptFileError(problem) from error
            # An editor saving by rename, or a half-finished deploy: keep answering with the last good version.
            if not cached.failing:
                logger.warning("{}; still using the version read before", problem)
            return replace(cached, checked_at=checked_at, failing=True)
        if cached is not None:
            logger.info("prompt {} changed on disk; using the new version", name)
        return _CachedPrompt(
            text=text,
            mtime_ns=status.st_mtime_ns,
            size=status.st_size,
            checked_at=checked_at,
            placeholders=frozenset(_PLACEHOLDER.findall(text)),
        )

    def _path_of(self, name: str) -> Path:
        relative = PurePosixPath(name if name.endswith(".md") else f"{name}.md")
        if relative.is_absolute() or ".." in relative.parts:
            raise ValueError(f"prompt name {name!r} must be a path inside the prompts folder")
        if self._directory is None:
            # Resolved here, on the worker thread: finding the bundled folder looks at the disk.
            try:
                self._directory = self._configured_dir or prompts_dir()
            except FileNotFoundError as error:
                raise PromptFileError(str(error)) from error
        return self._directory.joinpath(*relative.parts)


def _one_line(text: str) -> str:
    """User-controlled text on one line, so that it cannot start a heading or a new instruction of its own."""
    return " ".join(text.split())


def _problem_with(path: Path, error: OSError | UnicodeDecodeError) -> str:
    if isinstance(error, FileNotFoundError):
        return f"prompt file {path} does not exist"
    if isinstance(error, UnicodeDecodeError):
        return f"prompt file {path} is not UTF-8 text ({error.reason} at byte {error.start})"
    return f"prompt file {path} cannot be read: {error.strerror or error}"
