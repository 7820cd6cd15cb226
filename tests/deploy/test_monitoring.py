"""deploy/grafana/: every PromQL expression of the dashboard and the alert rules parses (with
the promql-parser library), reads only series router/metrics.py exports, and groups or matches
only on labels those series carry; the dashboard shows and the rules alert on what an operator
needs."""

from __future__ import annotations

import json
from typing import Any

import promql_parser as promql
import pytest
import yaml

from tests.deploy.conftest import DEPLOY, TARGET_LABELS, exported_metrics

DASHBOARD = DEPLOY / "grafana" / "kvrouter-dashboard.json"
ALERTS = DEPLOY / "grafana" / "alerts.yaml"
# Grafana's variables, replaced as Grafana would before the expression reaches Prometheus.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}
ALERT_NAMES = {
    "KvrouterNoHealthyWorker", "KvrouterWorkerOutOfRotation", "KvrouterCacheHitRatioDrop",
    "KvrouterStoreErrors", "KvrouterDiscoveryFailing",
}  # fmt: skip


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def alert_rules() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]


def dashboard_expressions() -> list[str]:
    return [t["expr"] for p in panels() for t in p["targets"]]


def expressions() -> list[tuple[str, str]]:
    found = [(f"panel {p['title']!r}", t["expr"]) for p in panels() for t in p["targets"]]
    return found + [(f"alert {r['alert']}", r["expr"]) for r in alert_rules()]


def parse(expr: str) -> Any:
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    return promql.parse(expr)


def selectors(node: Any) -> list[Any]:
    found: list[Any] = []

    def visit(child: Any) -> None:
        if isinstance(child, promql.VectorSelector):
            found.append(child)

    promql.walk(node, pre_visit=visit)
    return found


def problems(node: Any, exported: dict[str, frozenset[str]]) -> list[str]:
    """Unknown series, and labels matched, grouped or joined on that the series under them
    do not carry."""
    found: list[str] = []

    def visit(child: Any) -> None:
        if isinstance(child, promql.VectorSelector):
            if child.name not in exported:
                found.append(f"unknown series {child.name}")
                return
            for matcher in child.matchers.matchers:
                if matcher.name not in exported[child.name] | TARGET_LABELS:
                    found.append(f"{child.name} has no label {matcher.name}")
        labels: list[str] = []
        under: list[Any] = []
        if isinstance(child, promql.AggregateExpr) and child.modifier is not None:
            labels, under = child.modifier.labels, selectors(child.expr)
        elif isinstance(child, promql.BinaryExpr) and child.modifier is not None:
            matching = child.modifier.matching
            labels = matching.labels if matching is not None else []
            under = selectors(child.lhs) + selectors(child.rhs)
        carried = set(TARGET_LABELS)
        for selector in under:
            carried |= exported.get(selector.name, frozenset())
        found.extend(f"no series under {child} has label {label}" for label in labels
                     if label not in carried)  # fmt: skip

    promql.walk(node, pre_visit=visit)
    return found


@pytest.mark.parametrize(("where", "expr"), expressions(), ids=lambda v: v[:40])
def test_each_expression_parses_and_reads_only_exported_series_and_labels(where, expr):
    try:
        node = parse(expr)
    except ValueError as err:
        pytest.fail(f"{where}: {expr!r} does not parse: {err}")
    assert selectors(node), f"{where}: reads no series"
    assert problems(node, exported_metrics()) == [], where


def test_the_dashboard_shows_what_an_operator_needs():
    exprs = dashboard_expressions()
    text = "\n".join(exprs)

    def shown(*parts: str) -> bool:
        return any(all(p in e for p in parts) for e in exprs)

    assert shown("sum by (route)", "kvrouter_requests_total")
    assert shown('status=~"5.."', "kvrouter_requests_total")
    assert shown("kvrouter_cached_prompt_tokens_total", "/", "kvrouter_prompt_tokens_total")
    for quantile in ("0.5", "0.99"):
        assert shown(f"histogram_quantile({quantile}", "(le, worker)",
                     "kvrouter_time_to_first_byte_seconds_bucket")  # fmt: skip
    assert shown("by (reason)", "kvrouter_rehomed_total")
    for series in ("kvrouter_worker_healthy", "kvrouter_worker_inflight", "kvrouter_worker_running",
                   "kvrouter_worker_waiting", "kvrouter_worker_load_age_seconds",
                   "kvrouter_store_operation_seconds_bucket", "kvrouter_history_pruned_turns_total",
                   "kvrouter_history_summaries_total", "kvrouter_discovery_up"):  # fmt: skip
        assert series in text, f"the dashboard does not show {series}"
    assert shown('outcome="error"', "kvrouter_pin_operations_total")


def test_panels_use_the_dashboard_datasource_variable_and_fit_the_grid():
    variables = dashboard()["templating"]["list"]
    assert {"name": "datasource", "type": "datasource", "query": "prometheus"}.items() <= (
        variables[0].items()
    )
    ids = [p["id"] for p in dashboard()["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in panels():
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"])
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


def test_the_alert_rules_cover_the_failures_and_say_how_bad_and_what_to_do():
    rules = {r["alert"]: r for r in alert_rules()}
    assert set(rules) == ALERT_NAMES
    for name, rule in rules.items():
        assert rule["for"] and rule["labels"]["severity"] in {"critical", "warning"}, name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
    assert "kvrouter_worker_healthy" in rules["KvrouterNoHealthyWorker"]["expr"]
    assert "kvrouter_discovery_up" in rules["KvrouterDiscoveryFailing"]["expr"]
