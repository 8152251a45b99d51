"""Prometheus's own tool judges the stack's config and alert rules, and proves each alert fires when it should
(and stays quiet when it should not) on made-up series."""

from __future__ import annotations

from tests.compose.stack import (
    ALERT_RULE_TESTS,
    ALERT_RULES,
    PROMETHEUS_CONFIG,
    alert_rules,
    compose_stack,
    load_yaml,
    run_promtool,
)

ALERTS_ASKED_FOR = {
    "AgentctlChatLatencyHigh": "agentctl_chat_turn_duration_seconds_bucket",
    "AgentctlHighErrorRatio": "agentctl_http_requests_total",
    "AgentctlModelCircuitOpen": "agentctl_model_circuit_state",
    "AgentctlMemoryQueueSaturated": "agentctl_memory_queue_capacity",
}


def test_alert_rules_pass_promtool_check() -> None:
    checked = run_promtool("check", "rules", str(ALERT_RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_prometheus_config_passes_promtool_check() -> None:
    """rule_files is relative to the config, and the folder is mounted whole: the check reads the same files."""
    checked = run_promtool("check", "config", str(PROMETHEUS_CONFIG))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_each_alert_fires_on_the_series_that_should_fire_it() -> None:
    tested = run_promtool("test", "rules", str(ALERT_RULE_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    # Every alert has a case in the unit tests, so a new rule cannot go untested.
    cases = load_yaml(ALERT_RULE_TESTS)["tests"]
    exercised = {check["alertname"] for case in cases for check in case["alert_rule_test"]}
    assert exercised == {rule["alert"] for rule in alert_rules()}


def test_the_alerts_the_issue_asks_for_exist_with_a_severity_and_a_summary() -> None:
    rules = {rule["alert"]: rule for rule in alert_rules()}
    for name, metric in ALERTS_ASKED_FOR.items():
        assert metric in rules[name]["expr"], name
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"], name
    assert "> 5" in rules["AgentctlChatLatencyHigh"]["expr"]
    assert "histogram_quantile(0.99" in rules["AgentctlChatLatencyHigh"]["expr"]
    assert "== 2" in rules["AgentctlModelCircuitOpen"]["expr"]
    assert "> 0.8" in rules["AgentctlMemoryQueueSaturated"]["expr"]


def test_prometheus_scrapes_the_app_and_cadvisor_where_compose_runs_them() -> None:
    config = load_yaml(PROMETHEUS_CONFIG)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    services = compose_stack()["services"]
    app = jobs["agentctl"]
    assert app.get("metrics_path", "/metrics") == "/metrics"
    (discovery,) = app["dns_sd_configs"]
    assert discovery["names"] == ["app"]
    assert discovery["port"] == 8000
    assert "app" in services
    assert jobs["cadvisor"]["static_configs"][0]["targets"] == ["cadvisor:8080"]
    # The folder holding prometheus.yml and alerts.yml is what the container reads its config from.
    prometheus = services["prometheus"]
    assert "./prometheus:/etc/prometheus:ro" in prometheus["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    assert config["rule_files"] == [ALERT_RULES.name]
