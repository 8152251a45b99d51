"""The HTTP side of `agentctl chat`: the API contract, the token store and token renewal; no terminal I/O here."""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import re
import time
import uuid
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx

from agentctl import __version__

API_PREFIX = "/api/v1"
REQUEST_TIMEOUT_SECONDS = 30.0
# The server sends a keep-alive comment every 15 s by default: this much silence means it is gone.
STREAM_SILENCE_SECONDS = 60.0
CANCEL_TIMEOUT_SECONDS = 5.0
# A token this close to its expiry is renewed first: it could expire on the way.
EXPIRY_MARGIN = dt.timedelta(seconds=30)
# After a cancel the server releases the session a moment later; a message sent meanwhile waits this long for it.
BUSY_AFTER_CANCEL_SECONDS = 5.0
# A stream cut mid-answer is rejoined (GET /runs/{id}/stream with Last-Event-ID) this many times, after these pauses.
REJOIN_PAUSES_SECONDS = (0.2, 0.5, 1.0, 2.0, 4.0)
# Errors after which rejoining can help: the connection, not the server's answer, failed.
_CUT_CODES = frozenset({"unreachable", "timeout", "connection-lost", "stream-cut"})
SESSION_PAGE_SIZE = 100
SESSIONS_SEARCHED_AT_MOST = 1000
_STREAMING = httpx.Timeout(REQUEST_TIMEOUT_SECONDS, read=STREAM_SILENCE_SECONDS)
_ERRNO_PREFIX = re.compile(r"^\[Errno -?\d+\]\s*")


class ChatError(Exception):
    """A failure told to the user as one line; ``code`` is a stable word for --json output."""

    def __init__(self, message: str, *, code: str = "error") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class WrongPasswordError(ChatError):
    """Login refused: the server answers unknown emails and wrong passwords alike."""


class SignedOutError(ChatError):
    """The stored sign-in is no longer accepted (expired, revoked, signed out elsewhere): sign in again."""


class SessionGoneError(ChatError):
    """The session does not exist (any more): deleted elsewhere, or never this user's."""


class SessionBusyError(ChatError):
    """The session is answering another message (from this or another client)."""


class BudgetExceededError(ChatError):
    """The user's daily or monthly budget is used up: no new turn until it refills."""


def error_from_response(response: httpx.Response) -> ChatError:
    """One line from a problem+json answer (or whatever a proxy in between answered)."""
    try:
        problem = response.json()
    except ValueError:
        problem = None
    if not isinstance(problem, dict):
        problem = {}
    code = str(problem.get("type") or "").rsplit(":", 1)[-1] or f"http-{response.status_code}"
    if code == "budget-exceeded" and isinstance(problem.get("budget"), dict):
        return BudgetExceededError(budget_refusal(problem["budget"]), code=code)
    if response.status_code == 429:
        wait = response.headers.get("Retry-After", "").strip()
        when = f"in {wait} s" if wait.isdigit() else "later"
        return ChatError(f"rate limited by the server: try again {when}", code="rate-limited")
    if code == "turn-in-progress":
        return SessionBusyError(
            "this session is busy answering another message: wait for it to finish, or use another session", code=code
        )
    detail = problem.get("detail") or problem.get("title") or f"{response.status_code} {response.reason_phrase}"
    return ChatError(f"the server refused: {detail}", code=code)


def parse_moment(text: str | None) -> dt.datetime | None:
    """A server's ISO timestamp as an aware datetime (a naive one is UTC); None when missing or unreadable."""
    try:
        moment = dt.datetime.fromisoformat(text or "")
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)


def budget_amount(kind: str, value: float) -> str:
    """Tokens as a whole number with thousands separators, a cost in US dollars to four places."""
    return f"{int(value):,}" if kind == "tokens" else f"${value:,.4f}"


def describe_refill(refills_at: str | None) -> str:
    """When a budget refills, in local time and from now: "at 2026-12-04 01:00 CET (in 15 h 41 min)"."""
    moment = parse_moment(refills_at)
    if moment is None:
        return "later"
    local = moment.astimezone()
    minutes = max(0, int((moment - dt.datetime.now(dt.UTC)).total_seconds() + 59) // 60)
    days, rest = divmod(minutes, 24 * 60)
    hours, minutes = divmod(rest, 60)
    wait = " ".join(f"{amount} {unit}" for amount, unit in ((days, "d"), (hours, "h"), (minutes, "min")) if amount)
    return f"at {local:%Y-%m-%d %H:%M} {local.tzname() or ''}".rstrip() + f" (in {wait or 'a moment'})"


def budget_refusal(budget: dict[str, Any]) -> str:
    """The one line a turn refused for the budget prints: which budget, spent against the limit, when it refills."""
    kind = str(budget.get("kind") or "tokens")
    period = "daily" if budget.get("period") == "day" else "monthly"
    what = "token" if kind == "tokens" else "cost"
    spent = budget_amount(kind, float(budget.get("spent") or 0))
    limit = budget_amount(kind, float(budget.get("limit") or 0))
    unit = " tokens" if kind == "tokens" else ""
    return (
        f"your {period} {what} budget is used up: {spent} of {limit}{unit} spent; "
        f"it refills {describe_refill(budget.get('refills_at'))}"
    )


def _expires_soon(expires_at: str | None) -> bool:
    moment = parse_moment(expires_at)
    return moment is None or moment - EXPIRY_MARGIN <= dt.datetime.now(dt.UTC)


@dataclass
class Profile:
    """One server's sign-in and the session last used there, as stored on disk."""

    email: str
    access_token: str
    access_expires_at: str
    refresh_token: str
    last_session_id: str | None = None


class TokenStore:
    """Sign-ins per server URL, in one JSON file only its owner can read (0600) in the user's config directory.

    Refresh tokens are single-use and spending one twice revokes the whole sign-in, so two `agentctl chat` at
    once must not both spend the same one: each renewal happens under an exclusive lock on the file, and a
    process that finds newer tokens there takes them instead of renewing.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / "credentials.json"
        self._lock_path = directory / "credentials.lock"
        self._lock_depth = 0
        self._lock_file: int | None = None

    def ensure_directory(self) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive across processes; re-entrant within this one (flock would deadlock on a second descriptor)."""
        if self._lock_depth == 0:
            self.ensure_directory()
            self._lock_file = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(self._lock_file, fcntl.LOCK_EX)
        self._lock_depth += 1
        try:
            yield
        finally:
            self._lock_depth -= 1
            if self._lock_depth == 0 and self._lock_file is not None:
                os.close(self._lock_file)  # closing releases the lock
                self._lock_file = None

    def _read_all(self) -> dict[str, Any]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {"servers": {}}
        except OSError as error:
            raise ChatError(f"cannot read {self.path}: {error.strerror}", code="credentials") from None
        try:
            data = json.loads(text)
        except ValueError:
            raise ChatError(f"{self.path} is not valid JSON: delete it and sign in again", code="credentials") from None
        if not isinstance(data, dict) or not isinstance(data.get("servers"), dict):
            raise ChatError(f"{self.path} is not a credentials file: delete it and sign in again", code="credentials")
        return data

    def _write_all(self, data: dict[str, Any]) -> None:
        """Atomically, and never readable by others, not even for an instant."""
        self.ensure_directory()
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                json.dump(data, handle, indent=2)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self.path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()

    def load(self, server: str) -> Profile | None:
        entry = self._read_all()["servers"].get(server)
        if not isinstance(entry, dict):
            return None
        try:
            return Profile(**entry)
        except TypeError:
            return None  # written by another version: sign in again rather than guess

    def save(self, server: str, profile: Profile) -> None:
        with self.locked():
            data = self._read_all()
            data["servers"][server] = asdict(profile)
            self._write_all(data)

    def forget(self, server: str) -> None:
        with self.locked():
            data = self._read_all()
            if data["servers"].pop(server, None) is not None:
                self._write_all(data)


@dataclass
class SessionSummary:
    id: str
    name: str
    updated_at: str


@dataclass
class ActiveSession:
    """The session being talked to, with its session-scoped token (kept in memory only)."""

    id: str
    name: str
    token: str
    expires_at: str


@dataclass(frozen=True)
class StreamEvent:
    kind: str
    data: dict[str, Any]
    id: str | None = None  # "<run id>:<number>": where a rejoin picks up

    @property
    def final(self) -> bool:
        return self.kind in ("done", "error")


def parse_sse(lines: Iterable[str]) -> Iterator[StreamEvent]:
    """Server-sent events whose data is JSON; comments (the server's keep-alives) are skipped."""
    kind, data, event_id = "message", list[str](), None
    for line in lines:
        if not line:
            if data:
                try:
                    payload = json.loads("\n".join(data))
                except ValueError:
                    raise ChatError("the server sent an event that is not JSON", code="bad-stream") from None
                yield StreamEvent(kind, payload if isinstance(payload, dict) else {"content": str(payload)}, event_id)
            kind, data, event_id = "message", [], None
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            kind = value
        elif name == "id":
            event_id = value
        elif name == "data":
            data.append(value)


@dataclass
class SessionPage:
    items: list[SessionSummary] = field(default_factory=list)
    total: int = 0


class ChatClient:
    """The agentctl API as the terminal client uses it; tokens are renewed when they expire and saved at once."""

    def __init__(self, server_url: str, store: TokenStore, *, api_key: str | None = None) -> None:
        """``api_key``: act with it instead of a signed-in user's tokens (nothing is read from or saved to the
        store then)."""
        self.server_url = server_url.rstrip("/")
        self._store = store
        self._api_key = api_key
        self._http = httpx.Client(
            base_url=self.server_url + API_PREFIX,
            timeout=REQUEST_TIMEOUT_SECONDS,
            headers={"User-Agent": f"agentctl-chat/{__version__}"},
        )
        self.profile = None if api_key else store.load(self.server_url)
        self.session: ActiveSession | None = None
        self._busy_grace_until = 0.0

    def __enter__(self) -> ChatClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._http.close()

    # -- transport

    def _send(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        stream: bool = False,
        timeout: httpx.Timeout | float | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        headers = {**kwargs.pop("headers", {}), **({"Authorization": f"Bearer {token}"} if token else {})}
        request = self._http.build_request(
            method, path, headers=headers, timeout=timeout or REQUEST_TIMEOUT_SECONDS, **kwargs
        )
        try:
            return self._http.send(request, stream=stream)
        except httpx.TransportError as error:
            raise self._transport_error(error) from None

    def _transport_error(self, error: httpx.TransportError) -> ChatError:
        reason = _ERRNO_PREFIX.sub("", str(error)) or type(error).__name__
        if isinstance(error, httpx.ConnectError):
            return ChatError(
                f"cannot reach the agentctl server at {self.server_url} ({reason}); is `agentctl serve` running?",
                code="unreachable",
            )
        if isinstance(error, httpx.TimeoutException):
            return ChatError(f"the agentctl server at {self.server_url} did not answer in time", code="timeout")
        return ChatError(f"lost the connection to {self.server_url} ({reason})", code="connection-lost")

    @staticmethod
    def _checked(response: httpx.Response) -> Any:
        if response.is_success:
            return response.json() if response.content else None
        raise error_from_response(response)

    # -- signing in

    @property
    def signed_in(self) -> bool:
        return self._api_key is not None or self.profile is not None

    def ensure_reachable(self) -> None:
        """Fail with one line now, rather than after the user typed a password for a server that is not there."""
        self._send("GET", f"{self.server_url}/health")

    def _require_profile(self) -> Profile:
        if self.profile is None:
            raise SignedOutError(f"not signed in to {self.server_url}", code="signed-out")
        return self.profile

    def login(self, email: str, password: str) -> None:
        response = self._send("POST", "/auth/login", json={"email": email, "password": password})
        if response.status_code == 401:
            raise WrongPasswordError("wrong email or password", code="unauthorized")
        pair = self._checked(response)
        self._signed_in_as(email, pair["access_token"], pair["expires_at"], pair["refresh_token"])

    def register(self, email: str, password: str, username: str | None = None) -> None:
        body = {"email": email, "password": password, **({"username": username} if username else {})}
        response = self._send("POST", "/auth/register", json=body)
        if response.status_code == 409:
            raise WrongPasswordError(f"wrong password: {email} already has an account", code="unauthorized")
        created = self._checked(response)
        token = created["token"]
        self._signed_in_as(email, token["access_token"], token["expires_at"], created["refresh_token"])

    def _signed_in_as(self, email: str, access_token: str, expires_at: str, refresh_token: str) -> None:
        # Signing in again as the same user (after an expiry) goes back to the session they were in.
        previous = self.profile or self._store.load(self.server_url)
        last_session = previous.last_session_id if previous and previous.email == email else None
        self.profile = Profile(email, access_token, expires_at, refresh_token, last_session)
        self._store.save(self.server_url, self.profile)

    def logout(self) -> str | None:
        """Revoke the sign-in on the server and forget it here; returns why the server could not be told, if so."""
        if self.profile is None:
            return None
        problem = None
        try:
            self._checked(self._user_call("POST", "/auth/logout"))
        except SignedOutError:
            pass  # already dead on the server
        except ChatError as error:
            problem = error.message
        self._store.forget(self.server_url)
        self.profile = None
        return problem

    def _user_token(self, *, renew: bool = False) -> str:
        """The signed-in user's access token (renewed when it expires soon, or when ``renew``), or the API key."""
        if self._api_key is not None:
            return self._api_key
        profile = self._require_profile()
        if not renew and not _expires_soon(profile.access_expires_at):
            return profile.access_token
        with self._store.locked():
            on_disk = self._store.load(self.server_url)
            if on_disk is None or on_disk.email != profile.email:
                self.profile = None
                raise SignedOutError(f"signed out of {self.server_url} elsewhere: sign in again", code="signed-out")
            if on_disk.refresh_token != profile.refresh_token:
                # Another agentctl renewed meanwhile and spent the refresh token this process holds: take its pair.
                profile = self.profile = replace(on_disk, last_session_id=profile.last_session_id)
                if not _expires_soon(profile.access_expires_at):
                    return profile.access_token
            response = self._send("POST", "/auth/refresh", json={"refresh_token": profile.refresh_token})
            if response.status_code == 401:
                self._store.forget(self.server_url)
                self.profile = None
                raise SignedOutError("your sign-in has expired or was revoked: sign in again", code="signed-out")
            pair = self._checked(response)
            self.profile = replace(
                profile,
                access_token=pair["access_token"],
                access_expires_at=pair["expires_at"],
                refresh_token=pair["refresh_token"],
            )
            self._store.save(self.server_url, self.profile)  # at once: the old refresh token is spent
            return self.profile.access_token

    def _user_call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """A request with the user token; a 401 (expired, revoked) is retried once with a renewed token."""
        response = self._send(method, path, token=self._user_token(), **kwargs)
        if response.status_code == 401 and self._api_key is None:  # a key is never renewed: its refusal stands
            response = self._send(method, path, token=self._user_token(renew=True), **kwargs)
        return response

    # -- sessions

    def open_session(self, *, choice: str | None = None, new: bool = False) -> ActiveSession:
        """The session named by ``choice``, else a new one if asked, else the last one used, else a new one."""
        if choice:
            return self.switch_session(self.find_session(choice).id)
        if new:
            return self.new_session()
        last = self._require_profile().last_session_id if self._api_key is None else None
        if last:
            with contextlib.suppress(SessionGoneError):
                return self.switch_session(last)
        recent = self.list_sessions(limit=1)
        if recent.items:
            return self.switch_session(recent.items[0].id)
        return self.new_session()

    def new_session(self, name: str = "") -> ActiveSession:
        created = self._checked(self._user_call("POST", "/auth/session"))
        self._use_session(created)
        if name:
            self.rename_session(name)
        return self._require_session()

    def switch_session(self, session_id: str) -> ActiveSession:
        response = self._user_call("POST", f"/auth/session/{session_id}/token")
        if response.status_code == 404:
            raise SessionGoneError(f"no session {session_id}", code="session-not-found")
        self._use_session(self._checked(response))
        return self._require_session()

    def _use_session(self, issued: dict[str, Any]) -> None:
        token = issued["token"]
        self.session = ActiveSession(
            id=str(issued["session_id"]),
            name=issued.get("name") or "",
            token=token["access_token"],
            expires_at=token["expires_at"],
        )
        if self._api_key is not None:
            return  # a key keeps no profile: which session comes next is for its script to say
        profile = self._require_profile()
        if profile.last_session_id != self.session.id:
            with self._store.locked():
                # Save over what is on disk: another process may have renewed the tokens meanwhile.
                on_disk = self._store.load(self.server_url)
                if on_disk is not None and on_disk.email == profile.email:
                    profile = on_disk
                self.profile = replace(profile, last_session_id=self.session.id)
                self._store.save(self.server_url, self.profile)

    def _require_session(self) -> ActiveSession:
        if self.session is None:
            raise ChatError("no session is open", code="no-session")
        return self.session

    def _session_call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """A request with the session token; an expired or refused one is replaced once with a fresh one."""
        session = self._require_session()
        if _expires_soon(session.expires_at):
            session = self.switch_session(session.id)
        response = self._send(method, path, token=session.token, **kwargs)
        if response.status_code == 401:
            response.close()
            session = self.switch_session(session.id)  # SessionGoneError if it was deleted meanwhile
            response = self._send(method, path, token=session.token, **kwargs)
        return response

    def list_sessions(self, *, limit: int = 20, offset: int = 0) -> SessionPage:
        page = self._checked(self._user_call("GET", "/auth/sessions", params={"limit": limit, "offset": offset}))
        items = [SessionSummary(str(item["session_id"]), item["name"], item["updated_at"]) for item in page["items"]]
        return SessionPage(items=items, total=page["total"])

    def all_sessions(self) -> list[SessionSummary]:
        """Every session of the user, most recently active first (bounded, for a user with thousands)."""
        found: list[SessionSummary] = []
        while len(found) < SESSIONS_SEARCHED_AT_MOST:
            page = self.list_sessions(limit=SESSION_PAGE_SIZE, offset=len(found))
            found.extend(page.items)
            if not page.items or len(found) >= page.total:
                break
        return found

    def find_session(self, choice: str) -> SessionSummary:
        return match_session(choice, self.all_sessions())

    def rename_session(self, name: str) -> None:
        session = self._require_session()
        renamed = self._checked(self._user_call("PATCH", f"/auth/session/{session.id}/name", json={"name": name}))
        session.name = renamed["name"]

    # -- the conversation

    @contextlib.contextmanager
    def stream_turn(
        self, text: str, *, on_rejoin: Callable[[int, int], None] | None = None
    ) -> Iterator[Iterator[StreamEvent]]:
        """Send one message and yield the answer's events as they arrive; a stream cut mid-answer is rejoined where
        it stopped (``on_rejoin(attempt, attempts)`` is told); leaving early hangs up (the answer goes on)."""
        body = {"messages": [{"role": "user", "content": text}]}
        response = self._turn_started(
            lambda: self._session_call("POST", "/chatbot/chat/stream", json=body, stream=True, timeout=_STREAMING), 200
        )
        events = self._resumable(response, response.headers.get("X-Run-Id"), on_rejoin)
        try:
            yield events
        finally:
            events.close()

    @contextlib.contextmanager
    def follow_run(
        self, run_id: str, *, on_rejoin: Callable[[int, int], None] | None = None
    ) -> Iterator[Iterator[StreamEvent]]:
        """The events of a run already under way, from its start, then live ones until it ends."""
        events = self._resumable(self._open_run_stream(run_id, None), run_id, on_rejoin)
        try:
            yield events
        finally:
            events.close()

    def _turn_started(self, send: Callable[[], httpx.Response], expected: int) -> httpx.Response:
        """The answer to a request that starts a turn; a "busy" refusal while a turn just cancelled is still letting
        go of the session is asked again."""
        while True:
            response = send()
            if response.status_code == expected:
                return response
            response.read()
            response.close()
            error = error_from_response(response)
            if not (isinstance(error, SessionBusyError) and time.monotonic() < self._busy_grace_until):
                raise error
            time.sleep(0.2)  # the turn just cancelled is still letting go of the session

    def edit_message(self, message_id: str, text: str) -> dict[str, Any]:
        """Ask again with a user message's new text (the conversation goes on from just before it; the old version
        stays a branch): the run that answers it, to follow."""
        response = self._turn_started(
            lambda: self._session_call("POST", f"/chatbot/messages/{message_id}/edit", json={"content": text}), 202
        )
        return dict(response.json())

    def regenerate(self, message_id: str) -> dict[str, Any]:
        """Another answer to a user message (the earlier one stays a branch): the run that gives it, to follow."""
        response = self._turn_started(
            lambda: self._session_call("POST", f"/chatbot/messages/{message_id}/regenerate", json={}), 202
        )
        return dict(response.json())

    def switch_branch(self, message_id: str) -> list[dict[str, Any]]:
        """Make the branch holding the user message ``message_id`` the conversation again: its messages."""
        return self._checked(self._session_call("POST", f"/chatbot/messages/{message_id}/branch"))["messages"]

    def answer_approval(self, decisions: list[dict[str, Any]]) -> dict[str, Any]:
        """Send a decision on each tool call awaiting approval (approve; edit, with its arguments; reject, with an
        optional reason): the run that goes on with them, to follow."""
        response = self._turn_started(
            lambda: self._session_call("POST", "/chatbot/approval", json={"decisions": decisions}), 202
        )
        return dict(response.json())

    def run(self, run_id: str) -> dict[str, Any]:
        """One run of the session: its input, status and answer."""
        return dict(self._checked(self._session_call("GET", f"/chatbot/runs/{run_id}")))

    def usage(self) -> dict[str, Any]:
        """What the user spent today and this month, against their budget (limits None: unlimited)."""
        return dict(self._checked(self._user_call("GET", "/auth/me/usage")))

    def active_run(self) -> dict[str, Any] | None:
        """The session's run still being answered (one a reloaded client should show), if any."""
        page = self._checked(self._session_call("GET", "/chatbot/runs", params={"active": "true", "limit": 1}))
        return page["items"][0] if page["items"] else None

    def _open_run_stream(self, run_id: str, last_event_id: str | None) -> httpx.Response:
        headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
        response = self._session_call(
            "GET", f"/chatbot/runs/{run_id}/stream", headers=headers, stream=True, timeout=_STREAMING
        )
        if response.status_code != 200:
            response.read()
            response.close()
            raise error_from_response(response)
        return response

    def _resumable(
        self, response: httpx.Response, run_id: str | None, on_rejoin: Callable[[int, int], None] | None
    ) -> Generator[StreamEvent]:
        """The run's events; when the stream is cut before its last event, rejoined after the last event received,
        a bounded number of times."""
        last_id: str | None = None
        attempt = 0
        while True:
            try:
                for event in self._events_of(response):
                    last_id = event.id or last_id
                    attempt = 0  # events flow again: the next cut gets every attempt anew
                    yield event
                    if event.final:
                        return
            except ChatError as error:
                if error.code not in _CUT_CODES or run_id is None or attempt >= len(REJOIN_PAUSES_SECONDS):
                    raise
            finally:
                response.close()
            if run_id is None or attempt >= len(REJOIN_PAUSES_SECONDS):
                return  # cut for good: the caller says the answer is incomplete
            while True:
                attempt += 1
                if on_rejoin is not None:
                    on_rejoin(attempt, len(REJOIN_PAUSES_SECONDS))
                time.sleep(REJOIN_PAUSES_SECONDS[attempt - 1])
                try:
                    response = self._open_run_stream(run_id, last_id)
                    break
                except ChatError as error:
                    if error.code not in _CUT_CODES or attempt >= len(REJOIN_PAUSES_SECONDS):
                        raise

    def _events_of(self, response: httpx.Response) -> Iterator[StreamEvent]:
        try:
            yield from parse_sse(response.iter_lines())
        except httpx.TimeoutException:
            raise ChatError(
                f"the server went silent for {STREAM_SILENCE_SECONDS:.0f} s in the middle of an answer", code="timeout"
            ) from None
        except httpx.TransportError as error:
            raise self._transport_error(error) from None

    def cancel_turn(self) -> bool:
        """Tell the server to stop the session's running turn; True if one was running."""
        self._busy_grace_until = time.monotonic() + BUSY_AFTER_CANCEL_SECONDS
        response = self._session_call("POST", "/chatbot/cancel", timeout=CANCEL_TIMEOUT_SECONDS)
        return bool(self._checked(response)["cancelled"])

    def history(self) -> list[dict[str, Any]]:
        return list(self._conversation()["messages"])

    def pending_approval(self) -> list[dict[str, Any]]:
        """The session's tool calls awaiting the user's decision (the client that saw them left before answering)."""
        approval = self._conversation().get("approval")
        return list(approval["calls"]) if approval else []

    def _conversation(self) -> dict[str, Any]:
        return dict(self._checked(self._session_call("GET", "/chatbot/messages")))

    def clear_history(self) -> None:
        self._checked(self._session_call("DELETE", "/chatbot/messages"))

    # -- long-term memory

    def memories(self, query: str = "", *, limit: int = 20) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit, **({"query": query} if query else {})}
        return self._checked(self._user_call("GET", "/memories", params=params))["memories"]

    def forget_memory(self, memory_id: str) -> None:
        response = self._user_call("DELETE", f"/memories/{memory_id}")
        if response.status_code == 404:
            raise ChatError(f"no memory {memory_id}", code="not-found")
        self._checked(response)

    def forget_all_memories(self) -> int:
        return int(self._checked(self._user_call("DELETE", "/memories"))["deleted"])


def match_session(choice: str, sessions: list[SessionSummary]) -> SessionSummary:
    """A session by its id, a unique id prefix, its name (case-insensitive) or a unique name prefix."""
    wanted = choice.strip()
    folded = wanted.casefold()
    with contextlib.suppress(ValueError):
        wanted = str(uuid.UUID(wanted))
    for matches in (
        [s for s in sessions if s.id == wanted],
        [s for s in sessions if s.name.casefold() == folded],
        [s for s in sessions if len(wanted) >= 4 and s.id.startswith(wanted.lower())],
        [s for s in sessions if s.name.casefold().startswith(folded)],
    ):
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            names = ", ".join(f"{s.id[:8]} {s.name!r}" for s in matches[:5])
            raise ChatError(f"{choice!r} matches several sessions ({names}): be more precise", code="ambiguous")
    raise SessionGoneError(f"no session matches {choice!r}", code="session-not-found")
