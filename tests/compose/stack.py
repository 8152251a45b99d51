"""The compose stack's files as the tests read them, and the PromQL they hold."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from tests.support import REPO_ROOT

COMPOSE_DIR = REPO_ROOT / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
DOCKERFILE = COMPOSE_DIR / "Dockerfile"
PROMETHEUS_CONFIG = COMPOSE_DIR / "prometheus" / "prometheus.yml"
ALERT_RULES = COMPOSE_DIR / "prometheus" / "alerts.yml"
ALERT_RULE_TESTS = Path(__file__).with_name("alerts_test.yml")
DASHBOARD = COMPOSE_DIR / "grafana" / "dashboards" / "agentctl.json"
GRAFANA_PROVISIONING = COMPOSE_DIR / "grafana" / "provisioning"
ENVIRONMENTS = ("development", "staging", "production")

_AGENTCTL_METRIC = re.compile(r"\bagentctl_[a-z_]+")
# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}; $$ is a literal dollar.
_INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")

_GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
_SELECTOR = re.compile(r"\{([^{}]*)\}")
_MATCHER = re.compile(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)")
_WHOLE_FILE = object()

# What Grafana puts in place of its variables before a query reaches Prometheus.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h", "$instance": ".*"}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def compose_stack() -> dict[str, Any]:
    return load_yaml(COMPOSE_FILE)


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_panels(model: Mapping[str, Any] | None = None) -> Iterator[dict[str, Any]]:
    """Every panel, including those inside collapsed rows."""
    for panel in (model or dashboard())["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_expressions() -> list[str]:
    """The PromQL of every panel target and of every query variable, as written (Grafana variables kept)."""
    model = dashboard()
    expressions = [target["expr"] for panel in dashboard_panels(model) for target in panel.get("targets", [])]
    for variable in model.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable["query"]
            expressions.append(query["query"] if isinstance(query, dict) else query)
    return expressions


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(ALERT_RULES)["groups"] for rule in group["rules"]]


def alert_expressions() -> list[str]:
    return [rule["expr"] for rule in alert_rules()]


def agentctl_series_names(expressions: list[str]) -> set[str]:
    """The agentctl series an expression reads, as Prometheus stores them (counters with _total, histograms
    with _bucket, _sum or _count)."""
    return {name for expression in expressions for name in _AGENTCTL_METRIC.findall(expression)}


def compose_values(node: Any = _WHOLE_FILE) -> Iterator[str]:
    """Every string value of docker-compose.yml, where compose interpolates (comments are not)."""
    if node is _WHOLE_FILE:
        node = compose_stack()
    if isinstance(node, dict):
        for value in node.values():
            yield from compose_values(value)
    elif isinstance(node, list):
        for value in node:
            yield from compose_values(value)
    elif isinstance(node, str):
        yield node


def queried_labels(expression: str) -> set[str]:
    """Labels an expression groups by or matches on."""
    labels = {label.strip() for group in _GROUPING.findall(expression) for label in group.split(",") if label.strip()}
    for matchers in _SELECTOR.findall(expression):
        labels.update(_MATCHER.findall(matchers))
    return labels


def interpolate(text: str, variables: Mapping[str, str]) -> str:
    """What docker compose makes of ``text`` given ``variables`` (the subset of its syntax the stack uses)."""

    def replace(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        value = variables.get(name)
        if op in (":?", "?") and (value is None or (op == ":?" and value == "")):
            raise LookupError(f"{name}: {arg}")
        if op == ":-" and not value:
            return arg
        if op == "-" and value is None:
            return arg
        return value or ""

    return _INTERPOLATION.sub(replace, text.replace("$$", "\0")).replace("\0", "$")


def interpolated_names(text: str) -> set[str]:
    """Every variable ``text`` interpolates."""
    return {match["name"] for match in _INTERPOLATION.finditer(text.replace("$$", ""))}


def read_env_example(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of an env example (comments and blank lines skipped)."""
    values = {}
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            key, _, value = stripped.partition("=")
            values[key.strip()] = value.strip()
    return values


def commented_out_variables(path: Path) -> set[str]:
    """Variables an env example mentions only in a comment line of their own (``# NAME=value``)."""
    return set(re.findall(r"^#\s*([A-Z][A-Z0-9_]*)=", path.read_text(), flags=re.M))


def promtool() -> str:
    """Prometheus's own checker; `make services` installs it (Debian's prometheus package)."""
    path = shutil.which("promtool")
    assert path is not None, "promtool is not installed: run `make services` (apt-get install prometheus)"
    return path


def run_promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def committed_files(directory: Path) -> list[Path]:
    """Files under ``directory`` that git would commit: tracked or new, minus what .gitignore excludes."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z", "--", str(directory)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    return [REPO_ROOT / name for name in listed.split("\0") if name and (REPO_ROOT / name).is_file()]
