"""The Grafana dashboards, built as plain dictionaries and written as JSON.

Plain dictionaries rather than grafana-foundation-sdk: the SDK's versions carry an epoch
per Grafana release that would have to be pinned to the server users run, and two small
dashboards read more clearly as the JSON Grafana stores than as builder chains. The lint
rules in tests/dashboards/ keep them honest instead (unique ids, titles, units, the
fixed datasource uid, ``$__rate_interval`` in every rate window).

Every query uses only metrics the server (serve/metrics.py) or the telemetry job
(telemetry/watch.py) exports; a meta-test checks it.
"""

from __future__ import annotations

import json
from pathlib import Path

from common.accuracy_table import TORCH_VARIANT

DATASOURCE_UID = "fracture-prometheus"
DATASOURCE = {"type": "prometheus", "uid": DATASOURCE_UID}
OUT = Path(__file__).parent / "json"

SEL = 'model=~"$model", variant=~"$variant", shift=~"$shift"'
GRADED = f'fracture_requests_total{{{SEL}, result=~"correct|incorrect"}}'
CORRECT = f'fracture_requests_total{{{SEL}, result="correct"}}'


class Panels:
    """Numbers panel ids and lays panels out on the 24-column grid, left to right."""

    def __init__(self):
        self.items: list[dict] = []
        self.x = self.y = self.row_h = 0

    def add(self, kind: str, title: str, unit: str, targets: list[tuple[str, str]], width: int = 12,
            height: int = 8, description: str = "", **options) -> None:
        if self.x + width > 24:
            self.x, self.y = 0, self.y + self.row_h
            self.row_h = 0
        self.items.append({
            "id": len(self.items) + 1, "type": kind, "title": title, "description": description,
            "datasource": DATASOURCE,
            "gridPos": {"x": self.x, "y": self.y, "w": width, "h": height},
            "fieldConfig": {"defaults": {"unit": unit, **options.pop("defaults", {})}, "overrides": []},
            "options": options,
            "targets": [{"refId": chr(ord("A") + i), "datasource": DATASOURCE, "expr": expr, "legendFormat": legend}
                        for i, (expr, legend) in enumerate(targets)],
        })
        self.x += width
        self.row_h = max(self.row_h, height)


def _variable(name: str, query: str, multi: bool = True, include_all: bool = True) -> dict:
    return {"name": name, "label": name, "type": "query", "datasource": DATASOURCE,
            "query": {"query": query, "refId": f"{name}-values"}, "definition": query, "refresh": 2,
            "multi": multi, "includeAll": include_all, "allValue": ".*" if include_all else None,
            "current": {"text": "All", "value": "$__all"} if include_all else {}, "sort": 1}


def _dashboard(uid: str, title: str, description: str, panels: Panels, variables: list[dict]) -> dict:
    return {"uid": uid, "title": title, "description": description, "tags": ["fracture"], "editable": True,
            "schemaVersion": 39, "version": 1, "refresh": "10s", "time": {"from": "now-30m", "to": "now"},
            "timezone": "utc", "templating": {"list": variables}, "panels": panels.items}


def serving_dashboard() -> dict:
    p = Panels()
    p.add("timeseries", "Accuracy by shift over time", "percentunit",
          [(f"sum by (variant, shift) (rate({CORRECT}[$__rate_interval])) / "
            f"sum by (variant, shift) (rate({GRADED}[$__rate_interval]))", "{{variant}} {{shift}}")],
          width=24, description="Correct / graded requests per variant and shift label (requests with `expected`).",
          defaults={"min": 0, "max": 1})
    p.add("bargauge", "Accuracy by shift x variant (time range)", "percentunit",
          [(f"sum by (variant, shift) (increase({CORRECT}[$__range])) / "
            f"sum by (variant, shift) (increase({GRADED}[$__range]))", "{{variant}} {{shift}}")],
          description="Over the dashboard's time range; compare with the offline accuracy.csv.",
          defaults={"min": 0, "max": 1}, displayMode="gradient", orientation="horizontal")
    p.add("timeseries", "Requests per second", "reqps",
          [(f"sum by (variant) (rate(fracture_requests_total{{{SEL}}}[$__rate_interval]))", "{{variant}}")])
    p.add("timeseries", "Latency p50 / p99 by variant", "s",
          [('histogram_quantile(0.5, sum by (le, variant) (rate(fracture_request_duration_seconds_bucket'
            '{variant=~"$variant"}[$__rate_interval])))', "p50 {{variant}}"),
           ('histogram_quantile(0.99, sum by (le, variant) (rate(fracture_request_duration_seconds_bucket'
            '{variant=~"$variant"}[$__rate_interval])))', "p99 {{variant}}")])
    p.add("timeseries", "Errors by reason", "reqps",
          [("sum by (reason) (rate(fracture_request_errors_total[$__rate_interval]))", "{{reason}}")],
          description="Rejected requests: 4xx by cause, 503 for overload and timeouts.")
    p.add("timeseries", "In-flight requests and queue", "short",
          [("sum(fracture_inflight_requests)", "in flight"), ("sum(fracture_queue_depth)", "waiting or decoding")])
    p.add("timeseries", "Mean batch size by variant", "short",
          [('sum by (variant) (rate(fracture_batch_size_sum{variant=~"$variant"}[$__rate_interval])) / '
            'sum by (variant) (rate(fracture_batch_size_count{variant=~"$variant"}[$__rate_interval]))',
            "{{variant}}")],
          description="Requests decoded together by the dynamic batcher.")
    variables = [_variable("variant", "label_values(fracture_requests_total, variant)"),
                 _variable("model", 'label_values(fracture_requests_total{variant=~"$variant"}, model)'),
                 _variable("shift", "label_values(fracture_requests_total, shift)")]
    return _dashboard("fracture-serving", "fracture / serving",
                      "Served traffic: shift-specific accuracy, throughput, latency and errors of every variant.",
                      p, variables)


def fractures_dashboard() -> dict:
    pair = 'variant=~"$variant"'
    p = Panels()
    p.add("table", "Verdict: does quantization change fragmentation?", "short",
          [(f"fracture_fragmentation_verdict{{{pair}}} == 1", "{{variant}}: {{verdict}}")], width=8,
          description="The pre-registered answer per variant (telemetry job): the paired Δ of the fragmentation "
                      "index against full precision is a change (BH q < alpha, intervals agree), equivalent within "
                      "the TOST bound, or inconclusive at this number of runs. noise@<variant> is the noise-matched "
                      "control.")
    p.add("timeseries", "Δ fragmentation index vs full precision, with its BCa 95% interval", "short",
          [(f"fracture_fragmentation_delta{{{pair}}}", "{{variant}}"),
           (f"fracture_fragmentation_delta_ci_low{{{pair}}}", "low {{variant}}"),
           (f"fracture_fragmentation_delta_ci_high{{{pair}}}", "high {{variant}}")], width=16,
          defaults={"min": -1, "max": 1},
          description="Fragmentation index = mean partial correlation over the shift pairs with signal "
                      "(lower = more fragmented); Δ = variant − full precision on the same runs.")
    p.add("timeseries", "Fragmentation index per variant", "short",
          [(f"fracture_fragmentation_index{{{pair}}}", "{{variant}}")], width=24, defaults={"min": -1, "max": 1},
          description="Mean partial correlation over the shift pairs with signal, each variant on its own "
                      "population (lower = more fragmented); the Δ panel above compares it with full precision "
                      "on the same runs.")
    p.add("timeseries", "Partial correlation per variant, with its 95% interval", "short",
          [(f"fracture_partial_correlation{{{pair}}}", "{{variant}} {{shift_a}} x {{shift_b}}"),
           (f"fracture_partial_correlation_ci_low{{{pair}}}", "low {{variant}} {{shift_a}} x {{shift_b}}"),
           (f"fracture_partial_correlation_ci_high{{{pair}}}", "high {{variant}} {{shift_a}} x {{shift_b}}")],
          width=24, defaults={"min": -1, "max": 1},
          description="Across runs, controlling for in-domain accuracy (telemetry job, cluster bootstrap).")
    p.add("timeseries", "Quantized minus full precision: partial correlation", "short",
          [(f"fracture_partial_correlation{{{pair}}} - on (shift_a, shift_b) group_left () "
            'fracture_partial_correlation{variant="$baseline"}', "{{variant}} {{shift_a}} x {{shift_b}}")],
          description="How quantizing changes whether two shifts move together ($baseline is the reference).")
    p.add("timeseries", "Quantized minus full precision: accuracy by shift", "percentunit",
          [(f"fracture_shift_accuracy{{{pair}}} - on (shift) group_left () "
            'fracture_shift_accuracy{variant="$baseline"}', "{{variant}} {{shift}}")])
    p.add("bargauge", "Population accuracy by shift x variant", "percentunit",
          [(f"fracture_shift_accuracy{{{pair}}}", "{{variant}} {{shift}}")],
          defaults={"min": 0, "max": 1}, displayMode="gradient", orientation="horizontal")
    p.add("stat", "Runs in the population", "short",
          [(f"fracture_population_runs{{{pair}}}", "{{variant}}")], width=6)
    p.add("stat", "Telemetry stale (source unreachable)", "bool",
          [("max(fracture_telemetry_stale)", "stale")], width=6)
    variables = [_variable("variant", "label_values(fracture_requests_total, variant)"),
                 {"name": "baseline", "label": "baseline", "type": "custom", "query": "onnx-fp32,torch-fp32",
                  "current": {"text": "onnx-fp32", "value": "onnx-fp32"}, "multi": False, "includeAll": False,
                  "options": [{"text": v, "value": v, "selected": v == "onnx-fp32"}
                              for v in ("onnx-fp32", TORCH_VARIANT)]}]
    return _dashboard("fracture-fractures", "fracture / fractures",
                      "Which shifts move together once in-domain accuracy is accounted for, per variant.",
                      p, variables)


DASHBOARDS = {"fracture-serving": serving_dashboard, "fracture-fractures": fractures_dashboard}


def build(out: Path = OUT) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for uid, make in DASHBOARDS.items():
        path = out / f"{uid}.json"
        path.write_text(json.dumps(make(), indent=2, sort_keys=True) + "\n")
        paths.append(path)
    return paths


def queries(dashboard: dict) -> list[str]:
    return [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
