"""`agentctl llm simulate` as a subprocess, for tests and benchmarks (stdlib and httpx only)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

_LISTENING = re.compile(r"listening on (http://[^\s/]+)")


class RunningSimulator:
    """A real simulator process on a free loopback port; ``base_url`` is what an OpenAI client is given.

    ``config`` is applied through the admin API once it answers; ``args`` are `agentctl llm simulate` options.
    The process binds port 0 and prints where it listens, so there is no race for a port. ``prefix`` runs it
    under another command (``("taskset", "-c", "0")`` pins it to one core for a benchmark).
    """

    def __init__(
        self,
        config: Mapping[str, Any] | None = None,
        *,
        args: Sequence[str] = (),
        prefix: Sequence[str] = (),
        startup_timeout: float = 30.0,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self._log = tempfile.NamedTemporaryFile(prefix="llm-simulator-", suffix=".log", delete=False)  # noqa: SIM115
        self.log_path = Path(self._log.name)
        self._final_output = ""
        self.process = subprocess.Popen(
            [*prefix, sys.executable, "-m", "agentctl", "llm", "simulate", "--host", "127.0.0.1", "--port", "0", *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        try:
            self.url = self._wait_until_serving(startup_timeout)
            self.base_url = f"{self.url}/v1"
            self._client = httpx.Client(base_url=self.url, timeout=10)
            if config is not None:
                self.configure(config)
        except BaseException:
            self.kill()
            raise

    def _wait_until_serving(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        url = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the simulator exited with {self.process.returncode}:\n{self.output()}")
            if url is None:
                found = _LISTENING.search(self.output())
                url = found.group(1) if found else None
            if url is not None:
                try:
                    if httpx.get(f"{url}/v1/models", timeout=1).status_code == 200:
                        return url
                except httpx.TransportError:
                    pass
            time.sleep(0.05)
        raise RuntimeError(f"the simulator did not answer within {timeout} s:\n{self.output()}")

    def configure(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """Replace the whole config (omitted fields take their defaults); returns the config now in force."""
        response = self._client.put("/_simulator/config", content=json.dumps(config))
        if response.status_code != 200:
            raise ValueError(response.json()["error"]["message"])
        return response.json()

    def config(self) -> dict[str, Any]:
        return self._client.get("/_simulator/config").raise_for_status().json()

    def stats(self) -> dict[str, Any]:
        return self._client.get("/_simulator/stats").raise_for_status().json()

    def reset(self) -> dict[str, Any]:
        """Zero the stats and restart the fault RNG from the seed."""
        return self._client.post("/_simulator/reset").raise_for_status().json()

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then the exit code (SIGKILL if it has not exited within ``timeout``)."""
        if hasattr(self, "_client"):
            self._client.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._close_log()
        return self.process.returncode

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self._close_log()

    def _close_log(self) -> None:
        """Keep what the process printed, in memory, and remove the file."""
        if not self._log.closed:
            self._final_output = self.output()
            self._log.close()
            self.log_path.unlink(missing_ok=True)

    def output(self) -> str:
        """What the process printed (its listening line, uvicorn's warnings and errors)."""
        if self._log.closed:
            return self._final_output
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def __enter__(self) -> RunningSimulator:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()
