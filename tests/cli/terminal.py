"""A real terminal for the interactive client: a tmux pane, driven by send-keys and read with capture-pane."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

WIDTH, HEIGHT = 100, 40
# The shell outlives a Ctrl-C meant for the program (a trap, not an ignore: the program must still get it).
_REPORTING_EXIT = 'trap : INT; "$@"; echo "[exit $?]"'


class Terminal:
    """One program in a pane of a tmux server of its own (its socket in ``workdir``: nothing shared with a
    developer's tmux, nothing left behind).

    The program runs under a shell that prints its exit status when it ends (tmux's own pane_dead_status is
    not always filled in), and the pane stays, so its last words can still be read.
    """

    def __init__(self, workdir: Path, command: Sequence[str], *, env: Mapping[str, str]) -> None:
        assert shutil.which("tmux"), "tmux is not installed: run `make services` (apt-get install tmux)"
        self._socket = str(workdir / f"tmux-{uuid.uuid4().hex[:8]}.sock")
        config = workdir / "tmux.conf"
        config.write_text("set -g remain-on-exit on\nset -g history-limit 10000\nset -g status off\n")
        # The tmux server started here passes this environment on to the program (and nothing of ours).
        self._tmux(
            "-f", str(config), "new-session", "-d", "-s", "chat", "-x", str(WIDTH), "-y", str(HEIGHT), "-c",
            str(workdir), shlex.join(["sh", "-c", _REPORTING_EXIT, "sh", *command]), env=env,
        )  # fmt: skip

    def _tmux(self, *args: str, env: Mapping[str, str] | None = None) -> str:
        done = subprocess.run(
            ["tmux", "-S", self._socket, *args], capture_output=True, text=True, timeout=10, env=env, check=False
        )
        if done.returncode != 0:
            raise AssertionError(f"tmux {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout

    def screen(self) -> str:
        """Everything the pane showed so far, scrollback included, wrapped lines joined. Spaces at the end of a
        line and the empty lines below the cursor are left out: a pattern ending in ``$`` means "is waiting"."""
        captured = self._tmux("capture-pane", "-p", "-J", "-S", "-", "-t", "chat")
        return "\n".join(line.rstrip() for line in captured.splitlines()).rstrip()

    def type(self, text: str, *, enter: bool = True) -> None:
        self._tmux("send-keys", "-t", "chat", "-l", text)
        if enter:
            self.press("Enter")

    def press(self, *keys: str) -> None:
        """Keys by tmux's names: Enter, C-c, C-d, Up."""
        self._tmux("send-keys", "-t", "chat", *keys)

    def wait_for(self, pattern: str, *, after: int = 0, timeout: float = 20.0) -> str:
        """Wait until ``pattern`` (a regex) shows past the first ``after`` characters of the screen; returns
        the screen from ``after`` on."""
        found = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()[after:]
            if found.search(screen):
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"{pattern!r} did not show within {timeout} s; the screen:\n{self.screen()}")
            time.sleep(0.1)

    def mark(self) -> int:
        """Where the screen ends now: wait_for(after=mark) looks only at what comes next."""
        return len(self.screen())

    def exit_status(self, timeout: float = 15.0) -> int:
        """The program's exit status, once it has exited."""
        ended = re.search(r"^\[exit (\d+)\]$", self.wait_for(r"(?m)^\[exit \d+\]$", timeout=timeout), re.M)
        assert ended is not None
        return int(ended.group(1))

    def close(self) -> None:
        subprocess.run(["tmux", "-S", self._socket, "kill-server"], capture_output=True, timeout=10, check=False)
