"""The report of `agentctl loadtest`: Locust's final stats, the server's /metrics before and after, a CI gate.

Reads only files Locust wrote (its --json-file and --csv output, the scenario's failure summary) and the
server's Prometheus text: Locust itself is never imported here (its gevent patching would reach agentctl).
"""

from __future__ import annotations

import csv
import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

TTFT = "TTFT"  # request type of the scenario's time-to-first-token entries (loadtests/chat_scenario.py)
REJOIN = "REJOIN"  # request type of the drop-and-rejoin action's rejoin latency (request to first replayed event)
SHED = "SHED"  # request type of requests the server refused for load (503 overloaded, 429) with Retry-After
NOT_REQUESTS = {TTFT, REJOIN, "CHECK"}  # entries that are measurements or late checks, not HTTP requests
TURN_PATHS = ("/chatbot/chat", "/chatbot/chat/stream")
PERCENTILES = {"p50": 0.50, "p95": 0.95, "p99": 0.99}

# The server's own counters worth a before/after difference, and the label that splits each.
SERVER_COUNTERS = {
    "agentctl_chat_turns_total": "status",
    "agentctl_model_calls_total": "role",
    "agentctl_model_retries_total": "role",
    "agentctl_model_fallbacks_total": "model",
    "agentctl_ratelimit_rejections_total": "route_class",
    "agentctl_admission_shed_total": "what",  # refused for overload (503 overloaded): turn, password
    "agentctl_http_requests_total": "status",
    # Whether memory kept up: recalls in time or past their budget, turns remembered or still queued at the end.
    "agentctl_memory_recalls_total": "outcome",
    "agentctl_memory_writes_total": "outcome",
    # The server's own time to first token (cumulative buckets by upper bound): what the turns waited inside the
    # server, apart from what the load generator added to its own measurements.
    "agentctl_chat_time_to_first_token_seconds_bucket": "le",
}


# --- percentiles over Locust's histogram ---------------------------------------------------------------------


def percentile(histogram: Mapping[float, int], fraction: float) -> float | None:
    """Nearest-rank percentile of a {milliseconds: count} histogram (Locust rounds above 100 ms)."""
    total = sum(histogram.values())
    if not total:
        return None
    rank, seen = max(1, math.ceil(fraction * total)), 0
    for value in sorted(histogram):
        seen += histogram[value]
        if seen >= rank:
            return value
    return max(histogram)


def latency_summary(histogram: Mapping[float, int], maximum: float | None) -> dict[str, float | None]:
    summary: dict[str, float | None] = {label: percentile(histogram, share) for label, share in PERCENTILES.items()}
    summary["max"] = None if maximum is None else round(maximum, 1)
    return summary


def _histogram(entry: Mapping[str, Any]) -> Counter[float]:
    return Counter({float(value): count for value, count in (entry.get("response_times") or {}).items()})


# --- the report ----------------------------------------------------------------------------------------------


def endpoint_report(stats: list[dict[str, Any]], errors: list[dict[str, Any]]) -> dict[str, Any]:
    """Per endpoint and in total: requests, failures by cause, shed requests, RPS, latency and TTFT percentiles.

    A shed request (the scenario's SHED entries: refused for load with Retry-After) counts among its endpoint's
    requests but is neither a failure nor in the latency of answered requests; the refusals have their own latency.
    """
    window = _window_seconds(stats)
    causes: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    for error in errors:
        causes[(error["method"], error["name"])][_cause(error["error"])] += int(error["occurrences"])
    rows: dict[str, dict[str, Any]] = {}
    late = Counter[str]()
    ttft: list[dict[str, Any]] = []
    rejoin: list[dict[str, Any]] = []
    shed_entries: list[tuple[str, int, Counter[float], float | None]] = []
    total_histogram: Counter[float] = Counter()
    shed_histogram: Counter[float] = Counter()
    total_max, shed_max = 0.0, 0.0
    for entry in sorted(stats, key=lambda item: (item["name"], item["method"])):
        method, name = entry["method"], entry["name"]
        histogram, maximum = _histogram(entry), entry.get("max_response_time")
        if method in (TTFT, REJOIN):
            measured = ttft if method == TTFT else rejoin
            measured.append({"name": name, "count": entry["num_requests"], **latency_summary(histogram, maximum)})
            continue
        if method in NOT_REQUESTS:
            late.update(causes.get((method, name), Counter()))
            continue
        if method == SHED:
            shed_entries.append((name, entry["num_requests"], histogram, maximum))
            shed_histogram.update(histogram)
            shed_max = max(shed_max, maximum or 0.0)
            continue
        total_histogram.update(histogram)
        total_max = max(total_max, maximum or 0.0)
        label = name if name.startswith(method) else f"{method} {name}"
        rows[label] = {
            "name": label,
            "requests": entry["num_requests"],
            "failures": entry["num_failures"],
            "shed": 0,
            "failures_by_cause": dict(causes.get((method, name), Counter()).most_common()),
            "rps": None,
            "latency_ms": latency_summary(histogram, maximum),
            "shed_latency_ms": None,
        }
    for name, count, histogram, maximum in shed_entries:
        # The scenario names a shed request after its endpoint ("POST /api/v1/auth/login"), method included.
        label = next((label for label in rows if label == name or label.endswith(f" {name}")), name)
        row = rows.setdefault(
            label,
            {"name": label, "requests": 0, "failures": 0, "shed": 0, "failures_by_cause": {}, "rps": None,
             "latency_ms": latency_summary(Counter(), None), "shed_latency_ms": None},
        )  # fmt: skip
        row["requests"] += count
        row["shed"] += count
        row["shed_latency_ms"] = latency_summary(histogram, maximum)
    endpoints = [rows[label] for label in sorted(rows)]
    for endpoint in endpoints:
        endpoint["rps"] = round(endpoint["requests"] / window, 2) if window else None
    requests = sum(endpoint["requests"] for endpoint in endpoints)
    shed = sum(endpoint["shed"] for endpoint in endpoints)
    failures = sum(endpoint["failures"] for endpoint in endpoints) + sum(late.values())
    turns = sum(
        endpoint["requests"] - endpoint["failures"] - endpoint["shed"]
        for endpoint in endpoints
        if endpoint["name"].endswith(TURN_PATHS) and endpoint["name"].startswith("POST")
    )
    answered = requests - shed
    return {
        "window_seconds": round(window, 2),
        "endpoints": endpoints,
        "time_to_first_token_ms": ttft,
        "rejoin_to_first_event_ms": rejoin,
        "late_failures_by_cause": dict(late.most_common()),
        "total": {
            "requests": requests,  # every request sent, shed ones included
            "failures": failures,  # real failures only: a shed request is not one
            "shed": shed,
            "error_percent": _percent(failures, requests),
            "shed_percent": _percent(shed, requests),
            "success_percent": _percent(requests - failures - shed, requests),  # answered as expected
            "rps": round(requests / window, 2) if window else None,
            "turns": turns,
            "turns_per_second": round(turns / window, 2) if window else None,
            "latency_ms": latency_summary(total_histogram, total_max if answered else None),
            "shed_latency_ms": latency_summary(shed_histogram, shed_max if shed else None),
        },
    }


def _percent(part: int, whole: int) -> float | None:
    return round(100 * part / whole, 3) if whole else None


def _window_seconds(stats: Iterable[Mapping[str, Any]]) -> float:
    starts = [entry["start_time"] for entry in stats if entry.get("start_time")]
    ends = [entry["last_request_timestamp"] for entry in stats if entry.get("last_request_timestamp")]
    return max(ends) - min(starts) if starts and ends else 0.0


def _cause(error: str) -> str:
    """Locust's repr of a failure ("CatchResponseError('HTTP 429 rate-limited')") as the plain cause."""
    found = re.fullmatch(r"\w+\((['\"])(.*)\1\)", error.strip(), flags=re.S)
    return (found.group(2) if found else error)[:160]


def failures_from_csv(path: Path) -> list[dict[str, Any]]:
    """Locust's _failures.csv as the scenario summary's error list (for scenarios without the summary)."""
    if not path.exists():
        return []
    with path.open(newline="", encoding="utf-8") as file:
        return [
            {"method": row["Method"], "name": row["Name"], "error": row["Error"], "occurrences": row["Occurrences"]}
            for row in csv.DictReader(file)
        ]


# --- the server's metrics ------------------------------------------------------------------------------------


def scrape_counters(base_url: str) -> dict[str, dict[str, float]] | None:
    """The counters of SERVER_COUNTERS from GET /metrics, summed by their splitting label; None if unreachable."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        response = httpx.get(f"{base_url.rstrip('/')}/metrics", timeout=10)
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    counters: dict[str, dict[str, float]] = {name: {} for name in SERVER_COUNTERS}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            name = sample.name
            if name not in SERVER_COUNTERS:
                continue  # other metrics, _created samples
            label = sample.labels.get(SERVER_COUNTERS[name], "")
            if name == "agentctl_http_requests_total":
                label = f"{label[:1]}xx" if label else ""
            counters[name][label] = counters[name].get(label, 0.0) + sample.value
    return counters


def counter_deltas(
    before: dict[str, dict[str, float]] | None, after: dict[str, dict[str, float]] | None
) -> dict[str, dict[str, float]] | None:
    """What the run added to each counter (zero rows left out)."""
    if before is None or after is None:
        return None
    deltas: dict[str, dict[str, float]] = {}
    for name, values in after.items():
        changed = {label: value - before.get(name, {}).get(label, 0.0) for label, value in values.items()}
        deltas[name] = {label: round(value, 3) for label, value in sorted(changed.items()) if value}
    return deltas


# --- the gate ------------------------------------------------------------------------------------------------

_CONDITION = re.compile(r"\s*([a-z][a-z0-9_]*)\s*(>=|<=|>|<)\s*([0-9]*\.?[0-9]+)\s*(ms|s|%)?\s*")
_LATENCY_METRICS = {
    *("p50", "p95", "p99", "max"),
    *("ttft_p50", "ttft_p95", "ttft_p99", "ttft_max"),
    *("shed_p50", "shed_p95", "shed_p99", "shed_max"),
}
_PERCENT_METRICS = {"errors", "shed", "success"}
_PLAIN_METRICS = {"rps", "turns_per_second"}
GATE_METRICS = sorted(_LATENCY_METRICS | _PERCENT_METRICS | _PLAIN_METRICS)


@dataclass(frozen=True)
class Condition:
    """One failing condition of --fail-on: the run fails when ``metric operator threshold`` holds."""

    text: str
    metric: str
    operator: str
    threshold: float  # milliseconds for latencies, percent for errors, shed and success

    def holds(self, value: float) -> bool:
        return {
            ">": value > self.threshold,
            ">=": value >= self.threshold,
            "<": value < self.threshold,
            "<=": value <= self.threshold,
        }[self.operator]


def parse_fail_on(text: str) -> list[Condition]:
    """ "p99>5s,errors>1%" -> conditions; ValueError with a one-line reason for anything else."""
    conditions = []
    for part in filter(str.strip, text.split(",")):
        found = _CONDITION.fullmatch(part)
        if not found:
            raise ValueError(f"--fail-on: {part.strip()!r} is not METRIC>VALUE (e.g. p99>5s, errors>1%, shed>20%)")
        metric, operator, number, unit = found.groups()
        if metric not in GATE_METRICS:
            raise ValueError(f"--fail-on: unknown metric {metric!r}; one of {', '.join(GATE_METRICS)}")
        value = float(number)
        if metric in _LATENCY_METRICS:
            if unit == "%":
                raise ValueError(f"--fail-on: {metric} is a latency: give ms or s, not %")
            value *= 1000 if unit == "s" else 1
        elif unit not in (None, "%") or (metric in _PLAIN_METRICS and unit):
            raise ValueError(
                f"--fail-on: {metric} takes {'a percentage' if metric in _PERCENT_METRICS else 'a number'}"
            )
        conditions.append(Condition(part.strip(), metric, operator, value))
    if not conditions:
        raise ValueError("--fail-on: no condition given")
    return conditions


def gate_values(requests: Mapping[str, Any]) -> dict[str, float | None]:
    """The value of each gate metric in this run (None when the run did not measure it)."""
    total = requests["total"]
    values: dict[str, float | None] = {key: total["latency_ms"].get(key) for key in ("p50", "p95", "p99", "max")}
    values.update({f"shed_{key}": total["shed_latency_ms"].get(key) for key in ("p50", "p95", "p99", "max")})
    values.update(
        errors=total["error_percent"],
        shed=total["shed_percent"],
        success=total["success_percent"],
        rps=total["rps"],
        turns_per_second=total["turns_per_second"],
    )
    ttft = requests["time_to_first_token_ms"]
    for key in ("p50", "p95", "p99", "max"):
        values[f"ttft_{key}"] = max((entry[key] for entry in ttft if entry[key] is not None), default=None)
    return values


def evaluate_gate(conditions: list[Condition], values: Mapping[str, float | None]) -> list[dict[str, Any]]:
    """Each condition with the run's value and whether it failed the run (a missing value fails it)."""
    return [
        {
            "condition": condition.text,
            "value": values.get(condition.metric),
            "failed": values.get(condition.metric) is None or condition.holds(values[condition.metric] or 0.0),
        }
        for condition in conditions
    ]


# --- printing ------------------------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value / 1000:.2f} s" if value >= 10_000 else f"{value:g}"


def print_report(report: Mapping[str, Any], console: Any) -> None:
    """The per-endpoint table, time to first token, the server's counters and the gate, for people."""
    from rich.table import Table

    requests = report["requests"]
    table = Table(title=f"agentctl loadtest — {report['configuration']['users']} users, "
                  f"{requests['window_seconds']:g} s", title_justify="left")  # fmt: skip
    for column in ("endpoint", "requests", "failures", "shed", "RPS", "p50 ms", "p95 ms", "p99 ms", "max ms"):
        table.add_column(column, justify="left" if column == "endpoint" else "right")
    rows = [*requests["endpoints"], {"name": "total", **requests["total"]}]
    for row in rows:
        latency = row["latency_ms"]
        failures = str(row["failures"])
        if row.get("failures_by_cause"):
            failures += "\n" + "\n".join(f"{count} x {cause}" for cause, count in row["failures_by_cause"].items())
        table.add_row(
            "[bold]total[/bold]" if row["name"] == "total" else row["name"].replace(" /api/v1/", " /"),
            str(row["requests"]),
            failures,
            str(row.get("shed", 0)),
            f"{row['rps']:g}" if row["rps"] is not None else "-",
            *(_ms(latency[key]) for key in ("p50", "p95", "p99", "max")),
        )
    console.print(table)
    for title, key in (("time to first token", "time_to_first_token_ms"), ("rejoin", "rejoin_to_first_event_ms")):
        for entry in requests.get(key, []):
            console.print(
                f"{title} ({entry['name']}, {entry['count']}): "
                + ", ".join(f"{name} {_ms(entry[name])} ms" for name in ("p50", "p95", "p99", "max"))
            )
    total = requests["total"]
    if total["success_percent"] is not None:
        console.print(
            f"success rate {total['success_percent']:g}% ({total['failures']} failed, {total.get('shed', 0)} shed "
            f"of {total['requests']}); {total['turns']} chat turns, {total['turns_per_second']:g} turns/s"
        )
    if total.get("shed"):
        refusals = total["shed_latency_ms"]
        console.print(
            f"shed (refused for load, Retry-After honoured): {total['shed']} = {total['shed_percent']:g}% of requests; "
            f"refusal latency p50 {_ms(refusals['p50'])} ms, p99 {_ms(refusals['p99'])} ms, "
            f"max {_ms(refusals['max'])} ms"
        )
        for endpoint in requests["endpoints"]:
            if endpoint["shed"]:
                console.print(f"  shed {endpoint['shed']} x {endpoint['name'].replace(' /api/v1/', ' /')}")
    for cause, count in requests["late_failures_by_cause"].items():
        console.print(f"late failure: {count} x {cause}")
    deltas = report["server"]["counter_deltas"]
    if deltas is None:
        console.print("server metrics: /metrics not reachable before and after the run")
    else:
        for name, values in deltas.items():
            shown = ", ".join(f"{label or 'all'} +{value:g}" for label, value in values.items()) or "+0"
            console.print(f"server {name.removeprefix('agentctl_')}: {shown}")
    for replica in report["server"].get("replicas") or []:
        served = replica["http_requests"]
        shown = "not reachable" if served is None else ", ".join(f"{k} {v:g}" for k, v in served.items()) or "none"
        console.print(f"replica {replica['url']}: HTTP requests served {shown}")
    memory = report["server"].get("memory_mb")
    if memory:
        console.print(
            f"server memory (RSS, all processes): {memory['start']:g} MB at start, {memory['end']:g} MB at end"
        )
    generator = report["load_generator"]
    cpu = f"Locust used {generator['cpu_seconds']:g} CPU-s"
    for name, seconds in report["server"].get("cpu_seconds", {}).items():
        cpu += f", {name} {seconds:g}"
    console.print(f"{cpu} in {generator['wall_seconds']:g} s on {report['configuration']['cores']} cores")
    for check in report.get("gate") or []:
        verdict = "[red]FAIL[/red]" if check["failed"] else "[green]ok[/green]"
        console.print(f"gate {check['condition']}: {verdict} (value {check['value']})")
