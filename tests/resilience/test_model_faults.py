"""A model that fails part of the time, or altogether, seen through a real `agentctl serve` and the simulator:
partial failures are absorbed (retries, fallback), an outage is a fast 503 that heals by itself, background work
never takes chat down, and readiness reports models as a degraded dependency instead of going unready."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from agentctl.simulator.process import RunningSimulator
from tests.chat.conftest import Conversation, serve_with_model
from tests.support import ApiClient, ServeProcess, metric_value

TURNS = 200
AT_A_TIME = 10
OPEN_SECONDS = 8  # long enough for the test to see both workers' circuits open before probes go through


def models_file(workdir: Path, simulator: RunningSimulator, *names: str, **fields: object) -> Path:
    """A models file declaring ``names`` (model ids ``<name>-model``) as the chat chain, in that order, and the
    simulator's embeddings (384 dimensions, as the test database's memory collection) for memory."""
    lines = []
    for name in names:
        lines += [f"[models.{name}]", f'model_id = "{name}-model"', f'base_url = "{simulator.base_url}"']
        lines += ['api_key = "sim"']
        lines += [f"{key} = {value!r}".replace("'", '"') for key, value in fields.items()]
    lines += ["[models.vectors]", 'kind = "embedding"', 'model_id = "vectors-model"', "embedding_dims = 384"]
    lines += [f'base_url = "{simulator.base_url}"', 'api_key = "sim"']
    lines += ["[roles]", f"chat = {list(names)!r}".replace("'", '"'), 'embedding = ["vectors"]']
    path = workdir / "models.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def serve(workdir: Path, database_url: str, simulator: RunningSimulator, **env: str) -> ServeProcess:
    defaults = {
        "AGENTCTL_LLM__MAX_ATTEMPTS": "4",  # the default: these tests are about the defaults
        "AGENTCTL_RATELIMIT__CHAT": "100000/minute",
    }
    server = serve_with_model(workdir, database_url, simulator, "--workers", "2", **{**defaults, **env})
    server.wait_until_healthy()
    return server


def answered_share(api: ApiClient, turns: int = TURNS) -> tuple[float, list[int]]:
    """Send ``turns`` chat turns, ``AT_A_TIME`` at once (one session each); the share answered, and the statuses."""
    conversations = [Conversation(api) for _ in range(AT_A_TIME)]

    def talk(conversation: Conversation) -> list[int]:
        return [conversation.send(f"question {n}").status_code for n in range(turns // AT_A_TIME)]

    with ThreadPoolExecutor(AT_A_TIME) as pool:
        statuses = [status for batch in pool.map(talk, conversations) for status in batch]
    return statuses.count(200) / len(statuses), statuses


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.mark.slow
def test_one_model_failing_30_percent_still_answers_97_percent(
    workdir: Path, migrated_database_url: str, simulator: RunningSimulator
) -> None:
    """Counting failures opened the circuit at any volume: 187 of 200 turns failed with "circuit open". A rate
    over a window leaves it closed, and retries answer what the model fails."""
    simulator.configure({"faults": {"*": {"rate_500": 0.3}}, "seed": 11})
    server = serve(workdir, migrated_database_url, simulator, AGENTCTL_MEMORY__ENABLED="false")
    try:
        share, statuses = answered_share(ApiClient(server))
        metrics = server.get("/metrics").text
    finally:
        server.terminate()
    assert share >= 0.97, f"{share:.1%} answered: {sorted(set(statuses))}"
    assert not re.search(r'agentctl_model_circuit_state\{lane="foreground",model="default"\} [12]', metrics)


@pytest.mark.slow
@pytest.mark.parametrize("failure_rate", [0.3, 1.0])
def test_a_failing_primary_with_a_backup_answers_every_turn(
    workdir: Path, migrated_database_url: str, simulator: RunningSimulator, failure_rate: float
) -> None:
    simulator.configure({"faults": {"primary-model": {"rate_500": failure_rate}}, "seed": 5})
    chain = models_file(workdir, simulator, "primary", "backup")
    server = serve(
        workdir,
        migrated_database_url,
        simulator,
        AGENTCTL_LLM__MODELS_FILE=str(chain),
        AGENTCTL_MEMORY__ENABLED="false",
        AGENTCTL_LLM__BACKOFF_INITIAL_SECONDS="0.05",
    )
    try:
        share, statuses = answered_share(ApiClient(server))
    finally:
        server.terminate()
    assert share >= 0.999, f"{share:.1%} answered: {sorted(set(statuses))}"


@pytest.mark.slow
def test_the_only_model_down_is_a_fast_503_that_heals_within_the_open_period(
    workdir: Path, migrated_database_url: str, simulator: RunningSimulator
) -> None:
    simulator.configure({"faults": {"*": {"rate_500": 1.0}}})
    server = serve(
        workdir,
        migrated_database_url,
        simulator,
        AGENTCTL_MEMORY__ENABLED="false",
        AGENTCTL_LLM__BREAKER_OPEN_SECONDS=str(OPEN_SECONDS),
        AGENTCTL_LLM__BACKOFF_INITIAL_SECONDS="0.05",
    )
    api = ApiClient(server)
    try:
        conversation = Conversation(api)
        # Until the circuits of both workers are open: turns fail after their retries, then are refused at once.
        refused_at_once: list[str] = []
        deadline = time.monotonic() + 60
        while len(api.pids_that_served(refused_at_once)) < 2:
            started = time.monotonic()
            response = Conversation(api, user_token=conversation.user_token).send("anyone there?")
            took = time.monotonic() - started
            assert response.status_code == 503, response.text
            assert response.headers["content-type"].startswith("application/problem+json")
            assert response.json()["type"].endswith("model-unavailable")
            if took < 0.2:
                assert int(response.headers["retry-after"]) >= 1
                refused_at_once.append(response.headers["x-request-id"])
            assert time.monotonic() < deadline, "the circuits never opened"
            time.sleep(0.1)  # lets the access lines reach the log
        opened_at = time.monotonic()

        stream = httpx.post(
            f"{api.base_url}/chatbot/chat/stream",
            headers={"Authorization": f"Bearer {conversation.token}"},
            json={"messages": [{"role": "user", "content": "and a stream?"}]},
            timeout=10,
        )
        assert stream.status_code == 503  # refused before the stream starts, not an error event inside a 200
        assert stream.headers["content-type"].startswith("application/problem+json")

        ready = api.server.get("/health/ready")
        assert ready.status_code == 200  # sign-in and history still work: the instance stays in the service
        assert ready.json()["checks"]["models"]["status"] == "degraded"

        simulator.configure({})  # the provider is back
        while (answered := conversation.send("back?")).status_code != 200:
            assert time.monotonic() - opened_at < OPEN_SECONDS + 5, "no recovery within the open period"
            time.sleep(0.2)
        assert answered.json()["messages"][0]["content"]
    finally:
        server.terminate()


@pytest.mark.slow
def test_background_work_never_opens_the_chat_circuit(
    workdir: Path, migrated_database_url: str, simulator: RunningSimulator
) -> None:
    """Slow answers: streamed chat turns get their first token in time, the memory writer's whole-answer calls
    time out. Those failures open the background circuit only; chat answers, readiness stays 200, and the
    writer's failures are one rate-limited warning and a counter, not a line (or an ERROR) each."""
    # A stream's first byte comes after 1 s, then a token every 0.25 s, all within the 1.5 s timeout; a whole
    # (non-streamed) answer takes 2.5 s or more.
    simulator.configure({"ttft_ms": 1000, "tokens_per_second": 4, "answer_tokens": 8})
    chain = models_file(workdir, simulator, "primary", timeout_seconds=1.5)
    server = serve(
        workdir,
        migrated_database_url,
        simulator,
        AGENTCTL_LLM__MODELS_FILE=str(chain),
        AGENTCTL_MEMORY__EXTRACTION="model",
        AGENTCTL_LLM__MAX_ATTEMPTS="1",
    )
    api = ApiClient(server)
    try:
        conversations = [Conversation(api) for _ in range(4)]

        def talk(conversation: Conversation) -> list[str]:
            kinds = []
            for n in range(4):
                events = conversation.stream(f"I live in city number {n}")
                kinds.append(events[-1][0])
            return kinds

        with ThreadPoolExecutor(4) as pool:
            endings = [kind for batch in pool.map(talk, conversations) for kind in batch]
        assert endings == ["done"] * 16
        deadline = time.monotonic() + 60
        while True:  # the writers work through what was queued, failing
            metrics = server.get("/metrics").text
            if metric_value(metrics, "agentctl_memory_queue_depth") == 0 and metric_value(
                metrics, 'agentctl_memory_writes_total{outcome="error"}'
            ):
                break
            assert time.monotonic() < deadline, "the memory writers never failed"
            time.sleep(0.5)
        assert metric_value(metrics, 'agentctl_model_circuit_state{lane="foreground",model="primary"}') == 0
        ready = server.get("/health/ready")
        assert ready.status_code == 200
        assert ready.json()["checks"]["models"]["models"]["primary"]["circuit"] == "closed"
        # Chat still answers after the background circuit opened.
        assert conversations[0].stream("one more")[-1][0] == "done"
    finally:
        server.terminate()
    log = server.output()
    assert log.count("not remembered") <= 4, log  # one line per kind of failure and worker, not one per turn
    assert not [line for line in log.splitlines() if " ERROR " in line and "mem0" in line]
