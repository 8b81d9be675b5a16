"""report.html (self-contained: images inlined as base64 PNG) and the terminal table."""

from __future__ import annotations

import base64
import html
import io
import math

import numpy as np

from telemetry import stats
from telemetry.population import ID, build_population


def _fmt(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return f"{v:.{digits}f}"


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="figure" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def fig_accuracy(summary: dict) -> str:
    plt = _plt()
    variants = list(summary["variants"])
    splits = list(next(iter(summary["variants"].values()))["accuracy"])
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(splits) * max(1, len(variants)) / 2), 3.5))
    width = 0.8 / max(1, len(variants))
    for i, v in enumerate(variants):
        acc = summary["variants"][v]["accuracy"]
        ax.bar(np.arange(len(splits)) + i * width, [acc.get(s, np.nan) for s in splits], width, label=v)
    ax.set_xticks(np.arange(len(splits)) + width * (len(variants) - 1) / 2, splits)
    ax.set_ylabel(f"{summary.get('measure', 'exact')} accuracy (final checkpoints)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    return _png(fig)


def fig_on_the_line(rows: list[dict], summary: dict) -> str:
    """In-domain vs shift accuracy per run, with the least-squares fit on the probit scale."""
    from scipy.special import ndtr

    plt = _plt()
    first = next(iter(summary["variants"]))
    shifts = [s for s in summary["variants"][first]["accuracy"] if s != ID]
    fig, axes = plt.subplots(1, len(shifts), figsize=(4.2 * len(shifts), 3.8), squeeze=False, layout="constrained")
    for ax, shift in zip(axes[0], shifts):
        for v in summary["variants"]:
            pop = build_population(rows, v, "final", summary.get("measure", "exact"))
            if shift not in pop.correct:
                continue
            ax.scatter(pop.accuracy(ID), pop.accuracy(shift), s=14, label=v, alpha=0.75)
            px, py = stats.probit(pop.correct[ID], pop.n[ID]), stats.probit(pop.correct[shift], pop.n[shift])
            if np.ptp(px) > 0:
                slope, icept = np.polyfit(px, py, 1)
                grid = np.linspace(px.min(), px.max(), 50)
                ax.plot(ndtr(grid), ndtr(slope * grid + icept), lw=1)
        ax.set_xlabel("in-domain accuracy")
        ax.set_ylabel(f"{shift} accuracy")
        ax.set_title(shift)
    axes[0][0].legend(fontsize=7)
    fig.suptitle("accuracy on the line (fit on the probit scale)")
    return _png(fig)


def fig_pairs(summary: dict, key: str = "pairs", title: str = "partial correlation (between runs)") -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    labels: list[str] = []
    for vi, (v, res) in enumerate(summary["variants"].items()):
        labelled = False
        for p in res.get(key, []):
            label = f"{p['shift_a']} × {p['shift_b']}"
            if label not in labels:
                labels.append(label)
            if p.get("r_partial") is None:
                continue
            x = labels.index(label) + 0.8 * vi / max(1, len(summary["variants"]))
            ax.errorbar(x, p["r_partial"], yerr=[[p["r_partial"] - p["ci_low"]], [p["ci_high"] - p["r_partial"]]],
                        fmt="o", capsize=3, color=f"C{vi}", label=None if labelled else v)
            labelled = True
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_ylim(-1.05, 1.05)
    ax.set_ylabel("r (partial) with 95% bootstrap CI")
    ax.set_title(title)
    if ax.get_legend_handles_labels()[1]:
        ax.legend(fontsize=7)
    return _png(fig)


def fig_comparisons(summary: dict) -> str:
    comps = [c for c in summary["comparisons"] if c.get("delta") is not None]
    if not comps:
        return "<p>No quantized variant shares enough runs with the full-precision baseline yet.</p>"
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(comps) + 1.5))
    for i, c in enumerate(comps):
        ax.errorbar(c["delta"], i, xerr=[[c["delta"] - c["ci_low"]], [c["ci_high"] - c["delta"]]], fmt="o", capsize=3)
    ax.set_yticks(range(len(comps)), [f"{c['variant']}: {c['shift_a']} × {c['shift_b']}" for c in comps], fontsize=8)
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_xlabel(f"Δ partial r vs {summary['baseline']} (paired bootstrap 95% CI)")
    return _png(fig)


def _ci(ci) -> str:
    return f"[{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else "—"


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
    lines.append(f"fragmentation index = mean partial r over shift pairs with signal ({pairs}); "
                 f"measure: {summary.get('measure')}; control: {summary['options']['control']}")
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


def fig_headline(summary: dict) -> str:
    items = [d for d in summary.get("headline", []) if d.get("delta") is not None]
    if not items:
        return ""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(items) + 1.6))
    bound = summary["options"]["bound"]
    ax.axvspan(-bound, bound, color="#e6f2e6", label=f"equivalence bound ±{bound:g}")
    for i, d in enumerate(items):
        lo, hi = d["ci_bca"]
        color = "C3" if d["verdict"] == "changes fragmentation" else ("C2" if d["verdict"] == "equivalent" else "C7")
        ax.errorbar(d["delta"], i, xerr=[[d["delta"] - lo], [hi - d["delta"]]], fmt="o", capsize=3, color=color)
    ax.set_yticks(range(len(items)), [d["variant"] for d in items], fontsize=8)
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_xlabel(f"Δ fragmentation index vs {summary['baseline']} (paired, BCa 95% CI)")
    ax.legend(fontsize=7)
    return _png(fig)


def _table(headers: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def plain_language(summary: dict) -> str:
    parts = []
    for v, res in summary["variants"].items():
        if res.get("refused"):
            parts.append(f"<b>{html.escape(v)}</b>: {html.escape(res['refused'])}.")
            continue
        for p in res["pairs"]:
            if p.get("r_partial") is None:
                parts.append(f"<b>{html.escape(v)}</b>, {p['shift_a']} × {p['shift_b']}: undefined "
                             f"({html.escape(p['undefined'])}).")
                continue
            if p.get("low_signal"):
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
            parts.append(f"<b>{html.escape(v)}</b>, {p['shift_a']} × {p['shift_b']}: partial r = "
                         f"{p['r_partial']:.2f} [{p['ci_low']:.2f}, {p['ci_high']:.2f}] over {res['n_runs']} runs; "
                         f"{verdict}.")
        if res.get("warning"):
            parts.append(f"<i>Warning for {html.escape(v)}: {html.escape(res['warning'])}.</i>")
    parts.append("These are correlations across a population of fine-tuning runs of one base model on one "
                 "synthetic task: they say how shifts co-vary across the runs this sweep produced, not why, and "
                 "not how another base model or task would behave. Intervals resample whole runs; checkpoints of "
                 "one run are not independent.")
    return "".join(f"<p>{p}</p>" for p in parts)


CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.25em .6em;font-size:.9em}
th{background:#f3f3f3}img{max-width:100%}h2{margin-top:2em;border-bottom:1px solid #ddd}"""


def headline_table(summary: dict) -> str:
    rows = []
    for d in summary.get("headline", []):
        rows.append([d["variant"], _fmt(d.get("index")), d["n_runs"], _fmt(d.get("delta")), _ci(d.get("ci_bca")),
                     _ci(d.get("ci_jackknife_t")), _fmt(d.get("p"), 4), _fmt(d.get("q"), 4),
                     _fmt(d.get("p_tost"), 4), _fmt(d.get("min_detectable_delta")), d.get("runs_needed_for_0.1") or "—",
                     d["label"]])
    return _table(["variant", "index", "runs", "Δ index", "95% BCa", "95% jackknife-t", "p (label swaps)", "q (BH)",
                   "TOST p", "smallest detectable Δ (80% power)", "runs for Δ = 0.1", "verdict"], rows) if rows else ""


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
                         [[s, _fmt(v.get(m)), _fmt(acc.get(s)), _fmt(v.get("exact")), _fmt(v.get("digit"))]
                          for s, v in before.items()]))
    return "".join(parts)


def render_html(summary: dict, rows: list[dict], source: str) -> str:
    opts = summary["options"]
    measure = {"digit": "per-digit accuracy (share of answer digits right)",
               "exact": "exact-match accuracy"}[summary.get("measure", "exact")]
    sections = [f"<h1>fracture report</h1><p>Source: <code>{html.escape(source)}</code>. Measure: <b>{measure}</b>"
                f"{' (' + html.escape(summary['measure_note']) + ')' if summary.get('measure_note') else ''}. "
                f"Control for in-domain accuracy: <b>{opts['control']}</b>; points: <b>{opts['points']}</b>; "
                f"{opts['n_boot']} cluster-bootstrap resamples of runs; method: {opts['method']}.</p>"]
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
    sections.append("<h2>What the numbers show</h2>" + plain_language(summary))
    sections.append("<h2>Accuracy per shift, by variant</h2>" + fig_accuracy(summary))
    acc_rows = [[v, res["n_runs"], *(_fmt(a) for a in res["accuracy"].values())]
                for v, res in summary["variants"].items()]
    first = next(iter(summary["variants"].values()))
    sections.append(_table(["variant", "runs", *first["accuracy"]], acc_rows))
    sections.append("<h2>In-domain vs shift accuracy</h2>" + fig_on_the_line(rows, summary))
    sections.append("<h2>Partial correlations</h2>" + fig_pairs(summary))
    pair_rows = [[v, f"{p['shift_a']} × {p['shift_b']}", _fmt(p.get("r")), _fmt(p.get("r_partial")),
                  f"[{_fmt(p.get('ci_low'))}, {_fmt(p.get('ci_high'))}]", _fmt(p.get("p"), 4), _fmt(p.get("q"), 4),
                  p.get("undefined") or (f"no signal: {', '.join(p['low_signal'])}" if p.get("low_signal") else "")]
                 for v, res in summary["variants"].items() for p in res["pairs"]]
    sections.append(_table(["variant", "pair", "r", "partial r", "95% CI", "p", "q (BH)", "note"], pair_rows))
    sections.append("<h2>Full precision vs quantized</h2>" + fig_comparisons(summary))
    comp_rows = [[c["variant"], f"{c['shift_a']} × {c['shift_b']}", c["n_runs"], _fmt(c.get("delta")),
                  f"[{_fmt(c.get('ci_low'))}, {_fmt(c.get('ci_high'))}]", _ci(c.get("ci_bca")), _fmt(c.get("p"), 4),
                  _fmt(c.get("q"), 4), c.get("undefined") or ""]
                 for c in summary["comparisons"]]
    sections.append("<p>Per pair (detail; BH across these pairs as their own family, never a verdict):</p>"
                    + _table(["variant", "pair", "runs", f"Δ vs {summary.get('baseline')}", "95% percentile CI",
                              "95% BCa CI", "p", "q", "note"], comp_rows) if comp_rows else "")
    sections.append("<h2>Accuracy drops, paired</h2><p>Per run, the full-precision minus quantized accuracy on each "
                    "shift, less the drop the in-domain drop predicts along the baseline's accuracy-on-the-line "
                    "slope; averaged over runs. Positive: quantization hurts this shift more than in-domain "
                    "accuracy explains.</p>" + _table(
                        ["variant", "shift", "runs", "drop in-domain", "drop on shift", "excess drop", "95% CI", "p",
                         "q (BH)"],
                        [[d["variant"], d["shift"], d["n_runs"], _fmt(d["drop_id"]), _fmt(d["drop_shift"]),
                          _fmt(d.get("excess")), f"[{_fmt(d.get('ci_low'))}, {_fmt(d.get('ci_high'))}]",
                          _fmt(d.get("p"), 4), _fmt(d.get("q"), 4)] for d in summary.get("drops", [])]))
    sections.append("<h2>Signal check per shift</h2><p>A shift where runs sit at 0 or 1, or whose across-run "
                    "spread is not above the binomial standard error, carries no signal.</p>")
    sig_rows = [[v, s, _fmt(x["mean"]), _fmt(x["sd_across_runs"]), _fmt(x["binomial_se"]),
                 _fmt(x["spread_over_se"], 1), f"{x['share_at_0']:.0%}", f"{x['share_at_1']:.0%}"]
                for v, res in summary["variants"].items() for s, x in res["signal"].items()]
    sections.append(_table(["variant", "split", "mean", "sd across runs", "binomial SE", "sd/SE", "at 0", "at 1"],
                           sig_rows))
    sections.append("<h2>Between runs vs within runs (trajectories)</h2><p>Between: final checkpoints across "
                    "runs. Within: checkpoints of each run with the run's mean removed (how shifts move together "
                    "during fine-tuning). They can differ in sign.</p>")
    side = []
    for v, res in summary["variants"].items():
        within = {(w["shift_a"], w["shift_b"]): w for w in res.get("within_run", [])}
        for p in res["pairs"]:
            w = within.get((p["shift_a"], p["shift_b"]), {})
            side.append([v, f"{p['shift_a']} × {p['shift_b']}",
                         f"{_fmt(p.get('r_partial'))} [{_fmt(p.get('ci_low'))}, {_fmt(p.get('ci_high'))}]",
                         f"{_fmt(w.get('r_partial'))} [{_fmt(w.get('ci_low'))}, {_fmt(w.get('ci_high'))}]"
                         if w.get("r_partial") is not None else (w.get("undefined") or "—")])
    sections.append(_table(["variant", "pair", "between runs", "within runs"], side))
    sections.append(fig_pairs(summary, "within_run", "partial correlation (within runs)"))
    return f"<!doctype html><html><head><meta charset='utf-8'><title>fracture report</title><style>{CSS}</style>" \
           f"</head><body>{''.join(sections)}</body></html>"


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
