"""report.html (self-contained: images inlined as base64 PNG) and the terminal table.

The page leads with one line per variant (size and bits per parameter from the export
manifests beside the accuracy table, accuracy per split, the pre-registered answer); the
per-pair detail is collapsed below it. The figures are ``telemetry.figures`` (every plot takes a
variant's colour and marker from one mapping, its titles from the options the analysis ran
with); tables and figures mark the same two flags (``telemetry.flags``): † a pair with a shift
that carries no signal, ‡ an interval and a p-value that disagree about 0.
"""

from __future__ import annotations

import datetime
import html
import json
import math
import statistics
import struct
from pathlib import Path

from common.accuracy_table import TORCH_VARIANT
from common.manifest import read_manifest
from export.manifest import footprint_bytes
from telemetry.figures import (
    NOISE_PREFIX,
    comparison_flags,
    fig_accuracy,
    fig_comparisons,
    fig_headline,
    fig_on_the_line,
    fig_pairs,
    ordered_comparisons,
    ordered_headline,
    ordered_variants,
)
from telemetry.flags import (
    DELTA_DISAGREE_NOTE,
    DISAGREE,
    DROP_DISAGREE_NOTE,
    NO_SIGNAL,
    PAIR_DISAGREE_NOTE,
    delta_disagreement,
    disagreement,
    fmt,
    no_signal_note,
    pair_disagreement,
)

# ---- sizes and bits per parameter, from the export manifests beside the table -----------------------------------

def _final_steps(rows: list[dict], variant: str) -> dict[str, int]:
    last: dict[str, int] = {}
    for r in rows:
        if r["variant"] == variant:
            last[r["run"]] = max(last.get(r["run"], -1), int(r["step"]))
    return last


def _checkpoint_footprint(ckpt: Path) -> dict:
    """A torch checkpoint's files on disk and its weights' bits per parameter (safetensors header)."""
    size = sum(p.stat().st_size for p in ckpt.iterdir() if p.is_file())
    numel = data = 0
    dtypes = set()
    for st in ckpt.glob("*.safetensors"):
        with open(st, "rb") as fh:
            header = json.loads(fh.read(struct.unpack("<Q", fh.read(8))[0]))
        for name, t in header.items():
            if name == "__metadata__":
                continue
            numel += math.prod(t["shape"])
            data += t["data_offsets"][1] - t["data_offsets"][0]
            dtypes.add(t["dtype"])
    if not numel:
        raise ValueError(f"no safetensors weights in {ckpt}")
    bits = {"F32": 32, "F16": 16, "BF16": 16, "F64": 64}
    return {"bytes": size, "weight_bits": bits.get(dtypes.pop()) if len(dtypes) == 1 else None,
            "bits_per_param": 8 * data / numel}


def _manifest_footprint(path: Path, step: int) -> dict:
    m = read_manifest(path.parent)
    if m.get("step") is not None and int(m["step"]) != step:
        raise ValueError(f"{path} is the export of step {m['step']}, the table's final step is {step}")
    size = footprint_bytes(m)
    return {"bytes": size, "weight_bits": m.get("weight_bits"), "bits_per_param": m.get("effective_bits_per_param")}


def footprints(summary: dict, rows: list[dict], sweep: Path | None) -> dict[str, dict | None]:
    """variant -> size and bits per parameter over its runs' final exports (None: no manifest reachable).

    A quantized variant's come from runs/<sweep>/<run>/variants/<variant>/manifest.json (total_bytes,
    weight_bits, effective_bits_per_param); torch-fp32's from the final checkpoint's files.
    """
    out: dict[str, dict | None] = {}
    for v in summary["variants"]:
        found = []
        steps = _final_steps(rows, v)
        for run, step in steps.items() if sweep else ():
            try:
                found.append(_checkpoint_footprint(sweep / run / "checkpoints" / f"step-{step}") if v == TORCH_VARIANT
                             else _manifest_footprint(sweep / run / "variants" / v / "manifest.json", step))
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                continue
        out[v] = {"found": len(found), "runs": len(steps), "bytes": [f["bytes"] for f in found],
                  "weight_bits": sorted({f["weight_bits"] for f in found if f["weight_bits"] is not None}),
                  "bits_per_param": [f["bits_per_param"] for f in found if f["bits_per_param"] is not None]} \
            if found else None
    return out


def _bytes(n: float) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


def footprint_text(fp: dict | None) -> str:
    if not fp:
        return "size n/a, bits/param n/a"
    size = _bytes(statistics.median(fp["bytes"]))
    if min(fp["bytes"]) != max(fp["bytes"]) and max(fp["bytes"]) > 1.01 * min(fp["bytes"]):
        size += f" ({_bytes(min(fp['bytes']))}–{_bytes(max(fp['bytes']))})"
    wb = fp["weight_bits"]
    bpp = statistics.median(fp["bits_per_param"]) if fp["bits_per_param"] else None
    bits = f"{'/'.join(str(b) for b in wb)}-bit weights" if wb else "weight bits n/a"
    if bpp is not None:
        stored = "stored at " if wb and max(wb) < 16 <= bpp else ""
        per_param = f"{bpp:.2f}".rstrip("0").rstrip(".")
        bits += f", {stored}{per_param} bits/param" + (" (simulated: kept as fp32)" if stored else "")
    else:
        bits += ", bits/param n/a"
    part = f" (from {fp['found']} of {fp['runs']} runs)" if fp["found"] < fp["runs"] else ""
    return f"{size}, {bits}{part}"


# ---- where the numbers come from, and against what ---------------------------------------------------------------

def source_kind(summary: dict, source: str) -> str:
    if summary.get("source_kind"):
        return summary["source_kind"]
    if source.startswith(("http://", "https://")):
        return "scrape" if source.rstrip("/").endswith("/metrics") else "url"
    return "accuracies" if Path(source).is_file() else "other"


def sweep_of(summary: dict, source: str) -> Path | None:
    """The sweep folder beside an accuracy table (where the export manifests are), when there is one."""
    if source_kind(summary, source) != "accuracies":
        return None
    folder = Path(source).parent
    return folder if folder.is_dir() else None


def source_html(summary: dict, source: str) -> str:
    kind = source_kind(summary, source)
    code = f"<code>{html.escape(source)}</code>"
    if kind == "accuracies":
        what = "the served traffic's accuracy table" if Path(source).name.startswith("served") else "the accuracy table"
        return f"{what} {code}"
    written = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    where = {"scrape": f"the counters of a fracture server's /metrics, scraped from {code}",
             "prometheus": f"the counters Prometheus held at {code} (its HTTP API)",
             }.get(kind, f"served traffic's counters read from {code}")
    return (f"{where}, read when this report was written ({written}). The address is a live endpoint, not a file: "
            "<code>make demo</code> starts its server and Prometheus on free ports and stops them when it ends, so "
            "it may no longer answer; what it held then is in this report and its summary.json (to analyse the "
            "same traffic again, analyse the table <code>serve replay --out</code> wrote, with "
            "<code>--accuracies</code>)")


def baseline_html(summary: dict, source: str) -> str:
    base = summary.get("baseline")
    served = source_kind(summary, source) in ("scrape", "prometheus", "url")
    if base == TORCH_VARIANT:
        return f"Baseline (full precision): <b>{TORCH_VARIANT}</b>, the fine-tuned checkpoints themselves."
    why = ("the server runs ONNX Runtime exports only, so torch-fp32 is never served" if served
           else f"this table has no {TORCH_VARIANT} rows")
    if base is None:
        return (f"<div class='notice'><b>No full-precision baseline</b>: neither {TORCH_VARIANT} nor onnx-fp32 is in "
                f"this table{' (' + why + ')' if served else ''}, so no Δ is computed.</div>")
    return (f"<div class='notice'><b>Baseline: {html.escape(base)}, not {TORCH_VARIANT}.</b> Every Δ and every "
            f"drop below is against {html.escape(base)}, the fp32 ONNX export of the same checkpoints, because "
            f"{why}.</div>")


def _ci(ci) -> str:
    return f"[{fmt(ci[0])}, {fmt(ci[1])}]" if ci else "—"


def _missing(d: dict) -> str:
    missing = d.get("runs_missing") or []
    if not missing:
        return ""
    return (f" (on {d['n_runs']} runs: {len(missing)} run(s) of the baseline lack this variant, e.g. "
            f"{missing[0]}: a failed export check selects runs, which can bias the Δ)")


def headline_lines(summary: dict) -> list[str]:
    """One line per variant: its fragmentation index, the paired Δ against full precision, the verdict."""
    lines = []
    base = summary.get("baseline")
    frag = summary["variants"].get(base, {}).get("fragmentation") if base else None
    pairs = ", ".join(f"{a}×{b}" for a, b in summary.get("index_pairs", [])) or "none"
    note = "" if base in (TORCH_VARIANT, None) else f" ({TORCH_VARIANT} is not in this table)"
    lines.append(f"fragmentation index = mean partial r over shift pairs with signal ({pairs}); "
                 f"measure: {summary.get('measure')}; control: {summary['options']['control']}; "
                 f"baseline: {base or 'none'}{note}")
    if frag and frag.get("index") is not None:
        lines.append(f"  {base}: index {frag['index']:+.3f} {_ci(frag['ci_bca'])} ({frag['n_runs']} runs)")
    elif frag:
        lines.append(f"  {base}: index undefined: {frag['undefined']}")
    for d in summary.get("headline", []):
        idx = f"index {d['index']:+.3f}" if d.get("index") is not None else "index —"
        if d.get("noise_control"):
            idx += f" (noise-matched control of {d['noise_control']})"
        if d.get("delta") is None:
            lines.append(f"  {d['variant']}: {idx}; Δ undefined: {d.get('undefined')} -> {d['label']}")
            continue
        lines.append(f"  {d['variant']}: {idx}; Δ {d['delta']:+.3f} {_ci(d['ci_bca'])} "
                     f"(jackknife {_ci(d['ci_jackknife_t'])}), p {d['p']:.3g}, q {d['q']:.3g} "
                     f"-> {d['label'].upper()}  [{d['why']}]{_missing(d)}")
    return lines


def _table(headers: list[str], rows: list[list], cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table{f' class={cls!r}' if cls else ''}><tr>{head}</tr>{body}</table>"


# ---- the lead: one line per variant -----------------------------------------------------------------------------

def _delta_text(d: dict, alpha: float) -> str:
    if d.get("delta") is None:
        return f"Δ index undefined ({html.escape(str(d.get('undefined')))}) → <b>{html.escape(d['label'])}</b>"
    lo, hi = d["ci_bca"]
    dis = delta_disagreement(d, alpha)
    return (f"Δ index {d['delta']:+.3f} [{lo:+.3f}, {hi:+.3f}], q {d['q']:.2g} → <b>{html.escape(d['label'])}</b>"
            + (f" {DISAGREE}" if dis else ""))


def answer_html(summary: dict, variant: str) -> str:
    """The pre-registered answer for one variant: Δ index with its interval, the verdict, the noise control."""
    base = summary.get("baseline")
    alpha = summary["options"]["alpha"]
    heads = {d["variant"]: d for d in summary.get("headline", [])}
    res = summary["variants"][variant]
    if res.get("refused"):
        return html.escape(res["refused"])
    if variant == base:
        frag = res.get("fragmentation") or {}
        if frag.get("index") is not None:
            return (f"the baseline: fragmentation index {frag['index']:+.3f} {_ci(frag.get('ci_bca'))} "
                    f"over {frag.get('n_runs', res['n_runs'])} runs")
        return f"the baseline: fragmentation index undefined ({html.escape(str(frag.get('undefined')))})"
    d = heads.get(variant)
    if d is None:
        return "no Δ: no full-precision baseline in this table"
    text = _delta_text(d, alpha)
    if d.get("noise_control"):
        own = heads.get(d["noise_control"])
        text = f"noise-matched control of {html.escape(d['noise_control'])}: {text}"
        if own:
            text += f"; {html.escape(d['noise_control'])} itself: {_delta_text(own, alpha)}"
    elif NOISE_PREFIX + variant in heads:
        text += f"; its noise control {NOISE_PREFIX}{html.escape(variant)}: " \
                f"{_delta_text(heads[NOISE_PREFIX + variant], alpha)}"
    return text + (" (" + html.escape(_missing(d).strip(" ()")) + ")" if _missing(d) else "")


def lead_html(summary: dict, rows: list[dict], source: str) -> str:
    sweep = sweep_of(summary, source)
    fps = footprints(summary, rows, sweep)
    base = summary.get("baseline")
    items = []
    for v in ordered_variants(summary):
        res = summary["variants"][v]
        acc = ", ".join(f"{html.escape(s)} {a:.3f}" for s, a in res["accuracy"].items())
        items.append(f"<li><b>{html.escape(v)}</b> — {html.escape(footprint_text(fps.get(v)))} — {acc} — "
                     f"{answer_html(summary, v)}</li>")
    where = (f"the export manifests under <code>{html.escape(str(sweep))}/&lt;run&gt;/variants/</code> (torch-fp32: "
             "its final checkpoints)" if sweep else
             "n/a: they come from the export manifests of a sweep folder, and this report's source is not an "
             "accuracy table inside one")
    intro = (f"<p>One line per variant: size on disk and bits per parameter ({where}); "
             f"{html.escape(summary.get('measure', 'exact'))} accuracy per split (mean over runs, final checkpoints); "
             f"the pre-registered answer: Δ fragmentation index vs {html.escape(base or 'full precision')} with its "
             f"BCa {summary['options']['level']:.0%} interval, BH q over the variants and the verdict, beside the "
             "noise-matched control's.</p>")
    dis = any(delta_disagreement(d, summary["options"]["alpha"]) for d in summary.get("headline", [])
              if d.get("delta") is not None)
    return intro + f"<ul class='lead'>{''.join(items)}</ul>" + (f"<p class='note'>{DELTA_DISAGREE_NOTE}</p>"
                                                                  if dis else "")


def plain_language_parts(summary: dict) -> tuple[list[str], int]:
    """Per variant and pair, what the partial correlation says in words; and how many are not interpretable."""
    parts, uninterpretable = [], 0
    for v in ordered_variants(summary):
        res = summary["variants"][v]
        if res.get("refused"):
            parts.append(f"<b>{html.escape(v)}</b>: {html.escape(res['refused'])}.")
            continue
        for p in res["pairs"]:
            if p.get("r_partial") is None:
                parts.append(f"<b>{html.escape(v)}</b>, {p['shift_a']} × {p['shift_b']}: undefined "
                             f"({html.escape(p['undefined'])}).")
                continue
            if p.get("low_signal"):
                uninterpretable += 1
                parts.append(f"<b>{html.escape(v)}</b>, {p['shift_a']} × {p['shift_b']}: not interpretable — "
                             f"{', '.join(p['low_signal'])} carries no signal across runs (see the signal check); "
                             f"partial r = {p['r_partial']:.2f} is shown in the tables but is not a finding.")
                continue
            excludes_zero = p["ci_low"] > 0 or p["ci_high"] < 0
            verdict = ("the interval excludes 0: runs that do better than their in-domain accuracy predicts on "
                       f"{p['shift_a']} also tend to do {'better' if p['r_partial'] > 0 else 'worse'} on {p['shift_b']}"
                       if excludes_zero else
                       "the interval includes 0: these data do not show the two shifts moving together "
                       "once in-domain accuracy is accounted for (which is not evidence that they are unrelated)")
            dis = pair_disagreement(p, summary["options"]["alpha"])
            parts.append(f"<b>{html.escape(v)}</b>, {p['shift_a']} × {p['shift_b']}: partial r = "
                         f"{p['r_partial']:.2f} [{p['ci_low']:.2f}, {p['ci_high']:.2f}] over {res['n_runs']} runs; "
                         f"{verdict}" + (f"; but {DISAGREE} {dis}: inconclusive" if dis else "") + ".")
        if res.get("warning"):
            parts.append(f"<i>Warning for {html.escape(v)}: {html.escape(res['warning'])}.</i>")
    return parts, uninterpretable


SCOPE = ("These are correlations across a population of fine-tuning runs of one base model on one synthetic task: "
         "they say how shifts co-vary across the runs this sweep produced, not why, and not how another base model "
         "or task would behave. Intervals resample whole runs; checkpoints of one run are not independent.")


def plain_language(summary: dict, rows: list[dict] | None = None, source: str = "") -> str:
    """The lead (one line per variant), then the per-pair statements collapsed in a <details> element."""
    parts, uninterpretable = plain_language_parts(summary)
    lead = lead_html(summary, rows or [], source) if rows is not None else ""
    more = (f"<details><summary>Per pair, in words: {len(parts)} statement(s)"
            + (f", {uninterpretable} of them on pairs with a shift without signal (not findings)"
               if uninterpretable else "") + "</summary>"
            + "".join(f"<p>{p}</p>" for p in parts) + "</details>")
    return lead + more + f"<p class='note'>{SCOPE}</p>"


CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.25em .6em;font-size:.9em}
th{background:#f3f3f3}img{max-width:100%}h2{margin-top:2em;border-bottom:1px solid #ddd}figure{margin:1em 0}
pre{white-space:pre-wrap}
.notice{border-left:4px solid #d08700;background:#fff6e0;padding:.5em .8em;margin:.8em 0}
.note{font-size:.9em;color:#444}ul.lead li{margin:.35em 0}details{margin:.8em 0}summary{cursor:pointer}"""


def headline_table(summary: dict) -> str:
    rows = []
    alpha = summary["options"]["alpha"]
    for d in ordered_headline(summary):
        dis = delta_disagreement(d, alpha) if d.get("delta") is not None else None
        rows.append([d["variant"], fmt(d.get("index")), d["n_runs"], fmt(d.get("delta")), _ci(d.get("ci_bca")),
                     _ci(d.get("ci_jackknife_t")), fmt(d.get("p"), 4), fmt(d.get("q"), 4),
                     fmt(d.get("p_tost"), 4), fmt(d.get("min_detectable_delta")), d.get("runs_needed_for_0.1") or "—",
                     d["label"], f"{DISAGREE} {dis}" if dis else ""])
    if not rows:
        return ""
    return _table(["variant", "index", "runs", "Δ index", "95% BCa", "95% jackknife-t", "p (label swaps)", "q (BH)",
                   "TOST p", "smallest detectable Δ (80% power)", "runs for Δ = 0.1", "verdict", "note"], rows,
                  "headline") + (f"<p class='note'>{DELTA_DISAGREE_NOTE}</p>" if any(r[-1] for r in rows) else "")


def ablation_and_start(summary: dict) -> str:
    """Where each split started before fine-tuning, and any replayed shift (an ablation)."""
    parts = []
    if summary.get("replayed_shifts"):
        parts.append(f"<p><b>Ablation:</b> the training mixture replays eval shift(s) "
                     f"{html.escape(', '.join(summary['replayed_shifts']))}; they are in-distribution for those runs, "
                     "so their correlations are manufactured by the design, not measured transfer.</p>")
    before = summary.get("before_finetuning")
    if before:
        m = summary.get("measure", "exact")
        acc = next(iter(summary["variants"].values()), {}).get("accuracy", {}) if summary.get("baseline") is None \
            else summary["variants"][summary["baseline"]]["accuracy"]
        parts.append("<h2>Before and after fine-tuning</h2><p>The base model on every split before fine-tuning "
                     "(step 0) beside the fine-tuned population's mean: a shift that starts low and rises measures "
                     "transfer; one that starts high can only be forgotten.</p>" + _table(
                         ["split", f"step 0 ({m})", f"after fine-tuning ({m}, mean)", "step 0 (exact)",
                          "step 0 (digit)"],
                         [[s, fmt(v.get(m)), fmt(acc.get(s)), fmt(v.get("exact")), fmt(v.get("digit"))]
                          for s, v in before.items()]))
    return "".join(parts)


def _flag_note(rows: list[list], no_signal_text: str, disagree_text: str) -> str:
    cells = " ".join(str(r[-1]) for r in rows)
    return ((f"<p class='note'>{html.escape(no_signal_text)}</p>" if NO_SIGNAL in cells else "")
            + (f"<p class='note'>{html.escape(disagree_text)}</p>" if DISAGREE in cells else ""))


def pair_rows(summary: dict) -> list[list]:
    out = []
    alpha = summary["options"]["alpha"]
    for v in ordered_variants(summary):
        for p in summary["variants"][v]["pairs"]:
            notes = [p["undefined"]] if p.get("undefined") else []
            if p.get("low_signal"):
                notes.append(f"{NO_SIGNAL} no signal: {', '.join(p['low_signal'])}")
            dis = pair_disagreement(p, alpha) if p.get("r_partial") is not None else None
            if dis:
                notes.append(f"{DISAGREE} {dis}")
            out.append([v, f"{p['shift_a']} × {p['shift_b']}", fmt(p.get("r")), fmt(p.get("r_partial")),
                        f"[{fmt(p.get('ci_low'))}, {fmt(p.get('ci_high'))}]", fmt(p.get("p"), 4),
                        fmt(p.get("q"), 4), "; ".join(notes)])
    return out


def comparison_rows(summary: dict) -> list[list]:
    return [[c["variant"], f"{c['shift_a']} × {c['shift_b']}", c["n_runs"], fmt(c.get("delta")),
             f"[{fmt(c.get('ci_low'))}, {fmt(c.get('ci_high'))}]", _ci(c.get("ci_bca")), fmt(c.get("p"), 4),
             fmt(c.get("q"), 4), "; ".join(comparison_flags(summary, c))] for c in ordered_comparisons(summary)]


def drop_rows(summary: dict) -> list[list]:
    alpha = summary["options"]["alpha"]
    out = []
    rank = {v: i for i, v in enumerate(ordered_variants(summary))}
    for d in sorted(summary.get("drops", []), key=lambda d: rank.get(d["variant"], len(rank))):
        dis = disagreement({"bootstrap": [d.get("ci_low"), d.get("ci_high")]}, d.get("p"), alpha) \
            if d.get("excess") is not None else None
        notes = [d["undefined"]] if d.get("undefined") else []
        if d.get("excess") is not None and not summary["variants"].get(summary.get("baseline"), {}).get(
                "signal", {}).get(d["shift"], {}).get("has_signal", True):
            notes.append(f"{NO_SIGNAL} no signal: {d['shift']}")
        if dis:
            notes.append(f"{DISAGREE} {dis}")
        out.append([d["variant"], d["shift"], d["n_runs"], fmt(d["drop_id"]), fmt(d["drop_shift"]),
                    fmt(d.get("excess")), f"[{fmt(d.get('ci_low'))}, {fmt(d.get('ci_high'))}]",
                    fmt(d.get("p"), 4), fmt(d.get("q"), 4), "; ".join(notes)])
    return out


def render_html(summary: dict, rows: list[dict], source: str) -> str:
    opts = summary["options"]
    measure = {"digit": "per-digit accuracy (share of answer digits right)",
               "exact": "exact-match accuracy"}[summary.get("measure", "exact")]
    sections = [f"<h1>fracture report</h1><p>Source: {source_html(summary, source)}. Measure: <b>{measure}</b>"
                f"{' (' + html.escape(summary['measure_note']) + ')' if summary.get('measure_note') else ''}. "
                f"Control for in-domain accuracy: <b>{opts['control']}</b>; points: <b>{opts['points']}</b>; "
                f"{opts['n_boot']} cluster-bootstrap resamples of runs; method: {opts['method']}.</p>"
                + baseline_html(summary, source)]
    sections.append("<h2>What the numbers show</h2>" + plain_language(summary, rows, source))
    sections.append("<h2>Does quantization change how generalization fragments?</h2>"
                    "<p>The pre-registered answer, one per variant: the <b>fragmentation index</b> (mean partial "
                    "correlation over every pair of shifts that carries signal on the full-precision baseline; "
                    "lower = more fragmented), and its paired change Δ against full precision on the same "
                    f"(run, checkpoint) points, with Benjamini–Hochberg q across every variant, a TOST equivalence "
                    f"test (bound ±{opts['bound']:g}) and the smallest Δ these runs can detect. "
                    "<code>noise@&lt;variant&gt;</code> is full precision plus random noise of that variant's "
                    "per-tensor error energy: a Δ that the noise control shares is generic noise, not "
                    "quantization.</p>" + f"<pre>{html.escape(chr(10).join(headline_lines(summary)))}</pre>"
                    + fig_headline(summary) + headline_table(summary))
    sections.append(ablation_and_start(summary))
    sections.append("<h2>Accuracy per shift, by variant</h2>" + fig_accuracy(summary))
    acc_rows = [[v, summary["variants"][v]["n_runs"], *(fmt(a) for a in summary["variants"][v]["accuracy"].values())]
                for v in ordered_variants(summary)]
    first = next(iter(summary["variants"].values()))
    sections.append(_table(["variant", "runs", *first["accuracy"]], acc_rows))
    sections.append("<h2>In-domain vs shift accuracy</h2>" + fig_on_the_line(rows, summary))
    sections.append("<h2>Partial correlations</h2>" + fig_pairs(summary))
    prows = pair_rows(summary)
    sections.append(_table(["variant", "pair", "r", "partial r", "95% CI", "p", "q (BH)", "note"], prows, "pairs")
                    + _flag_note(prows, no_signal_note(summary), PAIR_DISAGREE_NOTE))
    sections.append("<h2>Full precision vs quantized</h2>" + fig_comparisons(summary))
    comp_rows = comparison_rows(summary)
    sections.append("<p>Per pair (detail; BH across these pairs as their own family, never a verdict):</p>"
                    + _table(["variant", "pair", "runs", f"Δ vs {summary.get('baseline')}", "95% percentile CI",
                              "95% BCa CI", "p (label swaps)", "q", "note"], comp_rows, "comparisons")
                    + _flag_note(comp_rows, no_signal_note(summary), DELTA_DISAGREE_NOTE) if comp_rows else "")
    drows = drop_rows(summary)
    sections.append("<h2>Accuracy drops, paired</h2><p>Per run, the full-precision minus quantized accuracy on each "
                    "shift, less the drop the in-domain drop predicts along the baseline's accuracy-on-the-line "
                    "slope; averaged over runs. Positive: quantization hurts this shift more than in-domain "
                    "accuracy explains.</p>" + _table(
                        ["variant", "shift", "runs", "drop in-domain", "drop on shift", "excess drop", "95% CI", "p",
                         "q (BH)", "note"], drows, "drops")
                    + _flag_note(drows, no_signal_note(summary, "This shift"), DROP_DISAGREE_NOTE))
    sections.append("<h2>Signal check per shift</h2><p>A shift where runs sit at 0 or 1, or whose across-run "
                    "spread is not above the binomial standard error, carries no signal.</p>")
    sig_rows = [[v, s, fmt(x["mean"]), fmt(x["sd_across_runs"]), fmt(x["binomial_se"]),
                 fmt(x["spread_over_se"], 1), f"{x['share_at_0']:.0%}", f"{x['share_at_1']:.0%}",
                 "yes" if x["has_signal"] else "no"]
                for v in ordered_variants(summary) for s, x in summary["variants"][v]["signal"].items()]
    sections.append(_table(["variant", "split", "mean", "sd across runs", "binomial SE", "sd/SE", "at 0", "at 1",
                            "signal"], sig_rows, "signal"))
    sections.append("<h2>Between runs vs within runs (trajectories)</h2><p>Between: final checkpoints across "
                    "runs. Within: checkpoints of each run with the run's mean removed (how shifts move together "
                    "during fine-tuning). They can differ in sign.</p>")
    side = []
    for v in ordered_variants(summary):
        res = summary["variants"][v]
        within = {(w["shift_a"], w["shift_b"]): w for w in res.get("within_run", [])}
        for p in res["pairs"]:
            w = within.get((p["shift_a"], p["shift_b"]), {})
            side.append([v, f"{p['shift_a']} × {p['shift_b']}" + (f" {NO_SIGNAL}" if p.get("low_signal") else ""),
                         f"{fmt(p.get('r_partial'))} [{fmt(p.get('ci_low'))}, {fmt(p.get('ci_high'))}]",
                         f"{fmt(w.get('r_partial'))} [{fmt(w.get('ci_low'))}, {fmt(w.get('ci_high'))}]"
                         if w.get("r_partial") is not None else (w.get("undefined") or "—")])
    sections.append(_table(["variant", "pair", "between runs", "within runs"], side, "within"))
    sections.append(fig_pairs(summary, "within_run", "partial correlation (within runs)"))
    return f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>fracture report</title>" \
           f"<style>{CSS}</style></head><body>{''.join(sections)}</body></html>"


def terminal_table(summary: dict) -> str:
    lines = [*headline_lines(summary), ""]
    for v, res in summary["variants"].items():
        acc = "  ".join(f"{s} {a:.3f}" for s, a in res["accuracy"].items())
        lines.append(f"{v}  ({res['n_runs']} runs)  {acc}")
        if res.get("refused"):
            lines.append(f"  {res['refused']}")  # the message starts with "refused:"
            continue
        if res.get("warning"):
            lines.append(f"  warning: {res['warning']}")
        for p in res["pairs"]:
            if p.get("r_partial") is None:
                lines.append(f"  {p['shift_a']:>14s} × {p['shift_b']:<14s} undefined: {p['undefined']}")
            else:
                lines.append(f"  {p['shift_a']:>14s} × {p['shift_b']:<14s} r {p['r']:+.3f}  "
                             f"partial {p['r_partial']:+.3f} [{p['ci_low']:+.3f}, {p['ci_high']:+.3f}]  "
                             f"p {p['p']:.4f}  q {p['q']:.4f}"
                             + (f"  (no signal: {', '.join(p['low_signal'])})" if p.get("low_signal") else ""))
    for c in summary["comparisons"]:
        if c.get("delta") is not None:
            lines.append(f"Δ {c['variant']} − {c['baseline']}  {c['shift_a']} × {c['shift_b']}: {c['delta']:+.3f} "
                         f"[{c['ci_low']:+.3f}, {c['ci_high']:+.3f}]")
    return "\n".join(lines)
