"""Served = offline: replaying every eval item to a fleet of 2 runs x 3 variants gives, per
(run, variant, split), exactly the correct counts offline evaluation wrote to accuracy.csv,
and the Prometheus counters scraped from /metrics agree with both."""

import subprocess
import sys

from common.accuracy_table import read_table
from telemetry.sources import from_scrape
from tests.serve.conftest import SERVED, running, serve_config
from tests.train.conftest import REPO


def _key(r):
    return (r["run"], int(r["step"]), r["variant"], r["split"])


def test_replay_equals_offline_and_metrics_equal_both(exported, tmp_path):
    offline = {_key(r): r for r in read_table(exported["sweep"] / "accuracy.csv") if r["variant"] in SERVED}
    from tasks.dataset import sweep_data

    data = next(exported["data"].iterdir())
    assert sweep_data(exported["sweep"]).resolve() == data.resolve()
    out = tmp_path / "served.csv"
    with running(serve_config(exported["sweep"])) as (url, _, _):
        # --sweep, as `make traffic` replays: the sweep's own splits (sweep.yaml names them)
        res = subprocess.run([sys.executable, "-m", "serve", "replay", "--url", url, "--sweep", str(exported["sweep"]),
                              "--concurrency", "32", "--eval-items", "40", "--out", str(out)],
                             cwd=REPO, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr
        scraped = {_key(r): r for r in from_scrape(url)}
    served = {_key(r): r for r in read_table(out)}
    assert len(served) == 2 * len(SERVED) * 5 and set(served) == set(offline)
    for key, row in served.items():
        assert (row["n"], row["correct"]) == (offline[key]["n"], offline[key]["correct"]), key
        assert (row["digit_correct"], row["digit_total"]) == (offline[key]["digit_correct"],
                                                              offline[key]["digit_total"]), key
    assert set(scraped) == set(served)
    for key, row in scraped.items():
        assert (row["n"], row["correct"]) == (served[key]["n"], served[key]["correct"]), key
        assert (row["digit_correct"], row["digit_total"]) == (served[key]["digit_correct"],
                                                              served[key]["digit_total"]), key
    assert "replayed 1200 requests to 6 model(s)" in res.stdout


def test_replay_of_a_folder_that_is_no_sweep_is_one_line(tmp_path, capsys):
    from serve.__main__ import main

    assert main(["replay", "--sweep", str(tmp_path / "runs" / "dmeo")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sweep.yaml not found" in err[0] and "make demo" in err[0]
