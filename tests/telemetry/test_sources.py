"""The three sources give the same table; the watch job's gauges and its behaviour when the source is down."""

import shutil
import signal
import subprocess
import sys
import time

import pytest
import requests
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.parser import text_string_to_metric_families

from common.accuracy_table import upsert_rows
from common.net import free_port
from telemetry.analysis import AnalysisOptions
from telemetry.sources import SourceError, from_csv, from_prometheus, from_scrape, rows_from_samples
from telemetry.watch import Watcher
from tests.telemetry.conftest import synthetic_rows


def served_rows():
    """What a served population looks like: one step per (run, variant), with per-digit counts."""
    rows = [r for r in synthetic_rows(n_runs=8, n_items=50) if r["step"] == 30]
    return [r | {"digit_total": 4 * r["n"], "digit_correct": 4 * r["correct"] + (r["n"] - r["correct"])}
            for r in rows]


def key(rows):
    return sorted((r["run"], int(r["step"]), r["variant"], r["split"], int(r["n"]), int(r["correct"]),
                   int(r["digit_correct"]), int(r["digit_total"])) for r in rows)


@pytest.fixture
def exporter():
    """A /metrics endpoint on loopback carrying served_rows() as the server records them: serve.metrics.Metrics,
    one ``completed`` call per request, so a renamed metric or label breaks this test too."""
    from serve.metrics import Metrics

    registry = CollectorRegistry()
    metrics = Metrics(registry)
    rows = served_rows()
    metrics.declare_fleet(sorted({(r["run"], r["variant"], r["step"]) for r in rows}),
                          sorted({r["split"] for r in rows}))
    for r in rows:
        for k in range(r["n"]):  # a right answer has all 4 digits right, a wrong one 1 of 4 (see served_rows)
            right = k < r["correct"]
            metrics.completed(r["run"], r["variant"], r["split"], "correct" if right else "incorrect", 0.01, 4,
                              (4, 4) if right else (1, 4))
        for _ in range(3):  # requests without an expected answer: never counted in n
            metrics.completed(r["run"], r["variant"], r["split"], "ungraded", 0.01, 4)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    yield f"http://127.0.0.1:{port}"
    server.shutdown()
    server.server_close()


def test_scrape_and_csv_give_the_same_table(tmp_path, exporter):
    csv = tmp_path / "accuracy.csv"
    upsert_rows(csv, served_rows())
    assert key(from_csv(csv)) == key(from_scrape(exporter)) == key(served_rows())
    assert key(from_scrape(exporter + "/metrics")) == key(served_rows())


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="needs the prometheus binary (CI installs it)")
def test_prometheus_source_gives_the_same_table(tmp_path, exporter):
    """A real Prometheus server on loopback scrapes the exporter; the HTTP API source reads it back."""
    port = free_port()
    target = exporter.removeprefix("http://")
    (tmp_path / "prometheus.yml").write_text(
        f"global: {{scrape_interval: 1s}}\nscrape_configs:\n  - job_name: fracture\n"
        f"    static_configs: [{{targets: ['{target}']}}]\n")
    proc = subprocess.Popen(["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url, deadline, rows = f"http://127.0.0.1:{port}", time.monotonic() + 60, None
        while time.monotonic() < deadline:
            try:
                rows = from_prometheus(url)
                if key(rows) == key(served_rows()):
                    break
            except SourceError:
                pass
            time.sleep(0.5)
        assert rows is not None and key(rows) == key(served_rows())
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_sources_fail_clearly_when_unreachable():
    with pytest.raises(SourceError, match="127.0.0.1:9"):
        from_scrape("http://127.0.0.1:9", timeout=2)
    with pytest.raises(SourceError, match="did not answer"):
        from_prometheus("http://127.0.0.1:9", timeout=2)
    with pytest.raises(SourceError, match="no graded"):
        rows_from_samples([({"model": "m", "variant": "v", "shift": "id", "result": "ungraded"}, 5.0)])


def gauge_values(registry: CollectorRegistry) -> dict:
    from prometheus_client import generate_latest

    out = {}
    for fam in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_watch_keeps_last_good_values_marks_them_stale_and_backs_off():
    rows = synthetic_rows(n_runs=12, variants=("torch-fp32",))
    state = {"up": True}

    def fetch():
        if not state["up"]:
            raise SourceError("Prometheus at http://127.0.0.1:9 did not answer")
        return rows

    registry = CollectorRegistry()
    w = Watcher(fetch, registry, AnalysisOptions(n_boot=100, n_perm=100), interval=30)
    assert w.tick()
    good = gauge_values(registry)
    pair = ("fracture_partial_correlation", (("shift_a", "base"), ("shift_b", "operator_order"),
                                             ("variant", "torch-fp32")))
    assert pair in good and good[("fracture_telemetry_stale", ())] == 0
    assert good[("fracture_population_runs", (("variant", "torch-fp32"),))] == 12
    assert ("fracture_shift_accuracy", (("shift", "base"), ("variant", "torch-fp32"))) in good
    state["up"] = False
    assert not w.tick() and not w.tick()
    after = gauge_values(registry)
    assert after[pair] == good[pair] and after[("fracture_telemetry_stale", ())] == 1
    assert after[("fracture_telemetry_errors_total", ())] == 2
    delays = [w.next_delay()]
    w.tick()
    delays.append(w.next_delay())
    assert delays[1] > delays[0] and delays[1] <= w.max_backoff
    state["up"] = True
    assert w.tick() and w.next_delay() == 30 and gauge_values(registry)[("fracture_telemetry_stale", ())] == 0


def test_watch_backoff_is_capped_relative_to_the_interval():
    """After a long outage at --interval 5 the source is read again within 10 s, not up to 300 s later."""
    def down():
        raise SourceError("Prometheus did not answer")

    w = Watcher(down, CollectorRegistry(), AnalysisOptions(n_boot=100, n_perm=100), interval=5)
    delays = []
    for _ in range(12):  # a minute and more of failures
        w.tick()
        delays.append(w.next_delay())
    assert delays[0] == 1 and max(delays) == 10 and delays == sorted(delays)


def test_watch_recomputes_only_when_the_table_changes(monkeypatch):
    """An unchanged table (same rows, in any order) costs no analysis; a changed count does."""
    import telemetry.watch as watch

    rows = synthetic_rows(n_runs=12, variants=("torch-fp32",))
    served = {"rows": rows}
    calls = []
    real = watch.analyze
    monkeypatch.setattr(watch, "analyze", lambda r, o: calls.append(1) or real(r, o))
    registry = CollectorRegistry()
    w = Watcher(lambda: served["rows"], registry, AnalysisOptions(n_boot=100, n_perm=100), interval=30)
    assert w.tick() and len(calls) == 1
    served["rows"] = list(reversed(rows))
    assert w.tick() and len(calls) == 1  # same table: skipped, still fresh
    assert gauge_values(registry)[("fracture_telemetry_stale", ())] == 0
    served["rows"] = [dict(rows[0], correct=rows[0]["correct"] + 1), *rows[1:]]
    assert w.tick() and len(calls) == 2


def test_watch_command_serves_gauges_and_stops_on_sigterm(tmp_path):
    csv = tmp_path / "accuracy.csv"
    upsert_rows(csv, synthetic_rows(n_runs=10, variants=("torch-fp32",)))
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "telemetry", "watch", "--accuracies", str(csv), "--port",
                             str(port), "--interval", "1", "--n_boot=100", "--n_perm=100"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline, body = time.monotonic() + 60, ""
        while time.monotonic() < deadline and "fracture_partial_correlation{" not in body:
            try:
                body = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
            except requests.RequestException:
                time.sleep(0.3)
        assert "fracture_partial_correlation{" in body and "fracture_telemetry_stale 0.0" in body
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def test_watch_waits_for_traffic_with_one_warning_not_an_error_per_round(caplog):
    """Before any graded request the source is fine and empty: the watcher says so once (a warning) and keeps
    its interval; it used to log an ERROR every round, count failures and back off."""
    import logging

    from telemetry.sources import NoGradedTraffic

    rows = synthetic_rows(n_runs=12, variants=("torch-fp32",))
    state = {"traffic": False}

    def fetch():
        if not state["traffic"]:
            rows_from_samples([({"model": "m", "variant": "v", "shift": "id", "result": "ungraded"}, 5.0)])
        return rows

    registry = CollectorRegistry()
    w = Watcher(fetch, registry, AnalysisOptions(n_boot=100, n_perm=100), interval=30)
    with caplog.at_level(logging.WARNING, logger="fracture.telemetry"):
        assert all(w.tick() for _ in range(3))
    waiting = [r for r in caplog.records if "waiting for traffic" in r.getMessage()]
    assert len(waiting) == 1 and waiting[0].levelno == logging.WARNING
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert w.failures == 0 and w.next_delay() == 30
    assert gauge_values(registry)[("fracture_telemetry_errors_total", ())] == 0
    state["traffic"] = True
    assert w.tick() and ("fracture_population_runs", (("variant", "torch-fp32"),)) in gauge_values(registry)
    assert issubclass(NoGradedTraffic, SourceError)


def test_graded_requests_without_a_shift_label_are_left_out_with_a_warning():
    """A request with `expected` but no `shift` is counted under shift="none" by the server: no split holds it,
    so the table leaves it out (and says so) instead of inventing a split named "none"."""
    from telemetry.population import DataWarning

    samples = [({"model": "m", "variant": "v", "shift": "id", "result": "correct"}, 3.0),
               ({"model": "m", "variant": "v", "shift": "none", "result": "incorrect"}, 2.0),
               ({"model": "m", "variant": "v", "shift": "none", "result": "ungraded"}, 7.0)]
    with pytest.warns(DataWarning, match="2 graded request"):
        rows = rows_from_samples(samples)
    assert [(r["split"], r["n"], r["correct"]) for r in rows] == [("id", 3, 3)]
