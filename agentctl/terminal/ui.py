"""What `agentctl chat` shows and reads: streamed Markdown answers, the interactive loop and its slash commands."""

from __future__ import annotations

import contextlib
import datetime as dt
import getpass
import json
import re
import signal
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TextIO

from rich import box
from rich.console import Console, ConsoleOptions, RenderResult
from rich.live import Live
from rich.markdown import Markdown
from rich.segment import Segment, Segments
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from agentctl.terminal.client import (
    ChatClient,
    ChatError,
    SessionBusyError,
    SessionGoneError,
    SessionSummary,
    SignedOutError,
    StreamEvent,
    WrongPasswordError,
    budget_amount,
    describe_refill,
    match_session,
    parse_moment,
)

SIDE_STYLE = "dim"
ERROR_STYLE = "bold red"
QUESTION_STYLE = "bold yellow"
SIGN_IN_ATTEMPTS = 3
SESSION_TITLE_CHARS = 48
SIDE_LINE_CHARS = 160
BRANCH_TEXT_CHARS = 40
HISTORY_LINES_KEPT = 1000
REFRESH_SECONDS = 1 / 12
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")


# -- one turn


@dataclass
class TurnResult:
    """What one answer was, whichever way it was shown."""

    answer: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    memories: list[str] = field(default_factory=list)
    interrupt: str | None = None
    approval: list[dict[str, Any]] = field(default_factory=list)  # tool calls awaiting the user's decision
    usage: dict[str, Any] | None = None
    message_id: str | None = None
    error: ChatError | None = None
    cancelled: bool = False
    cancel_problem: str | None = None
    first_token_seconds: float | None = None
    seconds: float = 0.0

    @property
    def succeeded(self) -> bool:
        return self.error is None and not self.cancelled

    def as_json(self, client: ChatClient) -> dict[str, Any]:
        session = client.session
        return {
            "session_id": session.id if session else None,
            "session_name": session.name if session else None,
            "answer": self.answer,
            "interrupt": {"question": self.interrupt} if self.interrupt is not None else None,
            "approval": {"calls": self.approval} if self.approval else None,
            "tool_calls": self.tool_calls,
            "memories": self.memories,
            "usage": self.usage,
            "message_id": self.message_id,
            "time_to_first_token_ms": _ms(self.first_token_seconds),
            "latency_ms": _ms(self.seconds),
        }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


class AnswerView:
    """Where an answer goes while it streams. This one shows nothing: --json prints the result at the end."""

    def start(self) -> None:
        pass

    def token(self, text: str) -> None:
        pass

    def tool(self, data: dict[str, Any]) -> None:
        pass

    def memory(self, memories: list[str]) -> None:
        pass

    def interrupt(self, question: str) -> None:
        pass

    def approval(self, calls: list[dict[str, Any]]) -> None:
        pass

    def notice(self, kind: str, data: dict[str, Any]) -> None:
        pass

    def close(self, result: TurnResult) -> None:
        pass


def run_turn(client: ChatClient, text: str, view: AnswerView) -> TurnResult:
    """Send ``text`` and show the answer as it arrives; Ctrl-C stops it here and on the server."""
    result = _shown_answer(client, view, lambda on_rejoin: client.stream_turn(text, on_rejoin=on_rejoin), cancel=True)
    if result.succeeded and client.session is not None and not client.session.name:
        with contextlib.suppress(ChatError):  # a name is a convenience: never worth failing the turn for
            client.rename_session(session_title(text))
    return result


def follow_running_answer(
    client: ChatClient, run: dict[str, Any], view: AnswerView, *, cancel: bool = False
) -> TurnResult:
    """Show an answer being given by a run already under way (a reload, a dropped connection, an edit or a
    regeneration just accepted): its events from the start, then live ones. Ctrl-C stops watching and, with
    ``cancel``, the answer on the server too; without, it goes on there."""
    return _shown_answer(
        client, view, lambda on_rejoin: client.follow_run(str(run["id"]), on_rejoin=on_rejoin), cancel=cancel
    )


def _shown_answer(
    client: ChatClient,
    view: AnswerView,
    events_of: Callable[[Callable[[int, int], None]], contextlib.AbstractContextManager[Iterator[StreamEvent]]],
    *,
    cancel: bool,
) -> TurnResult:
    """One answer's events, from ``events_of(on_rejoin)``, recorded and shown as they arrive."""
    result = TurnResult()
    started = time.monotonic()
    view.start()
    try:
        with events_of(partial(_rejoining, view)) as events:
            for event in events:
                _record(result, event, time.monotonic() - started)
                _show(view, event)
        if result.message_id is None and result.error is None:
            result.error = ChatError("the connection closed before the answer was complete", code="stream-cut")
    except KeyboardInterrupt:
        result.cancelled = True
        if cancel:
            result.cancel_problem = _cancel_on_server(client)
    finally:
        result.seconds = time.monotonic() - started
        view.close(result)
    return result


def _rejoining(view: AnswerView, attempt: int, attempts: int) -> None:
    view.notice("rejoining", {"content": f"connection lost; rejoining the answer (attempt {attempt} of {attempts})"})


def _record(result: TurnResult, event: StreamEvent, elapsed: float) -> None:
    data = event.data
    if event.kind == "token":
        result.answer += data.get("content", "")
        if result.first_token_seconds is None:
            result.first_token_seconds = elapsed
    elif event.kind == "tool" and data.get("status") != "started":
        call = {key: data.get(key) for key in ("name", "arguments", "status", "result")}
        result.tool_calls.append({**call, **({"approval": data["approval"]} if data.get("approval") else {})})
    elif event.kind == "memory":
        result.memories.extend(str(memory) for memory in data.get("memories") or [])
    elif event.kind == "interrupt":
        result.interrupt = str(data.get("question", ""))
    elif event.kind == "approval":
        result.approval = list(data.get("calls") or [])
    elif event.kind == "usage":
        result.usage = data.get("usage")
    elif event.kind == "done":
        result.message_id = data.get("message_id")
    elif event.kind == "error":
        error = data.get("error") or {}
        kind = str(error.get("type") or "turn-failed")
        if kind == "cancelled":
            result.error = ChatError("the answer was cancelled (from another window?)", code=kind)
        else:
            result.error = ChatError(f"the answer failed: {error.get('detail') or kind}", code=kind)


def _show(view: AnswerView, event: StreamEvent) -> None:
    if event.kind == "token":
        view.token(event.data.get("content", ""))
    elif event.kind == "tool":
        view.tool(event.data)
    elif event.kind == "memory":
        view.memory([str(memory) for memory in event.data.get("memories") or []])
    elif event.kind == "interrupt":
        view.interrupt(str(event.data.get("question", "")))
    elif event.kind == "approval":
        view.approval(list(event.data.get("calls") or []))
    elif event.kind not in ("usage", "done", "error"):
        view.notice(event.kind, event.data)  # a kind newer than this client: shown, not dropped


def _cancel_on_server(client: ChatClient) -> str | None:
    """Tell the server; a second Ctrl-C meanwhile must not leave the turn running there."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        client.cancel_turn()
        return None
    except ChatError as error:
        return error.message
    finally:
        signal.signal(signal.SIGINT, previous)


def session_title(text: str) -> str:
    """A session's name from its first message: the first line, shortened."""
    first = next((line for line in text.splitlines() if line.strip()), text)
    title = " ".join(first.split())
    return title if len(title) <= SESSION_TITLE_CHARS else title[: SESSION_TITLE_CHARS - 1].rstrip() + "…"


# -- side lines: tools, notices, usage


def _one_line(value: Any, limit: int = SIDE_LINE_CHARS) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def tool_line(data: dict[str, Any]) -> str:
    name = data.get("name", "tool")
    if data.get("status") == "started":
        return f"⚙ {name} {_one_line(data.get('arguments') or {})}"
    decided = (data.get("approval") or {}).get("decision")  # approved, edited or rejected by the user
    label = f" ({decided})" if decided else ""
    outcome = "" if data.get("status") == "success" or decided == "rejected" else f"{data.get('status')}: "
    return f"  ↳ {name}{label}: {outcome}{_one_line(data.get('result', ''))}"


def approval_line(calls: list[dict[str, Any]]) -> str:
    """The tool calls a turn paused for, awaiting the user's decision."""
    shown = "; ".join(f"{call.get('tool')} {_one_line(call.get('arguments') or {})}" for call in calls)
    return f"⏸ awaiting your approval: {_one_line(shown)}"


def memory_line(memories: list[str]) -> str:
    count = f"{len(memories)} memor{'y' if len(memories) == 1 else 'ies'}"
    return f"· recalled {count}: {_one_line(' · '.join(memories))}"


def notice_line(kind: str, data: dict[str, Any]) -> str:
    rest = {key: value for key, value in data.items() if key not in ("done", "content")}
    return f"· {kind}: {_one_line(data.get('content') or rest)}"


def usage_line(result: TurnResult) -> str:
    parts = []
    usage = result.usage or {}
    if usage:
        parts.append(f"{usage.get('input_tokens', 0)} in + {usage.get('output_tokens', 0)} out tokens")
        if usage.get("cached_tokens"):
            parts.append(f"{usage['cached_tokens']} cached")
        cost = float(usage.get("cost_usd") or 0)
        parts.append(f"${cost:.6f}".rstrip("0").rstrip("."))
    if result.first_token_seconds is not None:
        parts.append(f"first token {result.first_token_seconds:.2f} s")
    parts.append(f"{result.seconds:.2f} s")
    if usage.get("model"):
        parts.append(str(usage["model"]))
    return "· " + " · ".join(parts)


# -- the views


def finished_length(text: str) -> int:
    """How much of a streaming Markdown text later tokens can no longer change: up to its last blank line
    outside a code fence, or its last closing fence."""
    fence: tuple[str, int] | None = None
    finished = position = 0
    for line in text.splitlines(keepends=True):
        if not line.endswith("\n"):
            break  # still being written
        position += len(line)
        marker = _FENCE.match(line)
        if fence is None:
            if marker:
                fence = (marker.group(1)[0], len(marker.group(1)))
            elif not line.strip():
                finished = position
        elif (
            marker
            and marker.group(1)[0] == fence[0]
            and len(marker.group(1)) >= fence[1]
            and not marker.group(2).strip()
        ):
            fence = None
            finished = position
    return finished


class _Tail:
    """The part of the answer not printed for good yet, rendered afresh at each refresh of the live display."""

    def __init__(self, view: MarkdownView) -> None:
        self._view = view

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        view = self._view
        if not view.text.strip():
            yield Spinner("dots", Text(view.waiting, style=SIDE_STYLE))
            return
        lines = view.lines()[view.printed :]
        room = max(1, (options.height or console.height) - 1)
        yield Segments(_joined(lines[-room:]))  # the newest lines, when a block is taller than the screen


def _joined(lines: list[list[Segment]]) -> list[Segment]:
    segments: list[Segment] = []
    for number, line in enumerate(lines):
        if number:
            segments.append(Segment.line())
        segments.extend(line)
    return segments


def _stop_echo() -> list[Any] | None:
    """Keys pressed during an answer are not echoed: a "^C", or text typed ahead, would shift the lines under
    the live display, which then redraws in the wrong place. What is typed ahead still reaches the next prompt."""
    if not sys.stdin.isatty():
        return None
    saved = termios.tcgetattr(sys.stdin)
    quiet = list(saved)
    quiet[3] &= ~termios.ECHO
    termios.tcsetattr(sys.stdin, termios.TCSANOW, quiet)
    return saved


def _restore_tty(saved: list[Any] | None) -> None:
    if saved is not None:
        termios.tcsetattr(sys.stdin, termios.TCSANOW, saved)


class MarkdownView(AnswerView):
    """An answer rendered as Markdown while it streams (code highlighted), for a terminal.

    What is finished (up to the last blank line outside a code fence) is printed for good, so it stays in the
    scrollback however long the answer gets; only the block being written is redrawn at each refresh. Redraws
    happen on a thread of this view's own, under the same lock as every print: Live's own refresh thread races
    prints from the main thread and leaves stray blank lines behind.
    """

    def __init__(self, console: Console, *, show_usage: bool) -> None:
        self.console = console
        self.show_usage = show_usage
        self.text = ""  # the answer since the last tool call
        self.printed = 0  # lines of it printed for good
        self.waiting = "thinking…"
        self._live: Live | None = None
        self._lock = threading.RLock()
        self._stopped = threading.Event()
        self._refresher: threading.Thread | None = None
        self._saved_tty: list[Any] | None = None
        self._cache: tuple[str, int, list[list[Segment]]] = ("", 0, [])

    def lines(self, text: str | None = None) -> list[list[Segment]]:
        text = self.text if text is None else text
        width = self.console.width
        cached_text, cached_width, cached = self._cache
        if (text, width) == (cached_text, cached_width):
            return cached
        rendered = self.console.render_lines(Markdown(text), self.console.options, pad=False)
        if text == self.text:
            self._cache = (text, width, rendered)
        return rendered

    def start(self) -> None:
        self._saved_tty = _stop_echo()
        self._live = Live(
            _Tail(self),
            console=self.console,
            transient=True,
            auto_refresh=False,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self._live.start(refresh=True)
        self._refresher = threading.Thread(target=self._refresh_until_stopped, name="chat-render", daemon=True)
        self._refresher.start()

    def _refresh_until_stopped(self) -> None:
        while not self._stopped.wait(REFRESH_SECONDS):
            with self._lock:
                if self._live is not None:
                    self._live.refresh()

    def token(self, text: str) -> None:
        with self._lock:
            self.text += text
            finished = finished_length(self.text)
            if finished:
                self._print_for_good(len(self.lines(self.text[:finished])))

    def _print_for_good(self, upto: int) -> None:
        lines = self.lines()[self.printed : upto]
        if lines:
            self.printed = upto
            self.console.print(Segments([*_joined(lines), Segment.line()]))

    def _finish_text(self) -> None:
        if self.text.strip():
            self._print_for_good(len(self.lines()))
        self.text, self.printed = "", 0

    def _side_line(self, text: Text) -> None:
        with self._lock:
            self._finish_text()
            self.console.print(text)

    def tool(self, data: dict[str, Any]) -> None:
        self._side_line(Text(tool_line(data), style=SIDE_STYLE))
        running = data.get("status") == "started"
        self.waiting = f"running {data.get('name', 'a tool')}…" if running else "thinking…"

    def memory(self, memories: list[str]) -> None:
        self._side_line(Text(memory_line(memories), style=SIDE_STYLE))

    def interrupt(self, question: str) -> None:
        self._side_line(Text(f"? {question}", style=QUESTION_STYLE))

    def approval(self, calls: list[dict[str, Any]]) -> None:
        self._side_line(Text(approval_line(calls), style=QUESTION_STYLE))

    def notice(self, kind: str, data: dict[str, Any]) -> None:
        self._side_line(Text(notice_line(kind, data), style=SIDE_STYLE))

    def close(self, result: TurnResult) -> None:
        self._stopped.set()
        if self._refresher is not None:
            self._refresher.join()
        with self._lock:
            self._finish_text()
            if self._live is not None:
                self._live.stop()
                self._live = None
        _restore_tty(self._saved_tty)
        self._saved_tty = None
        if result.cancelled:
            told = f" here; the server was not told ({result.cancel_problem})" if result.cancel_problem else ""
            self.console.print(Text(f"· cancelled{told}", style=SIDE_STYLE))
        elif self.show_usage and result.usage is not None:
            self.console.print(Text(usage_line(result), style=SIDE_STYLE))


class RawView(AnswerView):
    """The answer's text as it arrives, unrendered, for pipes and files; everything else goes to ``side``."""

    def __init__(self, out: TextIO, side: Console, *, show_usage: bool) -> None:
        self.out = out
        self.side = side
        self.show_usage = show_usage
        self._ends_with_newline = True

    def _write(self, text: str) -> None:
        if text:
            self.out.write(text)
            self.out.flush()
            self._ends_with_newline = text.endswith("\n")

    def _end_line(self) -> None:
        if not self._ends_with_newline:
            self._write("\n")

    def token(self, text: str) -> None:
        self._write(text)

    def _side_line(self, line: str) -> None:
        self._end_line()  # stdout and stderr are often the same terminal
        self.side.print(Text(line, style=SIDE_STYLE))

    def tool(self, data: dict[str, Any]) -> None:
        self._side_line(tool_line(data))

    def memory(self, memories: list[str]) -> None:
        self._side_line(memory_line(memories))

    def interrupt(self, question: str) -> None:
        self._end_line()
        self._write(question + "\n")

    def approval(self, calls: list[dict[str, Any]]) -> None:
        self._side_line(approval_line(calls))

    def notice(self, kind: str, data: dict[str, Any]) -> None:
        self._side_line(notice_line(kind, data))

    def close(self, result: TurnResult) -> None:
        self._end_line()
        if self.show_usage and result.usage is not None:
            self.side.print(Text(usage_line(result), style=SIDE_STYLE))


def view_for(console: Console, err_console: Console, *, show_usage: bool) -> AnswerView:
    """Rendered Markdown on a terminal; the raw text anywhere else, so pipes get what the model wrote."""
    if console.is_terminal:
        return MarkdownView(console, show_usage=show_usage)
    return RawView(sys.stdout, err_console, show_usage=show_usage)


# -- signing in


def sign_in(client: ChatClient, console: Console) -> None:
    """Ask for an email and password; an email the server does not know can become an account on the spot."""
    console.print(Text(f"Sign in to {client.server_url}", style="bold"))
    email = ""
    while "@" not in email:
        email = input("Email: ").strip()
    declined = False  # someone who has an account and mistyped is asked once, not after every attempt
    for _ in range(SIGN_IN_ATTEMPTS):
        password = getpass.getpass("Password: ")
        try:
            client.login(email, password)
            return
        except WrongPasswordError:
            console.print(Text(f"wrong password, or no account for {email} yet", style=ERROR_STYLE))
        if declined or not _confirm(f"Create a new account for {email}?"):
            declined = True
            continue
        if getpass.getpass("Repeat the password: ") != password:
            console.print(Text("the passwords differ", style=ERROR_STYLE))
            continue
        name = input("Your name (optional, the agent uses it): ").strip()
        try:
            client.register(email, password, name or None)
            console.print(Text(f"account created for {email}", style=SIDE_STYLE))
            return
        except ChatError as error:  # a password the server's policy refuses, or the email exists after all
            if error.code not in ("unauthorized", "validation-failed"):
                raise
            console.print(Text(error.message, style=ERROR_STYLE))
    raise WrongPasswordError("wrong email or password", code="unauthorized")


def _confirm(question: str) -> bool:
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")


# -- one message, no conversation


def ask_once(
    client: ChatClient, text: str, *, console: Console, err_console: Console, json_output: bool, show_usage: bool
) -> int:
    """`agentctl chat -m`: one message, its answer on stdout; the exit status says whether it was answered."""
    view = AnswerView() if json_output else view_for(console, err_console, show_usage=show_usage)
    result = run_turn(client, text, view)
    if json_output:
        document = result.as_json(client)
        if result.error is not None:
            document["error"] = {"type": result.error.code, "detail": result.error.message}
        sys.stdout.write(json.dumps(document, ensure_ascii=False) + "\n")
    if result.cancelled:
        err_console.print(Text("agentctl: cancelled"))
        return 130
    if result.error is not None:
        err_console.print(Text(f"agentctl: {result.error.message}"))
        return 1
    if result.approval:
        err_console.print(Text(f"agentctl: {_calls_awaiting(result.approval)}: `agentctl chat` asks for your decision"))
    return 0


# -- the conversation


def _ago(iso: str) -> str:
    moment = parse_moment(iso)
    if moment is None:
        return iso
    seconds = max(0, int((dt.datetime.now(dt.UTC) - moment).total_seconds()))
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return "just now"


@dataclass(frozen=True)
class Command:
    run: Callable[[ChatRepl, str], bool | None]  # True: leave the conversation
    usage: str
    summary: str


class ChatRepl:
    """The interactive conversation: a prompt with history, streamed answers, slash commands."""

    def __init__(self, client: ChatClient, console: Console, *, show_usage: bool, history_path: Path) -> None:
        self.client = client
        self.console = console
        self.show_usage = show_usage
        self.history_path = history_path
        self.awaiting_answer: str | None = None  # the agent's question, when it asked one
        self._listed_sessions: list[SessionSummary] = []
        self._listed_memories: list[dict[str, Any]] = []
        self._readline: Any = None

    # -- output helpers

    def say(self, text: str, style: str = SIDE_STYLE) -> None:
        self.console.print(Text(text, style=style))

    def fail(self, message: str) -> None:
        # One line however long, wrapped by the terminal, not broken by rich: it reads, copies and greps as one.
        self.console.print(Text(f"✗ {message}", style=ERROR_STYLE), soft_wrap=True)

    # -- the loop

    def run(self) -> None:
        readline = self._readline = self._setup_readline()
        try:
            self._banner()
            while True:
                try:
                    line = self._read_message()
                except EOFError:
                    self.console.print()
                    return
                except KeyboardInterrupt:
                    self.console.print()
                    if readline is not None and readline.get_line_buffer().strip():
                        continue  # Ctrl-C on a line being typed discards the line, like a shell
                    return
                if not line.strip():
                    continue
                if readline is not None:
                    readline.add_history(line)
                if self._handle(line):
                    return
        finally:
            if readline is not None:
                with contextlib.suppress(OSError):
                    readline.write_history_file(str(self.history_path))

    def _setup_readline(self) -> Any:
        """Arrow keys and history (kept, like the tokens, readable by the user only), tab-completed commands."""
        try:
            import readline
        except ImportError:  # a Python built without it: plain input still works
            return None
        readline.set_auto_history(False)  # passwords and confirmations are not history
        readline.set_history_length(HISTORY_LINES_KEPT)
        with contextlib.suppress(OSError):
            self.history_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.history_path.touch(mode=0o600)
            self.history_path.chmod(0o600)
            readline.read_history_file(str(self.history_path))
        names = sorted(f"/{name}" for name in COMMANDS)

        def complete(prefix: str, state: int) -> str | None:
            matches = [name for name in names if name.startswith(prefix)] if prefix.startswith("/") else []
            return matches[state] if state < len(matches) else None

        readline.set_completer(complete)
        readline.set_completer_delims(" \t\n")
        readline.parse_and_bind("tab: complete")
        return readline

    def _prompt(self, label: str) -> str:
        if not self.console.is_terminal or self.console.no_color:
            return f"{label} "
        # \001 and \002 tell readline the escapes take no room, or long lines wrap at the wrong column.
        return f"\001\033[1;36m\002{label}\001\033[0m\002 "

    def _read_message(self, label: str | None = None) -> str:
        """One message; a line ending in a backslash continues on the next (pasted newlines are kept as they are)."""
        line = input(self._prompt(label or ("answer>" if self.awaiting_answer is not None else ">")))
        while line.endswith("\\"):
            line = line[:-1] + "\n" + input(self._prompt("..."))
        return line

    def _read_edit(self, old: str) -> str:
        """A message's new text, typed over the old one: readline puts a one-line message on the prompt to edit in
        place; a longer one is shown above it, to type anew."""
        readline = self._readline
        if readline is not None and "\n" not in old:
            readline.set_startup_hook(lambda: readline.insert_text(old))
        else:
            self.say("your message was:")
            self.console.print(Text(old))
        try:
            return self._read_message("edit>")
        finally:
            if readline is not None:
                readline.set_startup_hook(None)

    def _banner(self) -> None:
        session = self.client.session
        assert session is not None
        assert self.client.profile is not None
        self.console.print(
            Text.assemble(
                ("agentctl chat", "bold"),
                (f" · {self.client.profile.email} on {self.client.server_url}", SIDE_STYLE),
            )
        )
        self._describe_session("session")
        self.say("/help lists the commands · Ctrl-C stops an answer · Ctrl-D leaves")
        with self._failures_told():
            if not self._show_running_answer():
                self._ask_pending_approval()

    def _show_running_answer(self) -> bool:
        """An answer of this session still being given (the last client left, or lost its connection, before it
        ended) is shown to its end, from its start; False when there is none."""
        try:
            run = self.client.active_run()
        except ChatError:
            return False  # an older server without runs: nothing to show
        if run is None:
            return False
        self.say(f"an answer is still being given to: {_one_line(run['input'])}")
        self._answered(follow_running_answer(self.client, run, self._view()))
        return True

    def _describe_session(self, verb: str) -> None:
        session = self.client.session
        assert session is not None
        count = len(self.client.history())
        so_far = f"{count} message{'s' if count != 1 else ''} so far, /history shows them" if count else "new"
        self.console.print(
            Text.assemble(
                (f"{verb} ", SIDE_STYLE),
                (session.name or "(unnamed)", "bold"),
                (f" {session.id[:8]} · {so_far}", SIDE_STYLE),
            )
        )

    def _handle(self, line: str) -> bool:
        """Run one line; True when the conversation should end. Failures are one line and the loop goes on."""
        with self._failures_told():
            if line.startswith("/") and not line.startswith("//"):
                return self._command(line)
            self._send(line.removeprefix("/"))
        return False

    @contextlib.contextmanager
    def _failures_told(self) -> Iterator[None]:
        """A failure inside is told as one line (a lost sign-in is asked for again) and the conversation goes on."""
        try:
            yield
        except SignedOutError as error:
            self.fail(error.message)
            sign_in(self.client, self.console)
            self.client.open_session()
            self._describe_session("back in session")
        except SessionGoneError as error:
            self.fail(error.message)
        except ChatError as error:
            self.fail(error.message)
        except (KeyboardInterrupt, EOFError):  # at a command's own question (/rename, /forget all)
            self.console.print()
            self.say("interrupted")

    def _command(self, line: str) -> bool:
        name, _, argument = line[1:].partition(" ")
        command = COMMANDS.get(name.lower()) or COMMANDS.get(ALIASES.get(name.lower(), ""))
        if command is None:
            self.fail(f"unknown command /{name}: /help lists them (start with // to send a message beginning with /)")
            return False
        return bool(command.run(self, argument.strip()))

    def _send(self, text: str) -> None:
        self._answered(run_turn(self.client, text, self._view()))

    def _view(self) -> AnswerView:
        return view_for(self.console, self.console, show_usage=self.show_usage)

    def _answered(self, result: TurnResult) -> None:
        if result.error is not None:
            self.fail(result.error.message)
        self.awaiting_answer = result.interrupt if result.succeeded else None
        self.console.print()
        if result.succeeded and result.approval:
            self._decide(result.approval)

    def _follow_new_answer(self, run: dict[str, Any]) -> None:
        """The answer of an edit, a regeneration or an approval just accepted, streamed like any answer (Ctrl-C
        stops it)."""
        self._answered(follow_running_answer(self.client, run, self._view(), cancel=True))

    # -- tool calls awaiting approval

    def _ask_pending_approval(self) -> bool:
        """Ask about the session's tool calls awaiting approval, if any (a client left before answering); False when
        there are none."""
        calls = self.client.pending_approval()
        if calls:
            self.say(f"the last answer paused: {_calls_awaiting(calls)}")
            self._decide(calls)
        return bool(calls)

    def _decide(self, calls: list[dict[str, Any]]) -> None:
        """A decision on each call, asked one by one and sent together; then the turn goes on, shown like any answer.
        Ctrl-C or Ctrl-D at a question leaves the calls awaiting approval."""
        while True:
            try:
                decisions = [self._decision_on(call, number, len(calls)) for number, call in enumerate(calls, 1)]
            except (KeyboardInterrupt, EOFError):
                self.console.print()
                self.say(f"{_calls_awaiting(calls)} still: /approve asks again")
                self.say("(a message sent instead declines them all, with the message as the reason)")
                return
            try:
                run = self.client.answer_approval(decisions)
                break
            except ChatError as error:
                if error.code != "validation-failed":
                    raise
                self.fail(error.message)  # edited arguments the tool's schema refuses: the user decides again
        self._follow_new_answer(run)

    def _decision_on(self, call: dict[str, Any], number: int, count: int) -> dict[str, Any]:
        """The user's decision on one call: approve, edit (new arguments as JSON) or reject (an optional reason)."""
        where = f"MCP server {call['server']}" if call.get("server") else "built-in"
        self.console.print(
            Text.assemble(("⏸ ", QUESTION_STYLE), (str(call.get("tool")), "bold"), (f" ({where})", SIDE_STYLE))
        )
        # Soft-wrapped: the terminal wraps long lines, so that what is copied from the screen is what was sent.
        if call.get("description"):
            self.console.print(Text(_one_line(call["description"]), style=SIDE_STYLE), soft_wrap=True)
        self.console.print(Text(json.dumps(call.get("arguments") or {}, indent=2, ensure_ascii=False)), soft_wrap=True)
        decided: dict[str, Any] = {"id": call["id"]}
        while True:
            choice = input(self._prompt(f"call {number} of {count}: [a]pprove / [e]dit / [r]eject?")).strip().lower()
            if choice in ("a", "approve"):
                return {**decided, "decision": "approve"}
            if choice in ("e", "edit"):
                arguments = self._edited_arguments()
                if arguments is None:
                    self.say("arguments unchanged: approved as they are")
                    return {**decided, "decision": "approve"}
                return {**decided, "decision": "edit", "arguments": arguments}
            if choice in ("r", "reject"):
                reason = input(self._prompt("reason (optional, the model reads it):")).strip()
                return {**decided, "decision": "reject", **({"reason": reason} if reason else {})}

    def _edited_arguments(self) -> dict[str, Any] | None:
        """New arguments for a call, as a JSON object; None when an empty line keeps the ones shown."""
        self.say("the new arguments as JSON; an empty line keeps them (end a line with \\ to go on with the next)")
        while True:
            text = self._read_message("arguments>")
            if not text.strip():
                return None
            try:
                arguments = json.loads(text)
            except ValueError as error:
                self.fail(f"not JSON ({error}): try again")
                continue
            if isinstance(arguments, dict):
                return arguments
            self.fail('the arguments are a JSON object, {"name": value, ...}: try again')

    # -- the commands

    def new(self, name: str) -> None:
        self.client.new_session(name)
        self.awaiting_answer = None
        self._describe_session("new session")

    def sessions(self, _: str) -> None:
        page = self.client.list_sessions(limit=20)
        self._listed_sessions = page.items
        current = self.client.session.id if self.client.session else None
        table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
        for column in ("", "#", "id", "name", "last active"):
            table.add_column(column)
        for number, item in enumerate(page.items, 1):
            table.add_row(
                "●" if item.id == current else "",
                str(number),
                item.id[:8],
                Text(item.name or "(unnamed)"),
                _ago(item.updated_at),
            )
        self.console.print(table)
        if page.total > len(page.items):
            self.say(f"the {len(page.items)} most recent of {page.total}; /switch finds the others by id or name")
        self.say("/switch <#, id or name> continues one")

    def switch(self, choice: str) -> None:
        if not choice:
            raise ChatError("which session? /switch <#, id or name> (/sessions lists them)")
        if choice.isdigit() and 1 <= int(choice) <= len(self._listed_sessions):
            target = self._listed_sessions[int(choice) - 1]
        else:
            target = match_session(choice, self.client.all_sessions())
        self.client.switch_session(target.id)
        self.awaiting_answer = None
        self._describe_session("switched to")
        self._ask_pending_approval()

    def rename(self, name: str) -> None:
        name = name or input("New name: ").strip()
        if not name:
            raise ChatError("a session's name cannot be empty")
        self.client.rename_session(name)
        self.say(f"renamed to {self.client.session.name if self.client.session else name}")

    def history(self, _: str) -> None:
        messages = self.client.history()
        if not messages:
            self.say("nothing said yet in this session")
        for message in messages:
            self._show_message(message)

    def _show_message(self, message: dict[str, Any]) -> None:
        role, content = message.get("role"), message.get("content") or ""
        if role == "user":
            self.console.print(Text.assemble(("> ", "bold cyan"), (content, "bold")))
        elif role == "tool":
            self.say(tool_line({"name": message.get("name"), "status": "success", "result": content}))
        elif role == "assistant":
            for call in message.get("tool_calls") or []:
                self.say(tool_line({**call, "status": "started"}))
            if content:
                self.console.print(Markdown(content))
            if message.get("status"):
                self.say(f"({message['status']})")
            self.console.print()

    def memory(self, query: str) -> None:
        found = self.client.memories(query)
        self._listed_memories = found
        if not found:
            self.say("nothing matches" if query else "the agent remembers nothing about you yet")
            return
        table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
        for column in ("id", "memory", "from session", "when", *(["score"] if query else [])):
            table.add_column(column, overflow="fold")
        current = self.client.session.id if self.client.session else None
        for item in found:
            session = str(item.get("session_id") or "")
            origin = "this one" if session == current else session[:8]
            score = [f"{item['score']:.2f}"] if query and item.get("score") is not None else ([""] if query else [])
            table.add_row(
                str(item["id"])[:8], Text(item["memory"]), origin, _ago(str(item.get("created_at", ""))), *score
            )
        self.console.print(table)
        self.say("/forget <id> forgets one, /forget all everything")

    def forget(self, which: str) -> None:
        if not which:
            raise ChatError("forget what? /forget <id> (from /memory) or /forget all")
        if which.lower() == "all":
            if not _confirm("Forget everything the agent remembers about you?"):
                self.say("kept")
                return
            deleted = self.client.forget_all_memories()
            self.say(f"forgot {deleted} memor{'y' if deleted == 1 else 'ies'}")
            return
        listed = self._listed_memories or self.client.memories(limit=100)
        matches = [item for item in listed if str(item["id"]).startswith(which.lower())]
        if len(matches) > 1:
            raise ChatError(f"{which!r} matches {len(matches)} memories: give more of the id")
        memory_id = str(matches[0]["id"]) if matches else which
        self.client.forget_memory(memory_id)
        self._listed_memories = [item for item in self._listed_memories if str(item["id"]) != memory_id]
        self.say(f"forgot {memory_id[:8]}")

    def clear(self, _: str) -> None:
        self.client.clear_history()
        self.awaiting_answer = None
        self.say("this session's conversation is forgotten; the next message starts afresh")

    def edit(self, text: str) -> None:
        last = _last_user_message(self.client.history())
        if last is None:
            raise ChatError("nothing to edit yet: send a message first")
        new_text = text or self._read_edit(str(last.get("content") or ""))
        if not new_text.strip():
            self.say("not edited")
            return
        self._follow_new_answer(self.client.edit_message(str(last["id"]), new_text))

    def retry(self, _: str) -> None:
        last = _last_user_message(self.client.history())
        if last is None:
            raise ChatError("no answer to retry yet: send a message first")
        run = self.client.regenerate(str(last["id"]))
        self.say(f"another answer to: {_one_line(last.get('content') or '')}")
        self._follow_new_answer(run)

    def branch(self, choice: str) -> None:
        messages = self.client.history()
        place = next((m["branch"] for m in reversed(messages) if m.get("role") == "user" and m.get("branch")), None)
        if place is None:
            self.say("no message here has other versions yet: /edit and /retry make them")
            return
        siblings, shown = [str(item) for item in place["siblings"]], int(place["index"])
        if not choice:
            self._list_branches(siblings, shown)
            return
        if not choice.isdigit() or not 1 <= int(choice) <= len(siblings):
            raise ChatError(f"which version? /branch <1 to {len(siblings)}> (/branch lists them)")
        if int(choice) == shown:
            self.say(f"version {shown} of {len(siblings)} is the one shown")
            return
        try:
            switched = self.client.switch_branch(siblings[int(choice) - 1])
        except SessionBusyError:
            raise ChatError("this session is answering a message: wait for it before switching versions") from None
        self.awaiting_answer = None
        self.say(f"switched to version {choice} of {len(siblings)}; the conversation goes on from it")
        last_question = max((i for i, m in enumerate(switched) if m.get("role") == "user"), default=0)
        for message in switched[last_question:]:
            self._show_message(message)

    def _list_branches(self, siblings: list[str], shown: int) -> None:
        table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
        for column in ("", "#", "your message", "its answer"):
            table.add_column(column)
        for number, run_id in enumerate(siblings, 1):
            run = self.client.run(run_id)
            answer = run.get("answer") or f"({run.get('status')})"
            table.add_row(
                "●" if number == shown else "",
                str(number),
                Text(_one_line(run.get("input") or "", BRANCH_TEXT_CHARS)),
                Text(_one_line(answer, BRANCH_TEXT_CHARS)),
            )
        self.console.print(table)
        self.say(f"version {shown} of {len(siblings)} is shown; /branch <#> switches to another")

    def budget(self, _: str) -> None:
        usage = self.client.usage()
        table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
        for column in ("", "turns", "tokens", "cost", "refills"):
            table.add_column(column)
        limited = False
        for label, period in (("today", usage["day"]), ("this month", usage["month"])):
            cells = [_spent_of(period, kind) for kind in ("tokens", "cost_usd")]
            has_limit = any(limit is not None for _, limit, _ in cells)
            limited = limited or has_limit
            table.add_row(
                label,
                str(period.get("turns", 0)),
                *(Text(text, style=ERROR_STYLE if used_up else "") for text, _, used_up in cells),
                describe_refill(period.get("refills_at")) if has_limit else "",
            )
        self.console.print(table)
        if not limited:
            self.say("no budget is set for you: what you spend is not limited")

    def approve(self, _: str) -> None:
        if not self._ask_pending_approval():
            self.say("no tool call of this session awaits your approval")

    def usage(self, _: str) -> None:
        self.show_usage = not self.show_usage
        self.say(f"usage after each answer: {'shown' if self.show_usage else 'hidden'}")

    def help(self, _: str) -> None:
        table = Table(box=None, show_header=False, pad_edge=False)
        table.add_column(style="bold")
        table.add_column()
        for command in COMMANDS.values():
            table.add_row(Text(command.usage), command.summary)
        self.console.print(table)
        self.say(
            "Ctrl-C stops an answer (and the server's work on it); at an empty prompt, Ctrl-C or Ctrl-D leaves.\n"
            "End a line with \\ to go on with the next one; start it with // to send a message beginning with /."
        )

    def quit(self, _: str) -> bool:
        return True


def _calls_awaiting(calls: list[dict[str, Any]]) -> str:
    many = len(calls) != 1
    return f"{len(calls)} tool call{'s' if many else ''} await{'' if many else 's'} your approval"


def _last_user_message(messages: list[dict[str, Any]]) -> dict[str, Any] | None:
    return next((message for message in reversed(messages) if message.get("role") == "user"), None)


def _spent_of(period: dict[str, Any], kind: str) -> tuple[str, float | None, bool]:
    """A period's spending of ``kind`` ("tokens" or "cost_usd") as shown, its limit, and whether it is used up."""
    spent = float(period.get(kind) or 0)
    limit = period.get(f"limit_{kind}")
    shown = budget_amount(kind, spent)
    if limit is None:
        return shown, None, False
    return f"{shown} of {budget_amount(kind, float(limit))}", float(limit), spent >= float(limit)


COMMANDS: dict[str, Command] = {
    "new": Command(ChatRepl.new, "/new [name]", "start a new session"),
    "sessions": Command(ChatRepl.sessions, "/sessions", "list your sessions, most recent first"),
    "switch": Command(ChatRepl.switch, "/switch <#|id|name>", "continue another session"),
    "rename": Command(ChatRepl.rename, "/rename [name]", "rename this session"),
    "history": Command(ChatRepl.history, "/history", "show this session's conversation"),
    "memory": Command(ChatRepl.memory, "/memory [query]", "what the agent remembers about you; a query searches"),
    "forget": Command(ChatRepl.forget, "/forget <id>|all", "forget one memory, or all of them"),
    "clear": Command(ChatRepl.clear, "/clear", "forget this session's conversation"),
    "edit": Command(ChatRepl.edit, "/edit [text]", "edit your last message and get a new answer (the old one is kept)"),
    "retry": Command(ChatRepl.retry, "/retry", "another answer to your last message (the old one is kept)"),
    "branch": Command(ChatRepl.branch, "/branch [#]", "list the versions of your last edited message; # shows one"),
    "usage": Command(ChatRepl.usage, "/usage", "show or hide tokens, cost and latency after each answer"),
    "approve": Command(ChatRepl.approve, "/approve", "decide on the tool calls awaiting your approval, one by one"),
    "budget": Command(ChatRepl.budget, "/budget", "what you spent today and this month, against your budget"),
    "help": Command(ChatRepl.help, "/help", "this list"),
    "quit": Command(ChatRepl.quit, "/quit", "leave"),
}
ALIASES = {
    "approval": "approve",
    "exit": "quit",
    "q": "quit",
    "?": "help",
    "memories": "memory",
    "regenerate": "retry",
    "branches": "branch",
}
