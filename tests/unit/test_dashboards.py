"""The Grafana dashboard and the alert rules query only metrics the service exports.

They are files; so is the code that defines the metrics (tests.support.defined_metric_names).
That the running service exports every defined name is checked in
tests/integration/test_metrics.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from tests.support import defined_metric_names

ROOT = Path(__file__).resolve().parents[2]

PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
    "unless", "offset", "inf", "nan",
}  # fmt: skip


def promql_metric_names(expr: str) -> set[str]:
    """Return the metric names a PromQL expression refers to."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges and subqueries
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\$\w+", "", expr)  # dashboard variables
    names = set()
    # A name does not start inside a number (1e-9, offset 1h).
    for match in re.finditer(r"(?<![A-Za-z0-9_:.])[A-Za-z_:][A-Za-z0-9_:]*", expr):
        word = match.group()
        if expr[match.end() :].lstrip().startswith("("):
            continue  # a function
        if word.lower() not in PROMQL_WORDS:
            names.add(word)
    return names


def dashboard_metric_names(dashboard: dict[str, Any]) -> set[str]:
    """Return the metric names the PromQL of every panel target refers to."""
    names: set[str] = set()
    for panel in _panels(dashboard):
        for target in panel.get("targets", []):
            names |= promql_metric_names(target.get("expr", ""))
    return names


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # panels inside a collapsed row


def test_dashboard_queries_only_metrics_the_service_exports() -> None:
    dashboard = json.loads((ROOT / "ops" / "grafana-dashboard.json").read_text())
    exported = defined_metric_names()
    referenced = dashboard_metric_names(dashboard)
    assert referenced, "the dashboard queries nothing"
    assert referenced - exported == set()
    # Every required view is there: ingest, success, latency, retries, circuits, backlog, watchdog.
    required = {
        "webhooks_events_ingested_total",
        "webhooks_deliveries_total",
        "webhooks_delivery_attempts_total",
        "webhooks_delivery_attempt_duration_seconds_bucket",
        "webhooks_end_to_end_latency_seconds_bucket",
        "webhooks_circuits_open",
        "webhooks_pending_deliveries",
        "webhooks_oldest_pending_age_seconds",
        "webhooks_watchdog_requeued_total",
    }
    assert required <= referenced


def test_alert_rules_query_only_metrics_the_service_exports() -> None:
    rules = yaml.safe_load((ROOT / "ops" / "alerts.yml").read_text())
    exported = defined_metric_names()
    referenced: set[str] = set()
    for group in rules["groups"]:
        for rule in group["rules"]:
            referenced |= promql_metric_names(rule["expr"])
    # `up` is Prometheus' own metric for every scrape target.
    assert referenced - exported == {"up"}


def test_dashboard_metric_parser_sees_through_promql() -> None:
    dashboard = {
        "panels": [
            {
                "targets": [
                    {
                        "expr": 'histogram_quantile(0.99, sum by (le) (rate(a_bucket{x="y"}[5m])))'
                        " / on(job) group_left b_total offset 1h > bool 1e-9 or $var"
                    }
                ]
            }
        ]
    }
    assert dashboard_metric_names(dashboard) == {"a_bucket", "b_total"}
