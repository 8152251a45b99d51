"""How `agentctl serve` runs uvicorn: its own HTTP protocol (bounded request heads) and, with several workers, a
supervisor that tells the shared metrics when a worker died.

uvicorn's supervisor replaces a worker that died (SIGKILL, the OOM killer), but a dead worker never runs its
shutdown, so its live gauges (requests in flight, streams open, pools) stayed in every later scrape. Removing a
dead process's gauge files is what prometheus-client's multiprocess mode asks of whoever supervises the workers.
"""

from __future__ import annotations

import functools
import sys
import time
from typing import Any

import uvicorn
from loguru import logger
from uvicorn.server import STARTUP_FAILURE
from uvicorn.supervisors import ChangeReload, Multiprocess
from uvicorn.supervisors.multiprocess import Process

from agentctl.config import Settings
from server.security.protocol import BoundedHttpToolsProtocol

# A replacement worker that cannot start is tried again this long after.
_RESTART_DELAY_SECONDS = 3.0
# Workers that fail within this long of the server's start are a setup error: the server stops.
_FIRST_START_SECONDS = 60.0


class MetricsAwareMultiprocess(Multiprocess):
    """uvicorn's multiprocess supervisor, with two changes once the server has been up a while: a worker it finds
    dead (and replaces) is marked dead for metrics; and a replacement that cannot start (the database down, say) is
    tried again a few seconds later, where uvicorn would stop every worker and exit. A worker that cannot start in
    the server's first minute still stops it: that is a configuration error, not a passing condition."""

    def run(self) -> None:
        self._started_at = time.monotonic()
        super().run()

    def keep_subprocess_alive(self) -> None:
        if self.should_exit.is_set():
            return
        for index, process in enumerate(self.processes):
            if process.is_alive(timeout=self.config.timeout_worker_healthcheck):
                continue
            process.kill()  # hung: kill it
            process.join()
            if process.pid is not None:
                mark_worker_dead(process.pid)
            failed_to_start = process.exitcode == STARTUP_FAILURE
            if failed_to_start and time.monotonic() - self._started_at < _FIRST_START_SECONDS:
                logger.error("worker {} failed to start; stopping", process.pid)
                self.should_exit.set()
                return
            if failed_to_start:
                logger.warning("worker {} failed to start; trying again in {:g} s", process.pid, _RESTART_DELAY_SECONDS)
                self.should_exit.wait(_RESTART_DELAY_SECONDS)
            if self.should_exit.is_set():
                return
            replacement = Process(self.config, self.sockets)
            replacement.start()
            self.processes[index] = replacement


def mark_worker_dead(pid: int) -> None:
    """Drop a dead worker's live gauges from the shared metrics directory (its counters stay in the totals)."""
    from prometheus_client import multiprocess

    from server.observability.metrics import multiprocess_mode

    if multiprocess_mode():
        multiprocess.mark_process_dead(pid)
    logger.warning("worker {} died; its live gauges leave /metrics", pid)


def uvicorn_config(settings: Settings, app_factory: str, **extra: Any) -> uvicorn.Config:
    server = settings.server
    protocol = functools.partial(
        BoundedHttpToolsProtocol,
        max_header_bytes=server.max_header_bytes,
        header_timeout_seconds=server.header_timeout_seconds,
    )
    return uvicorn.Config(
        app_factory,
        factory=True,
        host=server.host,
        port=server.port,
        workers=server.workers,
        http=protocol,  # type: ignore[arg-type]  # uvicorn calls it as it calls a protocol class
        h11_max_incomplete_event_size=server.max_header_bytes,
        timeout_graceful_shutdown=int(server.graceful_shutdown_seconds),
        log_config=None,
        access_log=False,  # agentctl logs each request itself, with its request id and caller
        server_header=False,
        proxy_headers=False,  # X-Forwarded-For is read by agentctl, from configured trusted proxies only
        **extra,
    )


def run(config: uvicorn.Config) -> None:
    """What uvicorn.run does with a Config, with agentctl's supervisor for several workers."""
    server = uvicorn.Server(config=config)
    if config.should_reload:
        ChangeReload(config, target=server.run, sockets=[config.bind_socket()]).run()
    elif config.workers > 1:
        MetricsAwareMultiprocess(config, sockets=[config.bind_socket()]).run()
    else:
        server.run()
        if not server.started:
            sys.exit(STARTUP_FAILURE)
