"""deploy/prometheus/alerts.yml and deploy/grafana/agentmem.json stay loadable as they are.

Every PromQL expression (each rule's, each dashboard target's, the dashboard's variable
query) is parsed with promql-parser, and every metric name it reads must be one the app
exports, as read from a live /metrics scrape of the app (a counter `x` is read as `x_total`;
a histogram `x` as `x_bucket`, `x_count`, `x_sum`). Where promtool is installed (Debian's
`prometheus` package; .ci/run installs it), `promtool check rules` and `promtool test rules`
(with deploy/prometheus/alerts.test.yml) run too.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import promql_parser
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from app.config import Settings

ROOT = Path(__file__).resolve().parents[1]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERT_TESTS = ROOT / "deploy" / "prometheus" / "alerts.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "agentmem.json"
TOKEN = "deploy-monitoring-test-token-0123456789"

# What the issue asks the rules to cover.
REQUIRED_ALERTS = {
    "AgentmemHighErrorRate",
    "AgentmemProvisioningFailures",
    "AgentmemUpstreamDown",
    "AgentmemSlowFirstEvent",
    "AgentmemBudgetExhaustionSpike",
}
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


@pytest.fixture
def settings(settings_factory: Callable[..., Settings]) -> Settings:
    return settings_factory(metrics_token=TOKEN)


@pytest.fixture
async def exported(client: httpx.AsyncClient) -> set[str]:
    """The sample names the app exports, from its /metrics (families are listed with their
    type even before their first labelled sample)."""
    response = await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    names: set[str] = set()
    for family in text_string_to_metric_families(response.text):
        # (`x_created`: the creation time prometheus_client adds to a counter or histogram
        # of one process, parsed as a family of its own; not exported in multiprocess mode.)
        if family.name.startswith("agentmem_") and not family.name.endswith("_created"):
            names.update(family.name + suffix for suffix in SUFFIXES[family.type])
    # A sanity check of the reading itself: a few names the app certainly has.
    assert {
        "agentmem_http_requests_total",
        "agentmem_time_to_first_event_seconds_bucket",
        "agentmem_live_streams",
    } <= names
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names an expression reads (raises on a syntax error)."""
    return set(_selectors(promql_parser.parse(expr)))


def _selectors(node: Any) -> Iterator[str]:
    if isinstance(node, promql_parser.VectorSelector):
        assert node.name, f"a selector without a metric name: {node}"
        yield node.name
    elif isinstance(node, promql_parser.MatrixSelector):
        yield from _selectors(node.vector_selector)
    elif isinstance(node, promql_parser.BinaryExpr):
        yield from _selectors(node.lhs)
        yield from _selectors(node.rhs)
    elif isinstance(node, promql_parser.AggregateExpr):
        yield from _selectors(node.expr)
        if node.param is not None:
            yield from _selectors(node.param)
    elif isinstance(node, promql_parser.Call):
        for arg in node.args:
            yield from _selectors(arg)
    elif isinstance(
        node, promql_parser.ParenExpr | promql_parser.UnaryExpr | promql_parser.SubqueryExpr
    ):
        yield from _selectors(node.expr)
    else:
        assert isinstance(node, promql_parser.NumberLiteral | promql_parser.StringLiteral), node


def test_the_name_reader_finds_every_selector() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le) (rate(a_bucket{x="1"}[5m]))) > 2 '
        "and on () -(b offset 1h) unless max_over_time(c[1h:5m]) or topk(3, d) > vector(0)"
    )
    assert metric_names(expr) == {"a_bucket", "b", "c", "d"}
    with pytest.raises(ValueError):
        promql_parser.parse("sum(rate(a_total[5m])")


def _rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


async def test_alert_rules_parse_and_read_only_exported_metrics(exported: set[str]) -> None:
    rules = _rules()
    assert {rule["alert"] for rule in rules} >= REQUIRED_ALERTS
    for rule in rules:
        assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert rule["labels"]["severity"] in ("page", "warn")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert re.fullmatch(r"\d+[smh]", rule["for"])
        used = metric_names(rule["expr"])
        assert used, rule["alert"]
        assert used <= exported, (rule["alert"], used - exported)


# Grafana's variables, as a value Prometheus would get for them.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$instance": ".*"}


def _grafana_expr(expr: str) -> str:
    for variable, example in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, example)
    assert "$" not in expr, f"an unknown Grafana variable in {expr}"
    return expr


def _panels(document: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in document["panels"]:
        yield panel
        yield from panel.get("panels", [])


async def test_dashboard_loads_as_is_and_reads_only_exported_metrics(exported: set[str]) -> None:
    document = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in document["templating"]["list"]}
    # The datasource is chosen at import (a variable), so the file names no one's uid.
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    query = variables["instance"]["definition"]
    assert metric_names(query.removeprefix("label_values(").split(",")[0]) <= exported

    panels = list(_panels(document))
    assert len({p["id"] for p in panels}) == len(panels)
    graphs = [p for p in panels if p["type"] != "row"]
    assert len(graphs) >= 12
    read: set[str] = set()
    for panel in graphs:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            used = metric_names(_grafana_expr(target["expr"]))
            assert used <= exported, (panel["title"], used - exported)
            read |= used
    # Every family the app exports is on the dashboard (a new metric gets a panel).
    families = {re.sub(r"_(total|bucket|count|sum)$", "", n) for n in exported}
    shown = {re.sub(r"_(total|bucket|count|sum)$", "", n) for n in read}
    assert families <= shown, families - shown


def test_promtool_checks_and_unit_tests_the_rules() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package `prometheus`): PromQL parsed only")
    checked = subprocess.run(  # noqa: S603 - a fixed tool and our own files
        [promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in checked.stdout
    tested = subprocess.run(  # noqa: S603
        [promtool, "test", "rules", ALERT_TESTS.name],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ALERT_TESTS.parent,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout
