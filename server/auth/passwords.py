"""Password hashing (argon2id) off the event loop, and the password policy."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from prometheus_client.metrics import Counter as CounterChild

from agentctl.config import AuthSettings, Settings
from server.admission.service import OverloadedError
from server.errors import AppError
from server.threads import lower_thread_priority

_T = TypeVar("_T")


class WeakPasswordError(AppError):
    status = 422
    code = "weak-password"
    title = "Password does not meet the policy"


# A letter and a digit, in any script. The OpenAPI document states the policy with the same expressions, so that
# what a client is told is accepted is exactly what is.
LETTER = r"[^\W\d_]"
DIGIT = r"\d"
_LETTER = re.compile(LETTER)
_DIGIT = re.compile(DIGIT)


def password_problems(password: str, settings: AuthSettings) -> list[str]:
    """What the password lacks, in words a person can act on (empty when it is acceptable)."""
    problems = []
    if len(password) < settings.password_min_length:
        problems.append(f"at least {settings.password_min_length} characters")
    if len(password) > settings.password_max_length:
        problems.append(f"at most {settings.password_max_length} characters")
    if settings.password_require_letter and not _LETTER.search(password):
        problems.append("a letter")
    if settings.password_require_digit and not _DIGIT.search(password):
        problems.append("a digit")
    return problems


def password_policy_pattern(settings: AuthSettings) -> str | None:
    """The policy's character rules as one regular expression (for the OpenAPI document), if it has any."""
    lookaheads = [
        f"(?=[\\s\\S]*{rule})"
        for rule, required in ((LETTER, settings.password_require_letter), (DIGIT, settings.password_require_digit))
        if required
    ]
    return "^" + "".join(lookaheads) if lookaheads else None


def enforce_password_policy(password: str, settings: AuthSettings) -> None:
    problems = password_problems(password, settings)
    if problems:
        raise WeakPasswordError(f"the password needs {', '.join(problems)}", extra={"field": "password"})


class PasswordHashing:
    """argon2id with the configured cost, on a small pool of its own.

    A hash costs ~20 ms of CPU. On the shared default pool a burst of sign-ups ran a dozen hashes at once
    on two cores and starved the event loops (health probes slowed to 50 ms); a pool sized to this worker's
    share of the cores queues the burst instead and keeps the loop answering within a few ms. Its threads also
    run at a lower priority: 1,500 users signing up at 50/s kept both cores hashing for a minute, and chat turns
    waited behind them (time to first token p99 12 s, `bench_loadtest.py concurrency`).
    """

    def __init__(
        self,
        settings: AuthSettings,
        *,
        threads: int = 1,
        backlog_max_seconds: float | None = None,
        shed: CounterChild | None = None,
    ) -> None:
        self._threads = threads
        self._backlog_max_seconds = backlog_max_seconds
        self._shed = shed
        self._pending = 0  # calls queued or running on the pool
        self._seconds_per_call = 0.05  # a first guess, then a moving average of what calls took
        self._pool = ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix="argon2", initializer=lower_thread_priority
        )
        self._hasher = PasswordHasher(
            time_cost=settings.argon2_time_cost,
            memory_cost=settings.argon2_memory_kib,
            parallelism=settings.argon2_parallelism,
        )
        # Verified against when the email is unknown, so that both failures cost the same time.
        self._decoy_hash = self._hasher.hash(secrets.token_urlsafe(16))

    @property
    def backlog_seconds(self) -> float:
        """How long a call made now would wait and run: the calls ahead of it, times the recent time of one, over the
        threads."""
        return (self._pending + 1) * self._seconds_per_call / self._threads

    async def hash(self, password: str) -> str:
        return await self._run(self._hasher.hash, password)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        """True when ``password`` matches; with no hash (unknown user) it does the same work and says False."""
        return await self._run(self._verify, password_hash, password)

    def refuse_if_backlogged(self) -> None:
        """OverloadedError (503) when the backlog is past its bound: a call now would wait longer than a client."""
        if self._backlog_max_seconds is not None and self.backlog_seconds > self._backlog_max_seconds:
            if self._shed is not None:
                self._shed.inc()
            raise OverloadedError("too many sign-ups and sign-ins at once", self.backlog_seconds)

    async def _run(self, work: Callable[..., _T], *args: Any) -> _T:
        """``work`` on the pool; refused at once when the backlog is past its bound, rather than queued behind calls
        that would take longer than a client waits."""
        self.refuse_if_backlogged()
        self._pending += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, self._timed, work, *args)
        finally:
            self._pending -= 1

    def _timed(self, work: Callable[..., _T], *args: Any) -> _T:
        started = time.perf_counter()
        try:
            return work(*args)
        finally:  # one writer at a time per thread; a lost update only delays the average by one call
            self._seconds_per_call += 0.1 * (time.perf_counter() - started - self._seconds_per_call)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _verify(self, password_hash: str | None, password: str) -> bool:
        try:
            self._hasher.verify(password_hash or self._decoy_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
        return password_hash is not None

    def needs_rehash(self, password_hash: str) -> bool:
        """Whether the hash was made with other parameters than the configured ones (upgrade at login)."""
        return self._hasher.check_needs_rehash(password_hash)


def hashing_threads_for(settings: Settings) -> int:
    """The configured thread count, or this worker's share of the machine's cores."""
    if settings.auth.hashing_threads:
        return settings.auth.hashing_threads
    return max(1, (os.cpu_count() or 1) // settings.server.workers)
