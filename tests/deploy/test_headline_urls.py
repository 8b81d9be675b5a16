"""The Prometheus graph links `make up` prints: the dashboards' own queries, with Grafana's variables
expanded as "All", URL-encoded so that they decode back to exactly that."""

import json
import re
import urllib.parse

import promql_parser
import pytest

from dashboards.build import OUT
from deploy import local
from deploy.local import HEADLINE_PANELS, expand_variables, graph_url, headline_urls
from tests.dashboards.test_dashboards import substitute

PROM = "http://127.0.0.1:9091"


def _committed(uid: str) -> dict:
    return json.loads((OUT / f"{uid}.json").read_text())


def _graphs(url: str) -> list[dict]:
    """[{expr, tab, range_input}] per g<i> of a graph URL."""
    params = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query, strict_parsing=True)
    assert all(len(v) == 1 for v in params.values())
    n = len([k for k in params if k.endswith(".expr")])
    assert set(params) == {f"g{i}.{k}" for i in range(n) for k in ("expr", "tab", "range_input")}
    return [{k: params[f"g{i}.{k}"][0] for k in ("expr", "tab", "range_input")} for i in range(n)]


def test_the_headline_panels_are_on_the_dashboards_and_cover_what_they_should():
    assert 3 <= len(HEADLINE_PANELS) <= 5
    queries = []
    for uid, title in HEADLINE_PANELS:
        titled = [p for p in _committed(uid)["panels"] if p["title"] == title]
        assert len(titled) == 1, f"{uid}: no single panel titled {title!r}"
        queries += [t["expr"] for t in titled[0]["targets"]]
    text = "\n".join(queries)
    for metric in ('result="correct"', "rate(fracture_requests_total", "fracture_request_duration_seconds_bucket",
                   "fracture_partial_correlation", "fracture_fragmentation_"):
        assert metric in text, f"no headline panel shows {metric}"


def test_each_url_decodes_back_to_the_committed_dashboard_query():
    urls = headline_urls(PROM)
    assert [t for t, _ in urls] == [t for _, t in HEADLINE_PANELS]
    for (uid, title), (_, url) in zip(HEADLINE_PANELS, urls):
        assert url.startswith(f"{PROM}/graph?")
        assert re.fullmatch(r"[A-Za-z0-9%._~=&/:?-]+", url), f"{title}: not URL-encoded"
        dashboard = _committed(uid)
        panel = next(p for p in dashboard["panels"] if p["title"] == title)
        graphs = _graphs(url)
        assert len(graphs) == len(panel["targets"]), title
        for graph, target in zip(graphs, panel["targets"]):
            assert graph["expr"] == expand_variables(target["expr"], dashboard)
            if "$__range" not in target["expr"]:  # the dashboard tests expand it to another window
                assert graph["expr"] == substitute(target["expr"])
            assert "$" not in graph["expr"]
            promql_parser.parse(graph["expr"])
            assert graph["tab"] == "0" and graph["range_input"] == "30m"


def test_variables_expand_to_all_or_the_current_value():
    dashboard = _committed("fracture-fractures")
    expr = 'fracture_shift_accuracy{variant=~"$variant"} - fracture_shift_accuracy{variant="$baseline"}'
    assert expand_variables(expr, dashboard) == \
        'fracture_shift_accuracy{variant=~".*"} - fracture_shift_accuracy{variant="onnx-fp32"}'
    assert expand_variables("increase(x[$__range]) / rate(x[$__rate_interval])", dashboard) == \
        "increase(x[30m]) / rate(x[1m])"
    with pytest.raises(KeyError, match=r"\$shift"):
        expand_variables('x{shift=~"$shift"}', dashboard)  # no such variable on this dashboard


def test_graph_url_round_trips_awkward_characters():
    exprs = ['a{b=~"c|d", e!="f&g=h"} / 2 + 1', "sum by (le) (rate(x[1m]))"]
    assert [g["expr"] for g in _graphs(graph_url(PROM + "/", exprs))] == exprs
    assert graph_url(PROM + "/", exprs).startswith(f"{PROM}/graph?g0.expr=")


@pytest.mark.parametrize("prometheus", [PROM, None])
def test_make_up_prints_the_links_last_and_only_with_prometheus(prometheus, monkeypatch, tmp_path, capsys):
    where = {"server": "http://127.0.0.1:8000", "prometheus": prometheus,
             "telemetry": "http://127.0.0.1:9108/metrics"}
    monkeypatch.setattr(local, "STATE", tmp_path)
    services = local.Services
    monkeypatch.setattr(local, "Services", lambda: services(tmp_path))
    monkeypatch.setattr(local, "start_stack", lambda *a, **k: where)
    assert local.main(["up"]) == 0
    out = capsys.readouterr().out
    after_traffic_hint = out[out.index("make traffic"):]
    if prometheus:
        for title, url in headline_urls(prometheus):
            assert f"  {title}\n    {url}\n" in after_traffic_hint
    else:
        assert "/graph?" not in out
        assert where["telemetry"] in after_traffic_hint
