"""Chat scenario: users sign up, open a session and chat (streamed and not), read history, start new sessions.

Run it with `agentctl loadtest` (the default scenario), or by hand, as a subprocess — never import Locust
into agentctl's own process (gevent's monkey-patching stalls asyncio's threads)::

    python -m locust -f loadtests/chat_scenario.py --headless -u 20 -r 5 -t 60s --host http://127.0.0.1:8000

Each user registers once, logs in and opens a session, then loops: pick an action by weight, do it, think.
A streamed turn is read to its last event; its time to first token is its own Locust entry (request type
``TTFT``), so Locust aggregates it across worker processes like any request. A request the server sheds (503
with problem type ``overloaded``, or 429, with ``Retry-After``) is not a failure: it is recorded under request type
``SHED`` with its endpoint's name and the time the refusal took, and the user waits ``Retry-After`` seconds (at most
MAX_RETRY_AFTER_SECONDS) before its next action; a shed sign-up or login is tried again after that wait. The
scenario's options are
Locust custom arguments (shown by ``--help``; workers receive the master's), also settable as environment
variables ``LOCUST_CHAT_WEIGHT`` etc. ``--agentctl-summary PATH`` writes the failures by cause at the end.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from dataclasses import dataclass
from typing import Any

import gevent
from locust import FastHttpUser, events, task
from locust.env import Environment

API = "/api/v1"
REGISTER = "POST /api/v1/auth/register"
LOGIN = "POST /api/v1/auth/login"
SESSION = "POST /api/v1/auth/session"
CHAT = "POST /api/v1/chatbot/chat"
STREAM = "POST /api/v1/chatbot/chat/stream"
HISTORY = "GET /api/v1/chatbot/messages"
STREAM_DROPPED = "POST /api/v1/chatbot/chat/stream (dropped)"
REJOIN_STREAM = "GET /api/v1/chatbot/runs/{id}/stream"
TTFT = "TTFT"  # the request type of the time-to-first-token entries
REJOIN = "REJOIN"  # the request type of the rejoin-latency entries: request to first replayed event
SHED = "SHED"  # the request type of requests the server refused for load (503 overloaded, 429), with Retry-After
MAX_RETRY_AFTER_SECONDS = 30.0  # a longer Retry-After is obeyed for this long only: the run has an end
PASSWORD = "Load-test-password-7"
ACTIONS = ("chat", "stream", "history", "new_session", "drop_rejoin")
_WORDS = ("what", "should", "I", "cook", "tonight", "with", "rice", "beans", "and", "a", "few", "tomatoes",
          "please", "explain", "the", "steps", "then", "suggest", "a", "dessert")  # fmt: skip
_run_id = uuid.uuid4().hex[:8]


@events.init_command_line_parser.add_listener
def _add_arguments(parser: Any) -> None:
    for action, default in zip(ACTIONS, (3, 6, 1, 0.2, 0), strict=True):
        parser.add_argument(
            f"--{action.replace('_', '-')}-weight",
            type=float,
            default=default,
            env_var=f"LOCUST_{action.upper()}_WEIGHT",
            help=f"Relative weight of the {action.replace('_', ' ')} action (default {default}).",
        )
    parser.add_argument(
        "--message-words",
        default="5-40",
        env_var="LOCUST_MESSAGE_WORDS",
        help="Words per user message: N or MIN-MAX (default 5-40).",
    )
    parser.add_argument(
        "--think-time",
        default="1-3",
        env_var="LOCUST_THINK_TIME",
        help="Seconds a user waits between actions: S or MIN-MAX (default 1-3; 0 for none).",
    )
    parser.add_argument(
        "--agentctl-summary",
        default="",
        include_in_web_ui=False,
        help="Write the failures by cause, as JSON, to this file when Locust quits (master or standalone).",
    )


def _span(text: str) -> tuple[float, float]:
    """'3' -> (3, 3); '1-3' -> (1, 3)."""
    low, _, high = str(text).partition("-")
    return float(low), float(high or low)


@events.test_start.add_listener
def _check_options(environment: Environment, **_: Any) -> None:
    options = environment.parsed_options
    if options is None:
        return
    _span(options.message_words)
    _span(options.think_time)
    if sum(getattr(options, f"{action}_weight") for action in ACTIONS) <= 0:
        raise ValueError("the action weights add up to zero")


_workers_seen = 0
_environment: Environment | None = None


@events.init.add_listener
def _keep_environment(environment: Environment, **_: Any) -> None:
    global _environment
    _environment = environment


@events.spawning_complete.add_listener
def _count_workers(**_: Any) -> None:
    from locust.runners import MasterRunner

    global _workers_seen
    if _environment is not None and isinstance(_environment.runner, MasterRunner):
        _workers_seen = max(_workers_seen, _environment.runner.worker_count)


@events.quitting.add_listener
def _write_summary(environment: Environment, **_: Any) -> None:
    """Failures by cause (exact, unlike the CSV written every second) and how many workers took part."""
    from locust.runners import WorkerRunner

    options = environment.parsed_options
    if options is None or not options.agentctl_summary or isinstance(environment.runner, WorkerRunner):
        return
    errors = [
        {"method": error.method, "name": error.name, "error": str(error.error), "occurrences": error.occurrences}
        for error in environment.stats.errors.values()
    ]
    with open(options.agentctl_summary, "w", encoding="utf-8") as file:
        json.dump({"run_id": _run_id, "workers": _workers_seen, "errors": errors}, file)


class ChatUser(FastHttpUser):
    """One person using the agent: signs up once, then chats in a session, now and then in a new one."""

    session_token = ""
    user_token = ""
    retry_at = 0.0  # perf_counter time before which the server asked not to be called again (Retry-After)
    shed = False  # whether the last _json_call was shed

    def wait_time(self) -> float:
        low, high = _span(self.environment.parsed_options.think_time)
        return max(random.uniform(low, high), self.retry_at - time.perf_counter())

    def on_start(self) -> None:
        email = f"load-{_run_id}-{uuid.uuid4().hex[:12]}@example.com"
        body = {"email": email, "password": PASSWORD}
        if self._call_until_admitted("POST", "/auth/register", REGISTER, 201, body=body) is None:
            self.stop()
            return
        login = self._call_until_admitted("POST", "/auth/login", LOGIN, 200, body=body)
        if login is None:
            self.stop()
            return
        self.user_token = login["access_token"]
        self.new_session()

    def _call_until_admitted(
        self, method: str, path: str, name: str, expected: int, *, body: Any
    ) -> dict[str, Any] | None:
        """Sign-up and login: tried again after each Retry-After while shed (Locust ends the user with the run)."""
        while True:
            answer = self._json_call(method, path, name, expected, body=body)
            if not self.shed:
                return answer
            gevent.sleep(max(0.0, self.retry_at - time.perf_counter()))

    @task
    def act(self) -> None:
        options = self.environment.parsed_options
        if not self.session_token:
            self.new_session()
            return
        weights = [getattr(options, f"{action}_weight") for action in ACTIONS]
        getattr(self, random.choices(ACTIONS, weights)[0])()

    def new_session(self) -> None:
        answer = self._json_call("POST", "/auth/session", SESSION, 201, token=self.user_token)
        self.session_token = answer["token"]["access_token"] if answer else ""

    def chat(self) -> None:
        answer = self._json_call("POST", "/chatbot/chat", CHAT, 200, body=self._message(), token=self.session_token)
        if answer is not None and not answer.get("messages"):
            self._report_late_failure(CHAT, "answer without messages")

    def history(self) -> None:
        self._json_call("GET", "/chatbot/messages", HISTORY, 200, token=self.session_token)

    def stream(self) -> None:
        """A streamed turn, read to its last event; its time to first token goes to its own entry."""
        began = time.perf_counter()
        with self.client.request(
            "POST",
            f"{API}/chatbot/chat/stream",
            name=STREAM,
            json=self._message(),
            headers={"Authorization": f"Bearer {self.session_token}", "Accept": "text/event-stream"},
            stream=True,
            catch_response=True,
        ) as response:
            if self._was_shed(response):
                return
            if response.status_code != 200:
                response.failure(_http_failure(response))
                return
            read = _read_to_end(response, began, timed_kind="token")
            if read.failure:
                response.failure(read.failure)
            elif read.first_ms is None:
                response.failure("stream without a token event")
            else:
                response.success()
        self._measured(TTFT, STREAM, read.first_ms)

    def drop_rejoin(self) -> None:
        """A streamed turn whose connection drops after a few tokens (a phone that slept), then rejoined with
        Last-Event-ID and read to its end; the time from the rejoin request to its first event goes to REJOIN."""
        run_id, last_id = "", ""
        with self.client.request(
            "POST",
            f"{API}/chatbot/chat/stream",
            name=STREAM_DROPPED,
            json=self._message(),
            headers={"Authorization": f"Bearer {self.session_token}", "Accept": "text/event-stream"},
            stream=True,
            catch_response=True,
        ) as response:
            if self._was_shed(response):
                return
            if response.status_code != 200:
                response.failure(_http_failure(response))
                return
            run_id = response.headers.get("X-Run-Id") or ""
            tokens, wanted, ended = 0, random.randint(1, 5), False
            for line in _lines(response):
                if line.startswith("id:"):
                    last_id = line[3:].strip()
                elif line.startswith("event:"):
                    tokens += line[6:].strip() == "token"
                    ended = line[6:].strip() in ("done", "error")
                if tokens >= wanted or ended:
                    break  # hang up mid-answer
            if not run_id:
                response.failure("stream without an X-Run-Id header")
                return
            response.success()
        if ended:
            return  # the answer was shorter than the drop: nothing to rejoin
        began = time.perf_counter()
        with self.client.request(
            "GET",
            f"{API}/chatbot/runs/{run_id}/stream",
            name=REJOIN_STREAM,
            headers={"Authorization": f"Bearer {self.session_token}", "Last-Event-ID": last_id},
            stream=True,
            catch_response=True,
        ) as response:
            if self._was_shed(response):
                return
            if response.status_code != 200:
                response.failure(_http_failure(response))
                return
            read = _read_to_end(response, began, timed_kind=None)
            if read.failure:
                response.failure(read.failure)
            else:
                response.success()
        self._measured(REJOIN, REJOIN_STREAM, read.first_ms)

    def _measured(self, request_type: str, name: str, milliseconds: float | None) -> None:
        """A measurement of its own (TTFT, REJOIN) beside the request it was taken in."""
        if milliseconds is not None:
            self.environment.events.request.fire(
                request_type=request_type,
                name=name,
                response_time=milliseconds,
                response_length=0,
                exception=None,
                context={},
            )

    def _message(self) -> dict[str, Any]:
        low, high = _span(self.environment.parsed_options.message_words)
        count = random.randint(int(low), max(int(low), int(high)))
        text = " ".join(random.choices(_WORDS, k=max(1, count)))
        return {"messages": [{"role": "user", "content": text}]}

    def _json_call(
        self, method: str, path: str, name: str, expected: int, *, body: Any = None, token: str = ""
    ) -> dict[str, Any] | None:
        """One JSON request; a wrong status or a body that is not JSON is a failure, and None."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        with self.client.request(
            method, f"{API}{path}", name=name, json=body, headers=headers, catch_response=True
        ) as response:
            self.shed = self._was_shed(response)
            if self.shed:
                return None
            if response.status_code != expected:
                response.failure(_http_failure(response))
                return None
            try:
                return response.json()
            except ValueError:
                response.failure("the body is not JSON")
                return None

    def _was_shed(self, response: Any) -> bool:
        """Whether the server refused the request for load; if so it is re-recorded as a SHED entry (its endpoint's
        name, the refusal's latency), not a failure, and the user holds off for Retry-After seconds."""
        retry_after = _shed_retry_after(response)
        if retry_after is None:
            return False
        response.request_meta["request_type"] = SHED
        response.success()
        self.retry_at = time.perf_counter() + retry_after
        return True

    def _report_late_failure(self, name: str, reason: str) -> None:
        self.environment.events.request.fire(
            request_type="CHECK", name=name, response_time=0, response_length=0, exception=Exception(reason)
        )


@dataclass
class _StreamRead:
    first_ms: float | None = None  # until the first event of the timed kind (any kind if None)
    failure: str = ""  # why the stream counts as failed; empty when it ended with done


def _read_to_end(response: Any, began: float, *, timed_kind: str | None) -> _StreamRead:
    """Read an SSE response to its end; Locust timed only its head, so its time becomes the whole stream's."""
    read, event, error, done = _StreamRead(), "", "", False
    try:
        for line in _lines(response):
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                if read.first_ms is None and timed_kind in (None, event):
                    read.first_ms = (time.perf_counter() - began) * 1000
                if event == "error":
                    error = _error_detail(line[5:])
                elif event == "done":
                    done = True
    except Exception as failure:  # a connection cut mid-stream is a result to count, not a crash
        error = f"stream cut: {type(failure).__name__}"
    response.request_meta["response_time"] = (time.perf_counter() - began) * 1000
    if error:
        read.failure = error if error.startswith("stream cut") else f"error event: {error}"
    elif not done:
        read.failure = "stream ended without a done event"
    return read


def _lines(response: Any) -> Any:
    """The lines of a streamed body, as they arrive."""
    buffer = ""
    for chunk in response.iter_content(chunk_size=4096):
        buffer += chunk if isinstance(chunk, str) else chunk.decode("utf-8", "replace")
        while "\n" in buffer:
            line, buffer = buffer.split("\n", 1)
            yield line.rstrip("\r")
    if buffer:
        yield buffer


def _shed_retry_after(response: Any) -> float | None:
    """Seconds to wait when the response sheds the request (503 with problem type ...overloaded, or 429 with
    Retry-After), capped at MAX_RETRY_AFTER_SECONDS; None for any other response."""
    status = response.status_code
    retry_after = response.headers.get("Retry-After")
    if status == 503:
        try:
            overloaded = str(response.json().get("type", "")).endswith("overloaded")
        except Exception:
            overloaded = False
        if not overloaded:
            return None
    elif status != 429 or retry_after is None:
        return None
    try:
        seconds = float(retry_after) if retry_after is not None else 1.0
    except ValueError:  # an HTTP date, which this server does not send
        seconds = 1.0
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)


def _http_failure(response: Any) -> str:
    """A failure's cause: its status (or connection error), and the problem+json code when there is one."""
    if not response.status_code:
        error = getattr(response, "error", None)
        return f"connection: {type(error).__name__ if error else 'no response'}"
    try:
        code = str(response.json().get("type", "")).rpartition(":")[2]  # urn:agentctl:problem:<code>
    except Exception:
        code = ""
    return f"HTTP {response.status_code}" + (f" {code}" if code else "")


def _error_detail(data: str) -> str:
    try:
        parsed = json.loads(data)
    except ValueError:
        return data.strip()[:100]
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(error, dict):
        return str(error.get("type") or error.get("code") or error.get("detail"))[:100]
    return str(parsed)[:100]
