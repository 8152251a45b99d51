"""Every metric the dashboard or an alert queries is one a live `agentctl serve` exports: a panel on a name the
app never writes stays empty without any error, and an alert on one never fires."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agentctl.simulator.process import RunningSimulator
from tests.chat.conftest import Conversation, serve_with_model
from tests.compose.stack import agentctl_series_names, alert_expressions, dashboard_expressions, queried_labels
from tests.support import ApiClient

# Two chat models, the first always failing, so that retries and fallbacks happen; prices, so that cost does.
MODELS_FILE = """
[models.flaky]
model_id = "flaky-model"
base_url = "{base_url}"
price_input_per_million = 1.0
price_output_per_million = 2.0

[models.steady]
model_id = "chat-model"
base_url = "{base_url}"
price_input_per_million = 1.0
price_output_per_million = 2.0

[models.embedder]
kind = "embedding"
model_id = "text-embedding-3-small"
base_url = "{base_url}"
embedding_dims = 384

[roles]
chat = ["flaky", "steady"]
memory = ["steady"]
"""
REQUESTS = "agentctl_http_requests_total"
SCRAPE_PATIENCE_SECONDS = 30.0  # memory is written after the turn, off the request path


def exported_series_names(exposition: str) -> set[str]:
    """Series names with at least one sample (counters as name_total, histograms as name_bucket/_sum/_count):
    a family declared without samples gives a query nothing to return either."""
    return {sample.name for family in text_string_to_metric_families(exposition) for sample in family.samples}


def labels_by_series(exposition: str) -> dict[str, set[str]]:
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
    return labels


def labels_missing(expressions: list[str], exposition: str) -> list[str]:
    """Labels an expression groups by or matches on that none of its agentctl series carries (Prometheus
    adds instance and job): such a query silently returns nothing, or one unlabelled line."""
    available = labels_by_series(exposition)
    problems = []
    for expression in expressions:
        names = agentctl_series_names([expression])
        if not names:
            continue  # cAdvisor's and Prometheus's own series
        carried = {"instance", "job"}.union(*(available.get(name, set()) for name in names))
        unknown = queried_labels(expression) - carried
        if unknown:
            problems.append(f"{sorted(unknown)} in {expression.strip()}")
    return problems


def exercise_every_path(api: ApiClient, simulator: RunningSimulator) -> None:
    """Sign up, trip a rate limit, take a plain and a streamed turn through a failing model and its fallback."""
    simulator.configure({"faults": {"flaky-model": {"rate_500": 1.0}}})
    email, user_token = api.new_user()
    for _ in range(2):
        login = api.request("POST", "/auth/login", json={"email": email, "password": api.password})
    assert login.status_code == 429, login.text
    conversation = Conversation(api, user_token=user_token)
    answered = conversation.send("My favourite colour is teal.")
    assert answered.status_code == 200, answered.text
    events = conversation.stream("What is my favourite colour?")
    assert events[-1][0] == "done", events


@pytest.mark.slow
def test_every_queried_metric_is_exported_by_a_live_server(
    tmp_path: Path, migrated_database_url: str, simulator: RunningSimulator
) -> None:
    queried = agentctl_series_names(dashboard_expressions() + alert_expressions())
    assert len(queried) > 20, queried
    (tmp_path / "models.toml").write_text(MODELS_FILE.format(base_url=simulator.base_url))
    server = serve_with_model(
        tmp_path,
        migrated_database_url,
        simulator,
        "--workers",
        "2",
        AGENTCTL_LLM__MODELS_FILE="models.toml",
        AGENTCTL_LLM__MAX_ATTEMPTS="2",
        AGENTCTL_LLM__BACKOFF_MAX_SECONDS="0.1",
        # Redis, as in the stack: rate-limit windows shared by the two workers.
        REDIS_URL="redis://127.0.0.1:6379/15",
        AGENTCTL_RATELIMIT__LOGIN_PER_EMAIL="1/minute",
        # Names are the subject here, not the recall budget: a cold first search must not time out.
        AGENTCTL_MEMORY__RECALL_BUDGET_SECONDS="10",
    )
    try:
        server.wait_until_healthy()
        exercise_every_path(ApiClient(server), simulator)
        deadline = time.monotonic() + SCRAPE_PATIENCE_SECONDS
        while True:
            scrape = httpx.get(f"{server.base_url}/metrics", timeout=10)
            assert scrape.status_code == 200, scrape.text
            missing = queried - exported_series_names(scrape.text)
            if not missing or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    finally:
        server.terminate()
    assert sorted(missing) == [], f"queried by the dashboard or an alert, not exported:\n{scrape.text}"
    assert labels_missing(dashboard_expressions() + alert_expressions(), scrape.text) == []
    # What the alerts' matchers assume of the values: statuses are codes (status=~"5.."), probes are /health*.
    requests = [s for f in text_string_to_metric_families(scrape.text) for s in f.samples if s.name == REQUESTS]
    assert all(re.fullmatch(r"[1-5]\d\d", sample.labels["status"]) for sample in requests)
    assert {sample.labels["route"] for sample in requests} >= {"/health", "/api/v1/chatbot/chat"}
