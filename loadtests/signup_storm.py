"""Sign-up storm: every user registers a fresh account and logs in once, while a probe polls GET /health.

Run it through ``loadtests/run_signup_storm.py``, which starts the server with raised rate limits and reads
the results. Run by hand (Locust is a subprocess, never imported into agentctl's process)::

    python -m locust -f loadtests/signup_storm.py --headless -u 501 -r 20 --host http://127.0.0.1:8000 \
        --run-time 120s --json-file stats --storm-report storm.json

``-u`` counts the one health probe too: ``-u 501`` is 500 sign-ups. The run stops by itself a second after
the last sign-up user has finished (``--run-time`` is only the upper bound).
"""

from __future__ import annotations

import itertools
import json
import time
import uuid
from collections import Counter, defaultdict
from typing import Any

import gevent
from locust import FastHttpUser, constant_pacing, events, task
from locust.env import Environment

REGISTER = "POST /api/v1/auth/register"
LOGIN = "POST /api/v1/auth/login"
HEALTH = "GET /health (probe)"
# The probe keeps polling this long after the last sign-up, so that /health covers the whole storm.
TAIL_SECONDS = 1.0

_run_id = uuid.uuid4().hex[:8]
_user_numbers = itertools.count()


class _StormState:
    """What the scenario records beyond Locust's own stats: exact samples, errors, and who has finished."""

    def __init__(self) -> None:
        self.expected_signups = 0
        self.finished_signups = 0
        self.samples: dict[str, list[tuple[float, float]]] = defaultdict(list)  # name -> (wall time, ms)
        self.failures: dict[str, Counter[str]] = defaultdict(Counter)
        self.first_signup_at: float | None = None
        self.last_signup_at: float | None = None
        self.quit_scheduled = False


state = _StormState()


@events.init_command_line_parser.add_listener
def _add_arguments(parser: Any) -> None:
    parser.add_argument(
        "--storm-report",
        default="",
        help="Write exact latencies, errors and completion counts of the sign-up storm to this JSON file.",
    )


@events.test_start.add_listener
def _count_expected_signups(environment: Environment, **_: Any) -> None:
    options = environment.parsed_options
    users = options.num_users if options is not None and options.num_users else 1
    state.expected_signups = max(0, users - HealthProbe.fixed_count)


@events.request.add_listener
def _record_sample(
    name: str, response_time: float, exception: BaseException | None, response: Any = None, **_: Any
) -> None:
    state.samples[name].append((time.time(), float(response_time)))
    if exception is not None:
        status = getattr(response, "status_code", None)
        state.failures[name][f"{status or 'no response'}: {str(exception)[:200]}"] += 1


@events.quitting.add_listener
def _write_storm_report(environment: Environment, **_: Any) -> None:
    path = environment.parsed_options.storm_report if environment.parsed_options else ""
    if not path:
        return
    report = {
        "run_id": _run_id,
        "expected_signups": state.expected_signups,
        "finished_signups": state.finished_signups,
        "first_signup_at": state.first_signup_at,
        "last_signup_at": state.last_signup_at,
        "samples": {name: [[round(at, 4), round(ms, 3)] for at, ms in rows] for name, rows in state.samples.items()},
        "failures": {name: dict(counter) for name, counter in state.failures.items()},
    }
    with open(path, "w", encoding="utf-8") as file:
        json.dump(report, file)


def _signup_finished(environment: Environment) -> None:
    state.finished_signups += 1
    state.last_signup_at = time.time()
    if state.finished_signups >= state.expected_signups and not state.quit_scheduled and environment.runner:
        state.quit_scheduled = True
        gevent.spawn_later(TAIL_SECONDS, environment.runner.quit)


class SignUpUser(FastHttpUser):
    """Registers one new account, logs into it once, then idles until the run ends."""

    weight = 1

    @task
    def register_then_login(self) -> None:
        number = next(_user_numbers)
        email = f"storm-{_run_id}-{number}@example.com"
        password = f"Storm-{uuid.uuid4().hex[:12]}-7"
        if state.first_signup_at is None:
            state.first_signup_at = time.time()
        try:
            self._post(REGISTER, "/api/v1/auth/register", {"email": email, "password": password}, 201, "refresh_token")
            self._post(LOGIN, "/api/v1/auth/login", {"email": email, "password": password}, 200, "access_token")
        finally:
            _signup_finished(self.environment)
        # Idle until the run ends: a user that stopped itself would be replaced by Locust with a new one.
        while True:
            gevent.sleep(3600)

    def _post(self, name: str, path: str, body: dict[str, str], expected_status: int, expected_field: str) -> None:
        with self.client.post(path, json=body, name=name, catch_response=True) as response:
            if response.status_code != expected_status:
                response.failure(f"HTTP {response.status_code}: {(response.text or '')[:200]}")
                return
            try:
                payload = response.json()
            except ValueError:
                response.failure("the body is not JSON")
                return
            if not payload.get(expected_field):
                response.failure(f"the body has no {expected_field}")
                return
            response.success()


class HealthProbe(FastHttpUser):
    """Polls GET /health every 100 ms for the whole run.

    Each poll opens a new connection (Connection: close), so the kernel spreads the probes over both
    workers' accept queues; a kept-alive connection would only ever measure one worker's event loop.
    """

    fixed_count = 1  # spawned before the sign-up users
    wait_time = constant_pacing(0.1)

    @task
    def poll_health(self) -> None:
        with self.client.get("/health", name=HEALTH, headers={"Connection": "close"}, catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}")
            elif '"status":"ok"' not in (response.text or "").replace(" ", ""):
                response.failure(f"unexpected body: {(response.text or '')[:200]}")
            else:
                response.success()
