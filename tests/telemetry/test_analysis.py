"""summary.json's schema and honesty rules, the report, and the analyze CLI."""

import json
import subprocess
import sys

import pytest

from common.accuracy_table import upsert_rows
from telemetry.analysis import AnalysisOptions, analyze
from telemetry.report import render_html, terminal_table
from tests.telemetry.conftest import synthetic_rows

FAST = AnalysisOptions(n_boot=200, n_perm=200)


def test_summary_schema_and_the_planted_correlation(rows):
    summary = analyze(rows, FAST)
    assert set(summary["variants"]) == {"torch-fp32", "ort-int8"} and summary["baseline"] == "torch-fp32"
    res = summary["variants"]["torch-fp32"]
    assert res["n_runs"] == 24 and set(res["accuracy"]) == {"id", "base", "length", "operator_order"}
    pairs = {(p["shift_a"], p["shift_b"]): p for p in res["pairs"]}
    assert set(pairs) == {("base", "length"), ("base", "operator_order"), ("length", "operator_order")}
    for p in pairs.values():
        assert {"shift_a", "shift_b", "r", "r_partial", "ci_low", "ci_high", "p", "q"} <= set(p)
        assert -1 <= p["ci_low"] <= p["r_partial"] <= p["ci_high"] <= 1 and 0 <= p["q"] <= 1
    assert pairs[("base", "operator_order")]["r_partial"] > 0.5  # the shared factor survives the control
    assert pairs[("base", "operator_order")]["ci_low"] > 0
    comps = summary["comparisons"]
    assert len(comps) == 3 and all(c["variant"] == "ort-int8" and c["baseline"] == "torch-fp32" for c in comps)
    assert all(c["ci_low"] <= c["delta"] <= c["ci_high"] for c in comps)
    assert res["warning"] is None and res["within_run"]
    assert all(p["low_signal"] == [] for p in res["pairs"])


@pytest.mark.parametrize("control", ["linear", "probit", "spline"])
def test_every_control_and_points_mode_runs(rows, control):
    for points in ("final", "all"):
        res = analyze(rows, AnalysisOptions(control=control, points=points, n_boot=100, n_perm=100))
        assert all(p["r_partial"] is not None for p in res["variants"]["torch-fp32"]["pairs"])


def test_fewer_than_5_runs_is_refused_and_fewer_than_20_warned():
    res = analyze(synthetic_rows(n_runs=4), FAST)["variants"]["torch-fp32"]
    assert res["pairs"] == [] and "at least 5" in res["refused"]
    res = analyze(synthetic_rows(n_runs=10), FAST)["variants"]["torch-fp32"]
    assert res["pairs"] and "only 10 runs" in res["warning"]


def test_a_split_without_variance_is_undefined_with_its_reason():
    res = analyze(synthetic_rows(flat_split="length"), FAST)["variants"]["torch-fp32"]
    for p in res["pairs"]:
        if "length" in (p["shift_a"], p["shift_b"]):
            assert p["r_partial"] is None and "zero variance" in p["undefined"]
        else:
            assert p["r_partial"] is not None
    json.dumps(res)  # no NaN sneaks into the JSON


def test_pairs_with_a_signal_less_shift_are_flagged_not_reported_as_findings():
    rows = synthetic_rows()
    for r in rows:  # length near the floor: most runs get 0 correct
        if r["split"] == "length":
            r["correct"] = 1 if r["run"] in ("r00", "r01", "r02") else 0
    summary = analyze(rows, FAST)
    res = summary["variants"]["torch-fp32"]
    assert not res["signal"]["length"]["has_signal"] and res["signal"]["base"]["has_signal"]
    flagged = {(p["shift_a"], p["shift_b"]): p["low_signal"] for p in res["pairs"]}
    assert flagged[("base", "length")] == ["length"] and flagged[("base", "operator_order")] == []
    page = render_html(summary, rows, "synthetic")
    assert "not interpretable" in page and "no signal: length" in terminal_table(summary)


def test_report_is_self_contained_and_names_every_variant(rows):
    summary = analyze(rows, FAST)
    page = render_html(summary, rows, "synthetic")
    assert page.count("data:image/png;base64,") >= 5 and "<script" not in page and "http" not in page
    for v in summary["variants"]:
        assert v in page
    assert "What the numbers show" in page
    assert "torch-fp32" in terminal_table(summary)


def test_cli_analyze_writes_summary_and_report(tmp_path, rows):
    csv = tmp_path / "accuracy.csv"
    upsert_rows(csv, rows)
    out = tmp_path / "report"
    res = subprocess.run([sys.executable, "-m", "telemetry", "analyze", "--accuracies", str(csv), "--out", str(out),
                          "--n_boot=200", "--n_perm=200"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["variants"]["torch-fp32"]["n_runs"] == 24 and (out / "report.html").stat().st_size > 10_000
    assert "partial" in res.stdout


def test_cli_unreachable_source_fails_clearly_and_writes_nothing(tmp_path):
    out = tmp_path / "report"
    for flag, url in (("--scrape", "http://127.0.0.1:9"), ("--prometheus", "http://127.0.0.1:9")):
        res = subprocess.run([sys.executable, "-m", "telemetry", "analyze", flag, url, "--out", str(out)],
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 2 and "error:" in res.stderr and "127.0.0.1:9" in res.stderr
        assert "Traceback" not in res.stderr
        assert not out.exists() and not list(tmp_path.iterdir())
    res = subprocess.run([sys.executable, "-m", "telemetry", "analyze", "--accuracies", str(tmp_path / "nope.csv"),
                          "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "missing or empty" in res.stderr


def _analyze_cli(*args):
    return subprocess.run([sys.executable, "-m", "telemetry", "analyze", *map(str, args), "--n_boot=100",
                           "--n_perm=100"], capture_output=True, text=True, timeout=300)


def test_cli_out_writes_only_its_own_files_and_refuses_a_folder_holding_others(tmp_path, rows):
    """--out used to rmtree the folder (a typo such as --out runs/demo lost the sweep)."""
    csv = tmp_path / "accuracy.csv"
    upsert_rows(csv, rows)
    keep = tmp_path / "notes.txt"
    keep.write_text("mine")
    res = _analyze_cli("--accuracies", csv, "--out", tmp_path)
    assert res.returncode == 2 and "holds other files" in res.stderr and "accuracy.csv" in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["accuracy.csv", "notes.txt"]
    assert _analyze_cli("--accuracies", csv, "--out", tmp_path, "--force").returncode == 0
    assert keep.read_text() == "mine" and (tmp_path / "summary.json").is_file()
    report = tmp_path / "report"
    assert _analyze_cli("--accuracies", csv, "--out", report).returncode == 0
    first = (report / "summary.json").read_text()
    assert _analyze_cli("--accuracies", csv, "--out", report).returncode == 0  # a report folder is rewritten in place
    assert (report / "summary.json").read_text() == first
    assert sorted(p.name for p in report.iterdir()) == ["report.html", "summary.json"]


@pytest.mark.parametrize("edit, message", [
    (lambda r: r.update(n=-5, correct=-3), "n = -5"),
    (lambda r: r.update(correct=r["n"] + 1), "outside 0..n"),
    (lambda r: r.update(n=0, correct=0), "n = 0"),
    (lambda r: r.update(correct="many"), "not an integer"),
])
def test_an_impossible_count_in_accuracy_csv_is_one_line_naming_the_row(tmp_path, edit, message):
    table = synthetic_rows(n_runs=6, variants=("torch-fp32",))
    edit(table[7])
    csv = tmp_path / "accuracy.csv"
    header = list(table[0])
    csv.write_text(",".join(header) + "\n" + "".join(",".join(str(r[k]) for k in header) + "\n" for r in table))
    res = _analyze_cli("--accuracies", csv, "--out", tmp_path / "report")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert f"{csv} line 9: " in res.stderr and message in res.stderr
    assert not (tmp_path / "report").exists()


def test_a_duplicated_row_is_refused_not_silently_replaced(tmp_path):
    table = synthetic_rows(n_runs=6, variants=("torch-fp32",))
    csv = tmp_path / "accuracy.csv"
    header = list(table[0])
    lines = [",".join(str(r[k]) for k in header) for r in table]
    csv.write_text("\n".join([",".join(header), *lines, lines[3]]) + "\n")
    res = _analyze_cli("--accuracies", csv, "--out", tmp_path / "report")
    assert res.returncode == 2
    assert f"line {len(lines) + 2}: the same (run, step, variant, split) as line 5" in res.stderr


def test_a_stray_split_or_an_incomplete_run_is_left_out_with_a_warning(tmp_path):
    """One stray row used to refuse a whole variant ("1 runs"); a run missing splits vanished without a word."""
    table = synthetic_rows(n_runs=12, variants=("torch-fp32",))
    table.append({"run": "r00", "step": 30, "variant": "torch-fp32", "split": "typo_split", "n": 100, "correct": 5})
    table = [r for r in table if not (r["run"] == "r03" and r["split"] in ("base", "length"))]
    csv = tmp_path / "accuracy.csv"
    upsert_rows(csv, table)
    res = _analyze_cli("--accuracies", csv, "--out", tmp_path / "report")
    assert res.returncode == 0, res.stderr
    assert "typo_split (1 of 36 points) held by fewer than half" in res.stderr
    assert "3 of 36 (run, step) point(s) lack a split" in res.stderr
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["variants"]["torch-fp32"]["n_runs"] == 11 and len(summary["left_out"]) == 2


def test_beside_its_sweep_yaml_a_split_the_task_lacks_is_one_line_naming_the_row(tmp_path):
    """A table in a sweep folder is checked against the sweep's task: a typo'd split is an error, not a
    split left out by the majority rule (which stays for a table with no task beside it)."""
    import yaml

    table = synthetic_rows(n_runs=6, variants=("torch-fp32",))
    table[4] = dict(table[4], split="lenght")
    csv = tmp_path / "accuracy.csv"
    upsert_rows(csv, table)
    task = {"shifts": {"base": {}, "operator_order": {}, "length": {}}}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({"task": task}))
    res = _analyze_cli("--accuracies", csv, "--out", tmp_path / "report")
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert "split 'lenght' is not one of the task's splits (id, base, length, operator_order)" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "report").exists()


def test_every_analysis_option_is_a_flag_and_reaches_the_summary(tmp_path, rows):
    """The CLI offers each field of AnalysisOptions (it used to copy some defaults, so level and spline_df
    could not be set); a bad value is one line."""
    csv = tmp_path / "accuracy.csv"
    upsert_rows(csv, rows)
    res = _analyze_cli("--accuracies", csv, "--out", tmp_path / "r", "--level=0.9", "--spline-df=5",
                       "--control=spline", "--bound=0.1")
    assert res.returncode == 0, res.stderr
    opts = json.loads((tmp_path / "r" / "summary.json").read_text())["options"]
    assert (opts["level"], opts["spline_df"], opts["n_boot"], opts["control"], opts["bound"]) == \
        (0.9, 5, 100, "spline", 0.1)
    bad = _analyze_cli("--accuracies", csv, "--out", tmp_path / "r2", "--control=cubic")
    assert bad.returncode == 2 and "control='cubic' (linear, probit or spline)" in bad.stderr
