"""The watch job: recompute periodically and expose the results for Prometheus to scrape.

Gauges (one registry, injected): ``fracture_partial_correlation{variant,shift_a,shift_b}``
with ``_ci_low`` / ``_ci_high``, ``fracture_shift_accuracy{variant,shift}``,
``fracture_population_runs{variant}``, the headline ``fracture_fragmentation_index{variant}``,
``fracture_fragmentation_delta{variant}`` (+ ``_ci_low`` / ``_ci_high``) and
``fracture_fragmentation_verdict{variant,verdict}``, plus the job's own health:
``fracture_telemetry_stale`` (1 while the values shown are from an earlier successful
round), ``fracture_telemetry_last_success_timestamp_seconds`` and
``fracture_telemetry_errors_total``. When the source is unreachable the last good values
stay, marked stale, and the job retries with exponential backoff.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import warnings
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge

from telemetry.analysis import AnalysisOptions, analyze
from telemetry.sources import NoGradedTraffic

log = logging.getLogger("fracture.telemetry")


class TelemetryGauges:
    def __init__(self, registry: CollectorRegistry):
        pair = ["variant", "shift_a", "shift_b"]
        self.partial = Gauge("fracture_partial_correlation", "Partial correlation of two shifts' accuracies "
                             "across runs, controlling for in-domain accuracy", pair, registry=registry)
        self.ci_low = Gauge("fracture_partial_correlation_ci_low", "Lower end of its 95% cluster-bootstrap "
                            "interval", pair, registry=registry)
        self.ci_high = Gauge("fracture_partial_correlation_ci_high", "Upper end of its 95% cluster-bootstrap "
                             "interval", pair, registry=registry)
        self.accuracy = Gauge("fracture_shift_accuracy", "Mean accuracy over the population, on the analysis measure "
                              "(per-digit by default; exact match with --measure exact)",
                              ["variant", "shift"], registry=registry)
        self.runs = Gauge("fracture_population_runs", "Runs in the population", ["variant"], registry=registry)
        self.index = Gauge("fracture_fragmentation_index", "Mean partial correlation over the shift pairs with "
                           "signal (lower = more fragmented)", ["variant"], registry=registry)
        self.delta = Gauge("fracture_fragmentation_delta", "Paired change of the fragmentation index against full "
                           "precision", ["variant"], registry=registry)
        self.delta_low = Gauge("fracture_fragmentation_delta_ci_low", "Lower end of its BCa 95% interval",
                               ["variant"], registry=registry)
        self.delta_high = Gauge("fracture_fragmentation_delta_ci_high", "Upper end of its BCa 95% interval",
                                ["variant"], registry=registry)
        self.verdict = Gauge("fracture_fragmentation_verdict", "1 for the variant's current verdict (changes "
                             "fragmentation / equivalent / inconclusive)", ["variant", "verdict"], registry=registry)
        self.stale = Gauge("fracture_telemetry_stale", "1 when the values are from an earlier round (source "
                           "unreachable)", registry=registry)
        self.last_success = Gauge("fracture_telemetry_last_success_timestamp_seconds", "Unix time of the last "
                                  "successful recomputation", registry=registry)
        self.errors = Counter("fracture_telemetry_errors_total", "Failed recomputations", registry=registry)

    def publish(self, summary: dict) -> None:
        for g in (self.partial, self.ci_low, self.ci_high, self.accuracy, self.runs, self.index, self.delta,
                  self.delta_low, self.delta_high, self.verdict):
            g.clear()  # a pair that became undefined must not keep an old value
        for d in summary.get("headline", []):
            self.verdict.labels(d["variant"], d["verdict"]).set(1)
            if d.get("delta") is not None:
                self.delta.labels(d["variant"]).set(d["delta"])
                self.delta_low.labels(d["variant"]).set(d["ci_bca"][0])
                self.delta_high.labels(d["variant"]).set(d["ci_bca"][1])
        for variant, res in summary["variants"].items():
            if (res.get("fragmentation") or {}).get("index") is not None:
                self.index.labels(variant).set(res["fragmentation"]["index"])
            self.runs.labels(variant).set(res["n_runs"])
            for split, acc in res["accuracy"].items():
                self.accuracy.labels(variant, split).set(acc)
            for p in res["pairs"]:
                if p.get("r_partial") is None:
                    continue
                labels = (variant, p["shift_a"], p["shift_b"])
                self.partial.labels(*labels).set(p["r_partial"])
                self.ci_low.labels(*labels).set(p["ci_low"])
                self.ci_high.labels(*labels).set(p["ci_high"])


class Watcher:
    """One recomputation per ``tick``; ``run`` loops with backoff until ``stop`` is set."""

    def __init__(self, fetch: Callable[[], list[dict]], registry: CollectorRegistry, options: AnalysisOptions,
                 interval: float = 30.0, max_backoff: float | None = None):
        self.fetch, self.options = fetch, options
        # the retries back off, but never to more than twice the interval: a source that comes back is read
        # again within that, not minutes later
        self.interval = interval
        self.max_backoff = max_backoff if max_backoff is not None else max(2 * interval, 1.0)
        self.gauges = TelemetryGauges(registry)
        self.failures = 0
        self.stop = threading.Event()
        self._published: str | None = None  # fingerprint of the table behind the gauges now shown
        self._waiting = False  # the source has no graded traffic yet (said once, not every round)

    def tick(self) -> bool:
        """One round: fetch the table and, when it changed since the last published round, recompute."""
        try:
            try:
                rows = self.fetch()
            except NoGradedTraffic as exc:  # before any traffic: a state to wait in, not a failure
                if not self._waiting:
                    log.warning("waiting for traffic: %s", exc)
                self._waiting = True
                self._succeeded()
                return True
            self._waiting = False
            fingerprint = hashlib.sha256("\n".join(sorted(json.dumps(r, sort_keys=True, default=str)
                                                          for r in rows)).encode()).hexdigest()
            if fingerprint == self._published:  # same counts: the same analysis, no CPU spent
                self._succeeded()
                return True
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                summary = analyze(rows, self.options)
        except Exception as exc:  # any failure keeps the last good values, marked stale
            self.failures += 1
            self.gauges.errors.inc()
            self.gauges.stale.set(1)
            log.error("telemetry round failed (%d in a row): %s", self.failures, exc)
            return False
        self.gauges.publish(summary)
        self._published = fingerprint
        self._succeeded()
        return True

    def _succeeded(self) -> None:
        self.gauges.stale.set(0)
        self.gauges.last_success.set(time.time())
        self.failures = 0

    def next_delay(self) -> float:
        if self.failures == 0:
            return self.interval
        return min(self.max_backoff, min(self.interval, 1.0) * 2 ** (self.failures - 1))

    def run(self) -> None:
        while not self.stop.is_set():
            self.tick()
            self.stop.wait(self.next_delay())
