"""deploy/prometheus and deploy/grafana: the alert rules pass `promtool check rules` and their unit tests
(`promtool test rules`, from Debian's prometheus package), cover what operators page on, and the dashboard
has the panels operators ask for, each querying the selected job and instance. That every metric they name
exists in a live corral's /metrics is proved in tests/integration/test_deploy_metric_names.py."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML comes with kubernetes-validate (the test extra)")

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
RULES = DEPLOY / "prometheus" / "corral-alerts.yaml"
RULE_TESTS = DEPLOY / "prometheus" / "corral-alerts.test.yaml"
DASHBOARD = DEPLOY / "grafana" / "corral-dashboard.json"


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus; make system-packages)")
    return path


def alerts() -> dict[str, dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"] if "alert" in rule}


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def test_promtool_accepts_the_alert_rules() -> None:
    result = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_alert_rules_pass_their_unit_tests() -> None:
    command = [promtool(), "test", "rules", RULE_TESTS.name]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=RULE_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_rules_alert_on_what_breaks_a_fleet() -> None:
    wanted = {
        "CorralWorkerCrashLoop",
        "CorralWorkerRecyclingHigh",
        "CorralReadinessFlapping",
        "CorralLatencyP99High",
        "CorralListenBacklogNearLimit",
        "CorralMemoryNearLimit",
    }
    found = alerts()
    assert wanted <= set(found)
    for name, rule in found.items():
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name


def test_the_dashboard_has_the_panels_operators_ask_for() -> None:
    titles = {panel["title"] for panel in dashboard()["panels"]}
    assert {
        "Workers by state",
        "Requests by status class",
        "Errors",
        "Latency p50 / p95 / p99",
        "Active requests and connections",
        "Listen backlog",
        "Worker recycling by reason",
        "RSS per worker",
    } <= titles


def test_every_dashboard_query_follows_the_job_and_instance_selectors() -> None:
    board = dashboard()
    variables = {variable["name"] for variable in board["templating"]["list"]}
    assert {"datasource", "job", "instance"} <= variables
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert 'job=~"$job"' in target["expr"] and 'instance=~"$instance"' in target["expr"], target["expr"]


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    """promtool parses each query as a recording rule, with Grafana's variables given example values."""
    board = dashboard()
    expressions = [target["expr"] for panel in board["panels"] for target in panel["targets"]]
    expressions += [annotation["expr"] for annotation in board["annotations"]["list"] if "expr" in annotation]
    examples = {"$__rate_interval": "1m", "$job": ".*", "$instance": ".*"}
    rules = []
    for number, expr in enumerate(expressions):
        for variable, example in examples.items():
            expr = expr.replace(variable, example)
        assert "$" not in expr, f"an unknown variable in {expr}"
        rules.append({"record": f"dashboard:query_{number}", "expr": expr})
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
