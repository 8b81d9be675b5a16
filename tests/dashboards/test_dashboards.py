"""Dashboard lint rules, the metric meta-test, PromQL that parses, and committed JSON = build output."""

import json
import re

import promql_parser
import pytest
from prometheus_client import CollectorRegistry

from dashboards.build import DASHBOARDS, DATASOURCE_UID, OUT, build, queries

COMMITTED = sorted(OUT.glob("*.json"))


def _load():
    return {p.stem: json.loads(p.read_text()) for p in COMMITTED}


def test_committed_json_is_what_the_code_builds(tmp_path):
    built = build(tmp_path)
    assert sorted(p.name for p in built) == [p.name for p in COMMITTED] == sorted(f"{u}.json" for u in DASHBOARDS)
    for p in built:
        assert p.read_text() == (OUT / p.name).read_text(), f"run `python -m dashboards build` ({p.name})"


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_lint_rules(name):
    dash = _load()[name]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dash["panels"]:
        assert panel["title"].strip(), f"panel {panel['id']} has no title"
        assert panel["fieldConfig"]["defaults"].get("unit"), f"{panel['title']}: no unit"
        assert panel["datasource"]["uid"] == DATASOURCE_UID
        assert panel["targets"], f"{panel['title']}: no query"
        for t in panel["targets"]:
            assert t["datasource"]["uid"] == DATASOURCE_UID, panel["title"]
            for window in re.findall(r"\b(?:rate|irate)\([^\[]*\[([^\]]+)\]", t["expr"]):
                assert window == "$__rate_interval", f"{panel['title']}: rate window {window}"
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            assert var["datasource"]["uid"] == DATASOURCE_UID


def test_template_variables_for_variant_model_and_shift():
    serving = _load()["fracture-serving"]
    assert {v["name"] for v in serving["templating"]["list"]} == {"variant", "model", "shift"}
    assert {v["name"] for v in _load()["fracture-fractures"]["templating"]["list"]} >= {"variant", "baseline"}


def substitute(expr: str) -> str:
    """The dashboard's variables as Grafana would expand them with "All" selected."""
    return (expr.replace("$__rate_interval", "1m").replace("$__range", "5m").replace("$variant", ".*")
            .replace("$model", ".*").replace("$shift", ".*").replace("$baseline", "onnx-fp32"))


def _metric_names(node, out: set) -> set:
    if isinstance(node, promql_parser.VectorSelector):
        out.add(node.name)
    for attr in ("expr", "lhs", "rhs", "vector_selector", "param"):
        child = getattr(node, attr, None)
        if child is not None and not isinstance(child, (str, int, float)):
            _metric_names(child, out)
    for child in getattr(node, "args", None) or []:
        _metric_names(child, out)
    return out


def exported_series() -> set[str]:
    """Every sample name the server's metrics and the telemetry job's gauges produce."""
    from serve.metrics import Metrics
    from telemetry.watch import TelemetryGauges

    registry = CollectorRegistry()
    m = Metrics(registry)
    m.declare_fleet([("r0", "onnx-fp32", 1)], ["id"])
    m.batch("onnx-fp32", 1)
    m.completed("r0", "onnx-fp32", "id", "correct", 0.01, 3)
    gauges = TelemetryGauges(registry)
    gauges.publish({"variants": {"onnx-fp32": {"n_runs": 5, "accuracy": {"id": 0.5}, "fragmentation": {"index": 0.3},
                                               "pairs": [{"shift_a": "a", "shift_b": "b", "r_partial": 0.1,
                                                          "ci_low": 0.0, "ci_high": 0.2}]}},
                    "headline": [{"variant": "ort-int8", "verdict": "inconclusive", "delta": 0.01,
                                  "ci_bca": [-0.1, 0.1]}]})
    return {s.name for fam in registry.collect() for s in fam.samples}


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_every_query_parses_and_uses_only_exported_metrics(name):
    known = exported_series()
    for expr in queries(_load()[name]):
        ast = promql_parser.parse(substitute(expr))
        used = _metric_names(ast, set())
        assert used, f"no metric found in {expr}"
        assert used <= known, f"{expr} uses {sorted(used - known)}, which nothing exports"


def test_the_meta_test_catches_an_unknown_metric():
    assert _metric_names(promql_parser.parse("rate(fracture_not_a_metric_total[1m])"), set()) - exported_series()
