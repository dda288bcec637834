"""Every corral metric that the alert rules (deploy/prometheus) and the Grafana dashboard (deploy/grafana) query
exists in a live corral's /metrics: a real server with its admin endpoint, a few requests, one scrape."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import REPO_ROOT, free_port, raw_request, wait_until

yaml = pytest.importorskip("yaml", reason="PyYAML comes with kubernetes-validate (the test extra)")

_NAME = re.compile(r"\bcorral_[a-z0-9_]+\b")


def rule_expressions() -> list[str]:
    groups = yaml.safe_load((REPO_ROOT / "deploy" / "prometheus" / "corral-alerts.yaml").read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def dashboard_expressions() -> list[str]:
    board = json.loads((REPO_ROOT / "deploy" / "grafana" / "corral-dashboard.json").read_text())
    found = [target["expr"] for panel in board["panels"] for target in panel["targets"]]
    found += [variable["definition"] for variable in board["templating"]["list"] if "definition" in variable]
    found += [annotation["expr"] for annotation in board["annotations"]["list"] if "expr" in annotation]
    return found


def queried_names(expressions: list[str]) -> set[str]:
    return {name for expr in expressions for name in _NAME.findall(expr)}


def exposed_names(text: str) -> set[str]:
    """Family names and sample names (with _total, _bucket, _sum, _count) in an exposition."""
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
    return names


def scrape_a_busy_server(serve: Any) -> str:
    admin_port = free_port()
    # A TCP listener without reuse_port: its accept queue is reported (corral_listen_backlog).
    server = serve("tests.apps.echo:app", "-w", "2", "--admin-bind", f"127.0.0.1:{admin_port}")
    for _ in range(5):
        raw_request(server.port, b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    url = f"http://127.0.0.1:{admin_port}/metrics"

    def counted() -> bool:
        text = httpx.get(url, timeout=5.0).text
        return "corral_http_request_duration_seconds_count 5.0" in text and 'corral_workers{state="ready"} 2.0' in text

    assert wait_until(counted, 15, interval=0.1), server.stderr_text()
    return httpx.get(url, timeout=5.0).text


def test_every_metric_the_alerts_and_the_dashboard_query_exists(serve: Any) -> None:
    rules, panels = queried_names(rule_expressions()), queried_names(dashboard_expressions())
    assert len(rules) >= 8 and len(panels) >= 12  # the extraction found the queries
    exposed = exposed_names(scrape_a_busy_server(serve))
    assert rules - exposed == set(), "alert rules query metrics corral does not export"
    assert panels - exposed == set(), "the dashboard queries metrics corral does not export"
