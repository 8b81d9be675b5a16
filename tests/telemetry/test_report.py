"""report.html against summary.json: the lead line per variant, titles from the options used, one colour per
variant in every plot, tick labels on their points, the † and ‡ flags, the served report's source and baseline;
and the page in a real headless Chromium (no console errors, a screenshot that is not blank)."""

import copy
import json
import math
import re
import struct
import subprocess
import sys
import time
from html.parser import HTMLParser

import numpy as np
import pytest
from matplotlib.colors import to_hex

from common.accuracy_table import upsert_rows
from telemetry import figures, flags, report
from telemetry.analysis import AnalysisOptions, analyze
from tests.telemetry.conftest import synthetic_rows
from tests.telemetry.headless import Chromium, blankness, find_chromium, is_blank

FAST = AnalysisOptions(n_boot=100, n_perm=100)
VARIANTS = ("torch-fp32", "ort-int8", "noise@ort-int8")


def population_rows():
    """torch-fp32, onnx-fp32 (the same answers: its points coincide with torch-fp32's), ort-int8 and its noise
    control; 'length' sits at the floor (no signal), so every pair with it must carry the † flag."""
    rows = synthetic_rows(variants=VARIANTS)
    rng = np.random.default_rng(1)
    for r in rows:
        if r["split"] == "length":  # about 3% right: below the signal check's mean range, yet not constant
            r["correct"] = int(rng.binomial(r["n"], 0.03))
    return rows + [dict(r, variant="onnx-fp32") for r in rows if r["variant"] == "torch-fp32"]


@pytest.fixture(autouse=True)
def close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


@pytest.fixture(scope="module")
def rows():
    return population_rows()


@pytest.fixture(scope="module")
def summary(rows):
    s = analyze(rows, FAST)
    assert "length" not in s["shifts_with_signal"] and "base" in s["shifts_with_signal"]
    return s


@pytest.fixture(scope="module")
def page(summary, rows):
    """The report of the population, from a source that is no file and no URL."""
    return report.render_html(summary, rows, "synthetic")


class Tables(HTMLParser):
    """Every <table class=...> as a list of rows of cell texts; every <li> of <ul class='lead'>; <details>."""

    def __init__(self, page: str):
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.lead: list[str] = []
        self.details: list[str] = []
        self.figures: list[str] = []
        self._table = self._row = self._cell = None
        self._in_lead = self._in_li = False
        self._details_depth = 0
        self._li = []
        self._details = []
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table" and a.get("class"):
            self._table = self.tables.setdefault(a["class"], [])
        elif tag == "tr" and self._table is not None:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []
        elif tag == "ul" and a.get("class") == "lead":
            self._in_lead = True
        elif tag == "li" and self._in_lead:
            self._in_li, self._li = True, []
        elif tag == "details":
            self._details_depth += 1
            self._details = []
        elif tag == "img":
            self.figures.append(a.get("alt", ""))

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self._table.append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None
        elif tag == "li" and self._in_li:
            self.lead.append("".join(self._li))
            self._in_li = False
        elif tag == "ul":
            self._in_lead = False
        elif tag == "details":
            self._details_depth -= 1
            self.details.append("".join(self._details))

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._in_li:
            self._li.append(data)
        if self._details_depth:
            self._details.append(data)


def table_dicts(tables: Tables, name: str) -> list[dict]:
    head, *body = tables.tables[name]
    return [dict(zip(head, r)) for r in body]


def excludes_zero(iv) -> bool:
    return iv[0] > 0 or iv[1] < 0


def lacks_signal(summary, variant, shift) -> bool:
    return any(not summary["variants"][v]["signal"][shift]["has_signal"] for v in (summary["baseline"], variant))


# ---- item 9: the lead, one line per variant, with sizes from the manifests ---------------------------------------

def tiny_safetensors(path, shape=(4, 8)):
    """A valid safetensors file with one F32 tensor: what a torch checkpoint holds."""
    header = json.dumps({"w": {"dtype": "F32", "shape": list(shape), "data_offsets": [0, 4 * math.prod(shape)]}})
    path.write_bytes(struct.pack("<Q", len(header)) + header.encode() + b"\0" * (4 * math.prod(shape)))


MANIFESTS = {"ort-int8": {"total_bytes": 1_104_049, "weight_bits": 8, "effective_bits_per_param": 8.7997},
             "onnx-fp32": {"total_bytes": 3_331_657, "weight_bits": 32, "effective_bits_per_param": 32.0}}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, rows):
    """A sweep folder: accuracy.csv, the runs' export manifests (not for noise@ort-int8), torch checkpoints."""
    root = tmp_path_factory.mktemp("sweep")
    upsert_rows(root / "accuracy.csv", rows)
    for run in sorted({r["run"] for r in rows}):
        for v, m in MANIFESTS.items():
            d = root / run / "variants" / v
            d.mkdir(parents=True)
            (d / "manifest.json").write_text(json.dumps(m | {"step": 30, "variant": v, "files": {}}))
        ckpt = root / run / "checkpoints" / "step-30"
        ckpt.mkdir(parents=True)
        tiny_safetensors(ckpt / "model.safetensors")
        (ckpt / "config.json").write_text("{}")
    return root


def test_what_the_numbers_show_leads_with_one_line_per_variant(summary, rows, sweep):
    source = str(sweep / "accuracy.csv")
    page = report.render_html(summary | {"source_kind": "accuracies"}, rows, source)
    parsed = Tables(page)
    assert len(parsed.lead) == len(summary["variants"])
    lines = {li.split(" — ")[0]: li for li in parsed.lead}
    assert set(lines) == set(summary["variants"])
    assert parsed.lead[0].startswith(summary["baseline"])  # the baseline first
    heads = {d["variant"]: d for d in summary["headline"]}
    for v, li in lines.items():
        for split, acc in summary["variants"][v]["accuracy"].items():  # accuracy per shift
            assert f"{split} {acc:.3f}" in li
        if v == summary["baseline"]:
            assert f"fragmentation index {summary['variants'][v]['fragmentation']['index']:+.3f}" in li
            continue
        d = heads[v]  # the headline answer: Δ index with its interval, the verdict
        assert f"Δ index {d['delta']:+.3f} [{d['ci_bca'][0]:+.3f}, {d['ci_bca'][1]:+.3f}]" in li and d["label"] in li
    assert "1.10 MB, 8-bit weights, 8.8 bits/param" in lines["ort-int8"]
    assert "3.33 MB, 32-bit weights, 32 bits/param" in lines["onnx-fp32"]
    assert "32-bit weights, 32 bits/param" in lines["torch-fp32"]  # from the safetensors header
    assert lines["noise@ort-int8"].split(" — ")[1] == "size n/a, bits/param n/a"  # no manifest: not invented
    # the noise-control comparison sits on the quantized variant's line, and the other way round
    assert "its noise control noise@ort-int8: Δ index" in lines["ort-int8"]
    assert "noise-matched control of ort-int8" in lines["noise@ort-int8"] and "ort-int8 itself: Δ" in \
        lines["noise@ort-int8"]
    # the rest is collapsed: every per-pair statement (the 'not interpretable' ones too) inside <details>
    lead_end = page.index("</ul>", page.index("class='lead'"))
    section = page[page.index("What the numbers show"):page.index("<h2>", lead_end)]
    assert "<details>" in section and "not interpretable" not in re.sub(r"<details>.*?</details>", "", section,
                                                                      flags=re.S)
    assert sum(d.count("not interpretable") for d in parsed.details) == sum(
        1 for v in summary["variants"].values() for p in v["pairs"] if p.get("low_signal"))


def test_without_a_sweep_folder_size_and_bits_are_na(page):
    assert all(" — size n/a, bits/param n/a — " in li for li in Tables(page).lead)


# ---- item 10: titles, colours, markers, ticks, flags --------------------------------------------------------------

def with_options(summary, **options):
    s = copy.deepcopy(summary)
    s["options"] |= options
    return s


@pytest.mark.parametrize("control", ["linear", "probit", "spline"])
def test_the_scatter_title_and_fit_are_the_control_the_analysis_used(summary, rows, control):
    from scipy.special import ndtr, ndtri

    s = with_options(summary, control=control)
    fig = figures.build_on_the_line(rows, s)
    title = figures.figure_title(fig)
    assert f"{control} control" in title and (control == "probit") == ("probit" in title)
    assert "final checkpoint of each run" in title
    ax = next(a for a in fig.axes if a.get_title() == "base")
    fit = next(line for line in ax.lines if to_hex(line.get_color()) == figures.variant_styles(s["variants"])[
        "torch-fp32"]["color"])
    x, y = fit.get_xdata(), fit.get_ydata()
    final = [r for r in rows if r["variant"] == "torch-fp32" and r["step"] == 30]
    acc = {sp: np.array([r["correct"] / r["n"] for r in sorted(final, key=lambda r: r["run"]) if r["split"] == sp])
           for sp in ("id", "base")}
    order = np.argsort(acc["id"], kind="stable")
    np.testing.assert_allclose(x, acc["id"][order])
    if control == "linear":  # the least-squares line on the accuracy scale
        np.testing.assert_allclose(y, np.polyval(np.polyfit(acc["id"], acc["base"], 1), x), atol=1e-9)
    elif control == "probit":  # a line on the probit scale, of the smoothed accuracy
        n = final[0]["n"]
        px, py = (ndtri((acc[k] * n + 0.5) / (n + 1)) for k in ("id", "base"))
        np.testing.assert_allclose(y, ndtr(np.polyval(np.polyfit(px, py, 1), px[order])), atol=1e-9)
    else:
        assert "df = 4" in title


def test_spearman_is_named_in_the_titles(summary, rows):
    s = with_options(summary, method="spearman")
    for fig in (figures.build_on_the_line(rows, s), figures.build_pairs(s)):
        assert "Spearman" in figures.figure_title(fig)


def test_coinciding_variants_are_both_visible_with_a_legend(summary, rows):
    """onnx-fp32 has torch-fp32's points exactly: a different marker drawn on top, not hidden, and said so."""
    styles = figures.variant_styles(summary["variants"])
    fig = figures.build_on_the_line(rows, summary)
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend[0] == "torch-fp32" and "onnx-fp32 (same points as torch-fp32)" in legend
    assert {t.split(" (")[0] for t in legend} == set(summary["variants"])
    ax = fig.axes[0]
    coll = {c.get_label(): c for c in ax.collections}
    torch, onnx = coll["torch-fp32"], coll["onnx-fp32 (same points as torch-fp32)"]
    assert onnx.get_zorder() > torch.get_zorder() and styles["onnx-fp32"]["marker"] != styles["torch-fp32"]["marker"]
    assert torch.get_alpha() < 1  # the filled one beneath is see-through
    # and in pixels: the two alone, both colours show in the plot area
    only = [r for r in rows if r["variant"] in ("torch-fp32", "onnx-fp32")]
    s = copy.deepcopy(summary)
    s["variants"] = {v: s["variants"][v] for v in ("torch-fp32", "onnx-fp32")}
    small = figures.build_on_the_line(only, s)
    small.canvas.draw()
    img = np.asarray(small.canvas.buffer_rgba())[..., :3].astype(int)
    for v in ("torch-fp32", "onnx-fp32"):
        rgb = np.array([int(styles[v]["color"][i:i + 2], 16) for i in (1, 3, 5)])
        assert (np.abs(img - rgb).sum(axis=-1) < 60).sum() > 200, f"{v}'s points do not show"


def figure_colours(fig) -> dict[str, set[str]]:
    """variant -> the colours of its data in a figure: errorbar lines (gid), scatter collections and bars (label)."""
    out: dict[str, set[str]] = {}
    for ax in fig.axes:
        for line in ax.lines:
            if line.get_gid():
                out.setdefault(line.get_gid().split("|")[0], set()).add(to_hex(line.get_color()))
        for c in ax.collections:
            label = c.get_label().split(" (")[0]
            if not label.startswith("_") and len(c.get_edgecolor()):
                out.setdefault(label, set()).add(to_hex(c.get_edgecolor()[0], keep_alpha=False))
        for container in ax.containers:
            label = container.get_label()
            if label and not label.startswith("_") and hasattr(container, "patches"):
                out.setdefault(label, set()).update(to_hex(p.get_facecolor(), keep_alpha=False)
                                                    for p in container.patches)
    return out


def test_every_plot_colours_a_variant_from_one_mapping(summary, rows):
    styles = figures.variant_styles(summary["variants"])
    figs = {"accuracy": figures.build_accuracy(summary), "scatter": figures.build_on_the_line(rows, summary),
            "pairs": figures.build_pairs(summary), "within": figures.build_pairs(summary, "within_run", "within"),
            "Δ per pair": figures.build_comparisons(summary), "Δ index": figures.build_headline(summary)}
    for name, fig in figs.items():
        colours = figure_colours(fig)
        assert colours, name
        for v, seen in colours.items():
            assert seen == {styles[v]["color"]}, (name, v, seen)
    # the Δ plot's rows: every comparison drawn, each in its variant's colour
    drawn = {line.get_gid() for line in figs["Δ per pair"].axes[0].lines if line.get_gid()}
    assert drawn == {f"{c['variant']}|{c['shift_a']}|{c['shift_b']}" for c in summary["comparisons"]}
    # stable: a report without torch-fp32 (the served one) gives the others the same colours
    served = figures.variant_styles([v for v in summary["variants"] if v != "torch-fp32"])
    assert all(served[v] == styles[v] for v in served)
    assert styles["noise@ort-int8"]["marker"] == styles["ort-int8"]["marker"] and not styles["noise@ort-int8"][
        "filled"]


def points_and_ticks(fig):
    ax = fig.axes[0]
    labels = ax.get_xticklabels()
    assert all(t.get_rotation() == 0 and t.get_horizontalalignment() == "center" for t in labels)  # centred
    ticks = {t.get_text().replace(f" {flags.NO_SIGNAL}", "").replace("\n", " "): x
             for t, x in zip(labels, ax.get_xticks())}
    points = [(line.get_gid().split("|", 1)[1].replace("|", " × "), float(line.get_xdata()[0]))
              for line in ax.lines if line.get_gid()]
    return ticks, points


def test_pair_tick_labels_line_up_with_their_points(summary):
    s = copy.deepcopy(summary)
    # as in the demo: only the baseline has trajectories; the within-run plot shows one variant
    for v in s["variants"]:
        if v != s["baseline"]:
            s["variants"][v]["within_run"] = [{**w, "r_partial": None, "undefined": "fewer than 2 checkpoints"}
                                              for w in s["variants"][v]["within_run"]]
    for key, per_group in (("pairs", len(s["variants"])), ("within_run", 1)):
        ticks, points = points_and_ticks(figures.build_pairs(s, key, key))
        assert set(ticks) == {p for p, _ in points}
        for pair, tick in ticks.items():
            xs = [x for p, x in points if p == pair]
            assert len(xs) == per_group and abs(np.mean(xs) - tick) < 1e-9, (key, pair, xs, tick)
            assert all(abs(x - tick) < 0.45 for x in xs)
        if per_group == 1:
            assert all(x == ticks[p] for p, x in points)


def test_delta_rows_with_a_signal_less_shift_are_flagged(summary, page):
    comps = table_dicts(Tables(page), "comparisons")
    assert len(comps) == len(summary["comparisons"])
    for row in comps:
        a, b = row["pair"].split(" × ")
        flagged = lacks_signal(summary, row["variant"], a) or lacks_signal(summary, row["variant"], b)
        assert (flags.NO_SIGNAL in row["note"]) == flagged, row
    assert any(flags.NO_SIGNAL in r["note"] for r in comps) and any(flags.NO_SIGNAL not in r["note"] for r in comps)
    assert f"{flags.NO_SIGNAL} A shift of this pair carries no signal (on the baseline: length)" in page
    fig = figures.build_comparisons(summary)
    ax = fig.axes[0]
    for label in (t.get_text() for t in ax.get_yticklabels()):
        assert (flags.NO_SIGNAL in label) == ("length" in label), label
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(t.startswith(flags.NO_SIGNAL) for t in legend)
    assert {t for t in legend if not t.startswith((flags.NO_SIGNAL, flags.DISAGREE))} == {
        c["variant"] for c in summary["comparisons"]}


def planted_disagreements(summary):
    """A per-pair Δ whose intervals exclude 0 beside p = 0.36, one with p = 0.01 whose intervals include 0, and a
    Δ index (headline) whose BCa and jackknife-t intervals exclude 0 beside p = 0.36."""
    s = copy.deepcopy(summary)
    c1, c2 = [c for c in s["comparisons"] if c["variant"] == "ort-int8"][:2]
    c1 |= {"delta": 0.1, "ci_low": 0.02, "ci_high": 0.2, "ci_bca": [0.03, 0.21], "p": 0.36}
    c2 |= {"delta": 0.05, "ci_low": -0.01, "ci_high": 0.12, "ci_bca": [-0.02, 0.1], "p": 0.01}
    d = next(d for d in s["headline"] if d["variant"] == "ort-int8")
    d |= {"delta": -0.05, "ci_bca": [-0.09, -0.01], "ci_jackknife_t": [-0.09, -0.002], "p": 0.36}
    return s


def test_an_interval_that_disagrees_with_its_p_value_is_explained(summary, rows, page):
    s = planted_disagreements(summary)
    alpha = s["options"]["alpha"]
    planted = report.render_html(s, rows, "synthetic")
    parsed = Tables(planted)
    for row, c in zip(table_dicts(parsed, "comparisons"), figures.ordered_comparisons(s)):
        expected = any(excludes_zero(iv) != (c["p"] < alpha) for iv in ([c["ci_low"], c["ci_high"]], c["ci_bca"]))
        assert (flags.DISAGREE in row["note"]) == expected, (row, c)
    notes = [r["note"] for r in table_dicts(parsed, "comparisons") if flags.DISAGREE in r["note"]]
    assert "the percentile and BCa intervals exclude 0 but p = 0.36 ≥ 0.05" in " ".join(notes)
    assert "p = 0.01 < 0.05 but the percentile and BCa intervals include 0" in " ".join(notes)
    head = {r["variant"]: r for r in table_dicts(parsed, "headline")}
    assert "the BCa and jackknife-t intervals exclude 0 but p = 0.36 ≥ 0.05" in head["ort-int8"]["note"]
    assert all(flags.DISAGREE not in r["note"] for v, r in head.items() if v != "ort-int8")
    assert flags.DISAGREE in next(li for li in parsed.lead if li.startswith("ort-int8 "))
    # the note says what each one measures, and what to conclude
    assert flags.DELTA_DISAGREE_NOTE in planted
    for words in ("resamples whole runs", "swaps the two variants' labels within runs",
                  "treat the row as inconclusive"):
        assert words in flags.DELTA_DISAGREE_NOTE
    # the Δ plots mark them too
    labels = [t.get_text() for t in figures.build_comparisons(s).axes[0].get_yticklabels()]
    assert sum(flags.DISAGREE in t for t in labels) == sum(flags.DISAGREE in r["note"]
                                                           for r in table_dicts(parsed, "comparisons"))
    ax = figures.build_headline(s).axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels.count(f"ort-int8 {flags.DISAGREE}") == 1 and sum(flags.DISAGREE in t for t in labels) == 1
    assert any(t.get_text().startswith(flags.DISAGREE) for t in ax.get_legend().get_texts())
    clean = figures.build_headline(summary).axes[0]
    assert not any(flags.DISAGREE in t.get_text() for t in [*clean.get_yticklabels(), *clean.get_legend().get_texts()])
    # an unplanted summary has none where none is due
    for row, c in zip(table_dicts(Tables(page), "comparisons"), figures.ordered_comparisons(summary)):
        due = any(excludes_zero(iv) != (c["p"] < alpha) for iv in ([c["ci_low"], c["ci_high"]], c["ci_bca"]))
        assert (flags.DISAGREE in row["note"]) == due


# ---- the served report: its source and its baseline -------------------------------------------------------------

def served_summary(rows, kind):
    served = [r for r in rows if r["variant"] != "torch-fp32"]
    return analyze(served, FAST) | {"source_kind": kind}, served


@pytest.mark.parametrize("kind, words", [("scrape", "a fracture server's /metrics, scraped from"),
                                         ("prometheus", "the counters Prometheus held at")])
def test_the_served_report_names_its_source_and_states_its_baseline(rows, kind, words):
    s, served = served_summary(rows, kind)
    assert s["baseline"] == "onnx-fp32"
    url = "http://127.0.0.1:59019"
    page = report.render_html(s, served, url)
    assert f"{words} <code>{url}</code>" in page and "live endpoint" in page
    notice = re.search(r"<div class='notice'>(.*?)</div>", page).group(1)
    assert "Baseline: onnx-fp32, not torch-fp32." in notice and "torch-fp32 is never served" in notice
    assert "baseline: onnx-fp32 (torch-fp32 is not in this table)" in report.headline_lines(s)[0]
    assert "Δ fragmentation index vs onnx-fp32" in figures.build_headline(s).axes[0].get_xlabel()
    assert "Δ partial r vs onnx-fp32" in figures.build_comparisons(s).axes[0].get_xlabel()


def test_a_table_without_torch_rows_says_so(rows, tmp_path, page):
    s, served = served_summary(rows, "accuracies")
    csv = tmp_path / "accuracy.csv"
    upsert_rows(csv, served)
    without = report.render_html(s, served, str(csv))
    assert "Baseline: onnx-fp32, not torch-fp32." in without and "this table has no torch-fp32 rows" in without
    assert "live endpoint" not in without
    assert "<div class='notice'>" not in page and "Baseline (full precision): <b>torch-fp32</b>" in page


def test_analyze_scrape_writes_a_report_naming_the_scraped_server(tmp_path, rows):
    """End to end: a /metrics endpoint with fracture's counters, `analyze --scrape`, the report it writes."""
    from prometheus_client import CollectorRegistry, Counter, start_http_server

    from common.net import free_port

    served = [r for r in rows if r["variant"] != "torch-fp32" and r["step"] == 30 and r["run"] < "r08"]
    registry = CollectorRegistry()
    requests_total = Counter("fracture_requests", "graded requests", ["model", "variant", "shift", "result"],
                             registry=registry)
    for r in served:
        requests_total.labels(r["run"], r["variant"], r["split"], "correct").inc(r["correct"])
        requests_total.labels(r["run"], r["variant"], r["split"], "incorrect").inc(r["n"] - r["correct"])
    port = free_port()
    server, _ = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        out = tmp_path / "served"
        res = subprocess.run([sys.executable, "-m", "telemetry", "analyze", "--scrape", f"http://127.0.0.1:{port}",
                              "--out", str(out), "--n_boot=100", "--n_perm=100", "--measure=exact"],
                             capture_output=True, text=True, timeout=300)
    finally:
        server.shutdown()
        server.server_close()
    assert res.returncode == 0, res.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["source_kind"] == "scrape" and summary["baseline"] == "onnx-fp32"
    page = (out / "report.html").read_text()
    assert f"scraped from <code>http://127.0.0.1:{port}</code>" in page
    assert "Baseline: onnx-fp32, not torch-fp32." in page


# ---- the page in a real browser ---------------------------------------------------------------------------------

CHROMIUM = find_chromium()
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary on PATH (CI installs Debian's "
                                    "`chromium` in .ci/run; set $CHROMIUM to use another)")


@needs_chromium
def test_the_report_renders_in_headless_chromium(tmp_path, summary, rows, sweep):
    """The report opens without console errors or failed loads, every figure decodes, the screenshot shows a page;
    the same checks fail on a page that throws, logs an error, misses an image, or is blank."""
    good = tmp_path / "report.html"
    good.write_text(report.render_html(planted_disagreements(summary) | {"source_kind": "accuracies"}, rows,
                                       str(sweep / "accuracy.csv")))
    bad = tmp_path / "bad.html"
    bad.write_text("<!doctype html><html><head><meta charset='utf-8'><title>bad</title></head><body><p>text</p>"
                   "<img alt='broken' src='data:image/png;base64,AAAA'><img alt='missing' src='missing.png'>"
                   "<script>console.error('logged'); throw new Error('thrown')</script></body></html>")
    blank = tmp_path / "blank.html"
    blank.write_text("<!doctype html><html><head><meta charset='utf-8'><title>blank</title></head><body></body></html>")
    started = time.perf_counter()
    with Chromium(CHROMIUM, width=1200, height=2000) as browser:
        page, broken, empty = (browser.open(p.as_uri()) for p in (good, bad, blank))
    print(f"chromium: 3 pages in {time.perf_counter() - started:.1f}s; report screenshot {blankness(page.screenshot)}")
    assert page.errors == [], page.errors
    assert page.title == "fracture report" and page.text_length > 2000
    assert len(page.images) == good.read_text().count("<img") >= 6
    assert all(complete and width > 0 for complete, width in page.images), page.images
    assert not is_blank(page.screenshot)
    # the checks can fail
    assert any("thrown" in e for e in broken.errors) and any("logged" in e for e in broken.errors)
    assert any("missing.png" in e for e in broken.errors)
    assert not all(w > 0 for _, w in broken.images)
    assert empty.errors == [] and is_blank(empty.screenshot)
