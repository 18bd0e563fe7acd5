"""The Grafana dashboard and the Prometheus alerts (deploy/monitoring/): the rules pass
``promtool check rules`` and their unit tests, and every metric and label the dashboard,
the rules and docs/observability.md name is one Keel exports.

What Keel exports is read from prometheus_client itself: every module of Keel's packages
that uses prometheus_client is imported, and the metrics it defines (with the process and
Python collectors every process also serves) give the names ``/metrics`` shows.
"""

from __future__ import annotations

import functools
import importlib
import json
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import prometheus_client
import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "monitoring"
DASHBOARD = MONITORING / "keel-dashboard.json"
ALERTS = MONITORING / "alerts.yaml"
OBSERVABILITY = ROOT / "docs" / "observability.md"
#: Keel's packages, as pyproject.toml lists them (``keel`` is the generated code).
PACKAGES = [
    pattern.rstrip("*")
    for pattern in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"
    ]["find"]["include"]
    if pattern != "keel*"
]

#: Labels Prometheus adds to every series of a target (``job``, ``instance``) or that
#: deploy/monitoring/prometheus.yaml adds; ``le`` is every histogram bucket's.
TARGET_LABELS = {"job", "instance", "namespace", "keel_process", "le"}

#: Series Prometheus makes itself for every target.
PROMETHEUS_SERIES = {"up": set[str]()}

#: Exposition suffixes of each metric type (prometheus_client's text format).
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
}

PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
PROMQL_KEYWORDS |= {"and", "or", "unless", "bool", "offset", "inf", "nan"}


@functools.cache
def exported() -> dict[str, set[str]]:
    """Every series name Keel's processes expose, with the label names it carries."""
    for module in keel_metric_modules():
        importlib.import_module(module)
    names: dict[str, set[str]] = dict(PROMETHEUS_SERIES)
    for family in prometheus_client.REGISTRY.collect():
        labels = {label for sample in family.samples for label in sample.labels}
        for suffix in SUFFIXES[family.type]:
            names[family.name + suffix] = labels
    for metric in keel_metrics():
        # A labelled metric without children has no samples yet: its label names come
        # from its definition (prometheus_client keeps them in ``_labelnames``).
        labels = set(metric._labelnames)
        for name in [n for n in names if n.startswith(metric._name)]:
            names[name] |= labels
    return names


def keel_metric_modules() -> list[str]:
    """Modules of Keel's packages that use prometheus_client."""
    modules = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "prometheus_client" in path.read_text():
                parts = path.relative_to(ROOT).with_suffix("").parts
                modules.append(".".join(parts))
    return modules


def keel_metrics() -> Iterator[MetricWrapperBase]:
    for module in keel_metric_modules():
        for value in vars(importlib.import_module(module)).values():
            if isinstance(value, MetricWrapperBase):
                yield value


def used_in(expr: str) -> dict[str, set[str]]:
    """The series names a PromQL expression selects, with the label names it uses on
    them (in matchers, or in ``by``/``on``… clauses, which count for every series)."""
    expr = expr.replace("$__rate_interval", "5m")
    used: dict[str, set[str]] = {}
    for match in re.finditer(r"([a-zA-Z_:][\w:]*)?\s*\{([^}]*)\}", expr):
        name = match.group(1) or "__nameless__"
        used.setdefault(name, set()).update(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", match.group(2)))
    expr = re.sub(r"\{[^}]*\}", " ", expr)
    grouping: set[str] = set()
    for match in re.finditer(rf"\b({'|'.join(PROMQL_KEYWORDS)})\s*\(([^)]*)\)", expr):
        grouping |= {label.strip() for label in match.group(2).split(",") if label.strip()}
    expr = re.sub(rf"\b({'|'.join(PROMQL_KEYWORDS)})\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"\[[^\]]*\]|\"[^\"]*\"|\b\d[\w.]*", " ", expr)
    for match in re.finditer(r"\b([a-zA-Z_:][\w:]*)\b(\s*\()?", expr):
        if not match.group(2) and match.group(1).lower() not in PROMQL_KEYWORDS:
            used.setdefault(match.group(1), set())
    return {name: labels | grouping for name, labels in used.items()}


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is missing: `apt-get install prometheus` (.ci/run installs it)")
    return path


def test_used_in_reads_names_matchers_and_grouping() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le) "
        '(rate(x_bucket{grpc_method="Send"}[$__rate_interval])))'
        " / on (instance) y > 0.5 and vector(0)"
    )
    assert used_in(expr) == {
        "x_bucket": {"grpc_method", "le", "instance"},
        "y": {"le", "instance"},
    }


def test_the_alert_rules_pass_promtool_check(promtool: str) -> None:
    checked = subprocess.run(
        [promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_alert_rules_pass_their_unit_tests(promtool: str) -> None:
    tested = subprocess.run(
        [promtool, "test", "rules", "alerts.test.yaml"],
        cwd=MONITORING,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr


@pytest.mark.parametrize(
    "source", ["dashboard", "alerts"], ids=["keel-dashboard.json", "alerts.yaml"]
)
def test_every_metric_and_label_used_is_one_keel_exports(source: str) -> None:
    exprs = dashboard_exprs() if source == "dashboard" else [r["expr"] for r in alert_rules()]
    assert exprs
    unknown = []
    for expr in exprs:
        for name, labels in used_in(expr).items():
            if name not in exported():
                unknown.append(f"{name} in {expr}")
            elif labels - exported()[name] - TARGET_LABELS:
                unknown.append(f"labels {labels - exported()[name] - TARGET_LABELS} of {name}")
    assert unknown == []


def test_the_dashboard_shows_what_operators_watch() -> None:
    used = {name for expr in dashboard_exprs() for name in used_in(expr)}
    assert {
        "keel_bridge_connections",
        "keel_bridge_deliveries_total",
        "keel_grpc_server_handling_seconds_bucket",
        "keel_service_serving",
        "keel_dependency_up",
        "keel_job_queue_depth",
        "keel_webhook_attempts_total",
        "keel_notification_deliveries_total",
        "keel_file_bytes_received_total",
        "keel_file_bytes_sent_total",
    } <= used


def test_every_dashboard_panel_reads_the_chosen_prometheus() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    [variable] = dashboard["templating"]["list"]
    assert (variable["name"], variable["type"]) == ("datasource", "datasource")
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


def test_every_alert_is_explained_in_observability_md() -> None:
    text = OBSERVABILITY.read_text()
    for rule in alert_rules():
        assert f"### {rule['alert']}" in text, rule["alert"]
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}


def test_every_metric_observability_md_names_is_exported() -> None:
    """Except in a "Not measured yet" section (when there is one), which proposes metrics
    Keel lacks."""
    text = OBSERVABILITY.read_text()
    assert "## The dashboard" in text, "the sections observability.md is read by were renamed"
    before, _, rest = text.partition("### Not measured yet")
    _, _, after = rest.partition("## The dashboard")
    names = set(re.findall(r"`(keel_\w+)", before + after))
    assert names
    families = {metric._name for metric in keel_metrics()}
    assert names - set(exported()) - families - TARGET_LABELS == set()


def test_the_scrape_configuration_names_the_job_the_rules_select() -> None:
    config = yaml.safe_load((MONITORING / "prometheus.yaml").read_text())
    assert config["rule_files"] == [ALERTS.name]
    assert [job["job_name"] for job in config["scrape_configs"]] == ["keel"]
    assert all('job="keel"' in e for e in dashboard_exprs() if "process_" in e or "up{" in e)
