"""The report's figures: one colour and marker per variant (``variant_styles``), shared by every plot, and
the plots themselves (``build_*`` returns the matplotlib figure, ``fig_*`` the PNG inlined in the page),
titled from the options the analysis ran with and flagged as the tables are (``telemetry.flags``)."""

from __future__ import annotations

import base64
import html
import io
import math
import warnings

import numpy as np

from common.accuracy_table import TORCH_VARIANT
from telemetry import stats
from telemetry.flags import (
    DISAGREE,
    NO_SIGNAL,
    delta_disagreement,
    no_signal_shifts,
)
from telemetry.population import ID, build_population

NOISE_PREFIX = "noise@"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_title(fig) -> str:
    """The title a figure shows: its suptitle, else its axes' titles."""
    if fig.get_suptitle():
        return fig.get_suptitle()
    return "; ".join(t for t in (ax.get_title() for ax in fig.axes) if t)


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    alt = figure_title(fig).replace("\n", " ") or "figure"
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return (f'<figure><img alt="{html.escape(alt)}" '
            f'src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}"></figure>')


# ---- one colour and marker per variant, shared by every plot ---------------------------------------------------

# Fixed for the variants the export registry names, so a variant looks the same in every report; a noise-matched
# control noise@<q> takes <q>'s hue, lightened, and <q>'s marker, hollow.
_KNOWN_STYLES = {
    TORCH_VARIANT: ("#222222", "o"),
    "onnx-fp32": ("#ff7f0e", "+"),  # a line marker: visible on top of torch-fp32's discs where they coincide
    "ort-int8": ("#1f77b4", "s"),
    "ort-int8-all": ("#17becf", "D"),
    "ort-int4": ("#2ca02c", "^"),
    "ort-int4-all": ("#bcbd22", "v"),
    "ort-int2": ("#d62728", "X"),
    "sim-w3": ("#9467bd", "d"),
}
_SPARE_STYLES = [("#8c564b", "<"), ("#e377c2", ">"), ("#7f7f7f", "h"), ("#393b79", "*"), ("#637939", "p"),
                 ("#843c39", "8"), ("#5254a3", "H"), ("#8ca252", "P")]


def _noise_of(variant: str) -> str | None:
    return variant[len(NOISE_PREFIX):] if variant.startswith(NOISE_PREFIX) else None


def _lighten(color: str, amount: float = 0.45) -> str:
    from matplotlib.colors import to_hex, to_rgb

    return to_hex([c + (1 - c) * amount for c in to_rgb(color)])


def variant_styles(variants) -> dict[str, dict]:
    """variant -> {color, marker, filled}: the one mapping every plot of a report uses."""
    names = sorted(set(variants))
    bases = sorted({_noise_of(n) or n for n in names})
    spare = iter(_SPARE_STYLES * (1 + len(bases) // len(_SPARE_STYLES)))
    base_style = {b: _KNOWN_STYLES[b] if b in _KNOWN_STYLES else next(spare) for b in bases}
    out = {}
    for n in names:
        control_of = _noise_of(n)
        color, marker = base_style[control_of or n]
        out[n] = {"color": _lighten(color) if control_of else color, "marker": marker, "filled": control_of is None}
    return out


def ordered_variants(summary: dict) -> list[str]:
    """The baseline first, then each variant followed by its noise-matched control."""
    names = list(summary["variants"])
    base = summary.get("baseline")
    plain = sorted(n for n in names if n != base and not (_noise_of(n) and _noise_of(n) in names))
    out = [base] if base in names else []
    for n in plain:
        out.append(n)
        if NOISE_PREFIX + n in names:
            out.append(NOISE_PREFIX + n)
    return out + [n for n in names if n not in out]


def _marker_kw(style: dict, faded: bool = False) -> dict:
    hollow = not style["filled"] or faded
    return {"marker": style["marker"], "color": style["color"], "markeredgecolor": style["color"],
            "markerfacecolor": "white" if hollow else style["color"], "alpha": 0.4 if faded else 1.0}


# ---- the figures --------------------------------------------------------------------------------------------------

def build_accuracy(summary: dict):
    plt = _plt()
    variants = ordered_variants(summary)
    styles = variant_styles(summary["variants"])
    splits = list(summary["variants"][variants[0]]["accuracy"])
    fig, ax = plt.subplots(figsize=(max(7, 0.35 * len(splits) * max(1, len(variants))), 3.8))
    width = 0.8 / max(1, len(variants))
    centres = np.arange(len(splits))
    for i, v in enumerate(variants):
        acc = summary["variants"][v]["accuracy"]
        st = styles[v]
        ax.bar(centres + (i - (len(variants) - 1) / 2) * width, [acc.get(s, np.nan) for s in splits], width,
               label=v, color=st["color"], edgecolor="#333333", linewidth=0.4, hatch=None if st["filled"] else "//")
    ax.set_xticks(centres, splits)
    ax.set_ylabel(f"{summary.get('measure', 'exact')} accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(f"{summary.get('measure', 'exact')} accuracy per split, mean over runs (final checkpoints)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    return fig


def fig_accuracy(summary: dict) -> str:
    return _png(build_accuracy(summary))


def control_text(options: dict) -> str:
    """What the analysis controlled for, in words, from the options it ran with."""
    control = options["control"]
    what = {"linear": "a least-squares line in in-domain accuracy",
            "probit": "a line on the probit scale: probit of shift accuracy on probit of in-domain accuracy",
            "spline": f"a cubic B-spline of in-domain accuracy, df = {options.get('spline_df')}"}[control]
    if options.get("method") == "spearman":
        what = f"on ranks (Spearman): {what.replace('accuracy', 'rank')}"
    return f"{control} control ({what})"


def _control_fit(pop, shift: str, options: dict):
    """The in-domain → shift fit the partial correlation residualizes on, at each point, on the accuracy scale."""
    from scipy.special import ndtr

    acc_id, acc_s = pop.accuracy(ID), pop.accuracy(shift)
    try:
        if options.get("method") == "spearman":
            from scipy.stats import rankdata

            y, zr = rankdata(acc_s), rankdata(acc_id)
            z = stats.spline_basis(zr, options["spline_df"]) if options["control"] == "spline" else zr
        else:
            y = stats.transform_accuracy(options["control"], pop.correct[shift], pop.n[shift])
            z = stats.control_matrix(options["control"], pop.correct[ID], pop.n[ID], options["spline_df"])
    except stats.StatsError:
        return None
    design = np.column_stack([np.ones(len(y)), np.asarray(z, dtype=float).reshape(len(y), -1)])
    fitted = design @ np.linalg.lstsq(design, y, rcond=None)[0]
    if options.get("method") == "spearman":
        fitted = np.interp(fitted, np.sort(y), np.sort(acc_s))
    elif options["control"] == "probit":
        fitted = ndtr(fitted)
    order = np.argsort(acc_id, kind="stable")
    return acc_id[order], fitted[order]


def _scatter_kw(style: dict) -> dict:
    """Filled markers half transparent, hollow and line markers opaque: where points coincide, both show."""
    if style["marker"] in ("+", "x"):
        return {"marker": style["marker"], "color": style["color"], "s": 70, "linewidths": 1.4, "alpha": 1.0}
    return {"marker": style["marker"], "facecolors": style["color"] if style["filled"] else "none",
            "edgecolors": style["color"], "s": 26, "linewidths": 0.9, "alpha": 0.4 if style["filled"] else 0.9}


def _populations(rows: list[dict], summary: dict, points: str) -> dict:
    pops = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rows left out were reported by the analysis already
        for v in ordered_variants(summary):
            try:
                pops[v] = build_population(rows, v, points, summary.get("measure", "exact"))
            except ValueError:
                continue
    return pops


def coincident(pops: dict, splits: list[str]) -> dict[str, str]:
    """variant -> an earlier variant with exactly the same accuracies at exactly the same points."""
    out: dict[str, str] = {}
    names = list(pops)
    for i, v in enumerate(names):
        for u in names[:i]:
            a, b = pops[v], pops[u]
            if a.keys == b.keys and all(s in a.correct and s in b.correct and
                                        np.array_equal(a.accuracy(s), b.accuracy(s)) for s in splits):
                out[v] = out.get(u, u)
                break
    return out


def build_on_the_line(rows: list[dict], summary: dict):
    """In-domain vs shift accuracy per point, with the fit the analysis's control makes."""
    plt = _plt()
    options = summary["options"]
    styles = variant_styles(summary["variants"])
    pops = _populations(rows, summary, options["points"])
    first = summary["variants"][ordered_variants(summary)[0]]
    shifts = [s for s in first["accuracy"] if s != ID]
    same = coincident(pops, [ID, *shifts])
    ncols = min(2, len(shifts))
    nrows = max(1, math.ceil(len(shifts) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.6 * ncols, 4.2 * nrows + 0.8), squeeze=False,
                             layout="constrained")
    for ax in axes.flat[len(shifts):]:
        ax.set_visible(False)
    for ax, shift in zip(axes.flat, shifts):
        for z, (v, pop) in enumerate(pops.items()):
            if shift not in pop.correct:
                continue
            st = styles[v]
            label = v + (f" (same points as {same[v]})" if v in same else "")
            ax.scatter(pop.accuracy(ID), pop.accuracy(shift), label=label, zorder=3 + z, **_scatter_kw(st))
            fit = _control_fit(pop, shift, options)
            if fit is not None:
                # a variant on the same points as another has the same fit: dotted, so the one beneath shows
                ax.plot(*fit, color=st["color"], lw=1.2 if v in same else 1, zorder=2,
                        linestyle=":" if v in same else ("-" if st["filled"] else "--"))
        ax.set_xlabel("in-domain accuracy")
        ax.set_ylabel(f"{shift} accuracy")
        ax.set_title(shift)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(3, max(1, len(labels))), fontsize=9)
    points = "final checkpoint of each run" if options["points"] == "final" else "every checkpoint"
    fig.suptitle(f"in-domain vs shift accuracy ({points}, {summary.get('measure', 'exact')} measure)\n"
                 f"lines: the fit the partial correlations control for, {control_text(options)}", fontsize=11)
    return fig


def fig_on_the_line(rows: list[dict], summary: dict) -> str:
    return _png(build_on_the_line(rows, summary))


def build_pairs(summary: dict, key: str = "pairs", title: str = "partial correlation (between runs)"):
    """Each pair's partial r per variant: the variants side by side around the pair's tick."""
    plt = _plt()
    from matplotlib.lines import Line2D

    variants = ordered_variants(summary)
    styles = variant_styles(summary["variants"])
    pairs: list[tuple[str, str]] = []
    for v in variants:
        for p in summary["variants"][v].get(key, []):
            if (p["shift_a"], p["shift_b"]) not in pairs:
                pairs.append((p["shift_a"], p["shift_b"]))
    # a slot per variant with a point in this plot, centred on the pair's tick
    variants = [v for v in variants if any(p.get("r_partial") is not None for p in summary["variants"][v].get(key, []))]
    width = 0.8 / max(1, len(variants))
    fig, ax = plt.subplots(figsize=(max(7.0, 1.3 * len(pairs) + 2), 4.2))
    flagged_pairs = set()
    for vi, v in enumerate(variants):
        res = summary["variants"][v]
        labelled = False
        for p in res.get(key, []):
            pair = (p["shift_a"], p["shift_b"])
            if p.get("r_partial") is None:
                continue
            faded = bool(no_signal_shifts(summary, v, *pair))
            if faded:
                flagged_pairs.add(pair)
            x = pairs.index(pair) + (vi - (len(variants) - 1) / 2) * width
            r = p["r_partial"]
            eb = ax.errorbar(x, r, yerr=[[r - p["ci_low"]], [p["ci_high"] - r]], linestyle="none", capsize=2,
                             label=None if labelled else v, **_marker_kw(styles[v], faded))
            eb.lines[0].set_gid(f"{v}|{pair[0]}|{pair[1]}")
            labelled = True
    if not variants:
        reasons = [p.get("undefined") for res in summary["variants"].values() for p in res.get(key, [])]
        ax.text(0.5, 0.5, f"undefined: {next((r for r in reasons if r), 'no estimate')}", transform=ax.transAxes,
                ha="center", va="center", fontsize=9, color="#555555")
    for i in range(1, len(pairs)):
        ax.axvline(i - 0.5, color="#e4e4e4", lw=0.8, zorder=0)
    ax.axhline(0, color="grey", lw=0.8)
    # centred under the pair's slots, unrotated (a rotated label ends at its tick, beside the points)
    ax.set_xticks(range(len(pairs)), [f"{a} ×\n{b}" + (f" {NO_SIGNAL}" if (a, b) in flagged_pairs else "")
                                      for a, b in pairs], fontsize=8, rotation=0, ha="center")
    ax.set_xlim(-0.5, len(pairs) - 0.5)
    ax.set_ylim(-1.05, 1.05)
    ax.set_ylabel(f"partial r, {summary['options']['level']:.0%} cluster-bootstrap CI")
    ax.set_title(f"{title}; {control_text(summary['options'])}", fontsize=10)
    handles, labels = ax.get_legend_handles_labels()
    if flagged_pairs:
        handles.append(Line2D([], [], marker="o", linestyle="none", markerfacecolor="white", markeredgecolor="grey",
                              alpha=0.5))
        labels.append(f"{NO_SIGNAL} faded: a shift without signal")
    if handles:
        ax.legend(handles, labels, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    return fig


def fig_pairs(summary: dict, key: str = "pairs", title: str = "partial correlation (between runs)") -> str:
    return _png(build_pairs(summary, key, title))


def ordered_comparisons(summary: dict) -> list[dict]:
    rank = {v: i for i, v in enumerate(ordered_variants(summary))}
    return sorted(summary["comparisons"], key=lambda c: rank.get(c["variant"], len(rank)))


def comparison_flags(summary: dict, c: dict) -> list[str]:
    """The notes of one per-pair Δ row: undefined, † (a shift without signal), ‡ (interval vs p)."""
    notes = [c["undefined"]] if c.get("undefined") else []
    ns = no_signal_shifts(summary, c["variant"], c["shift_a"], c["shift_b"])
    if ns:
        notes.append(f"{NO_SIGNAL} no signal: {', '.join(ns)}")
    dis = delta_disagreement(c, summary["options"]["alpha"]) if c.get("delta") is not None else None
    if dis:
        notes.append(f"{DISAGREE} {dis}")
    return notes


def _forest(summary: dict, rows: int, width: float, row_height: float):
    """(figure, axes, variant styles) of a forest plot with one row per interval."""
    fig, ax = _plt().subplots(figsize=(width, row_height * rows + 1.8))
    return fig, ax, variant_styles(summary["variants"])


def build_comparisons(summary: dict):
    comps = [c for c in ordered_comparisons(summary) if c.get("delta") is not None]
    if not comps:
        return None
    fig, ax, styles = _forest(summary, len(comps), width=7.5, row_height=0.32)
    from matplotlib.lines import Line2D

    labels, seen, flags_used = [], set(), set()
    for i, c in enumerate(comps):
        v = c["variant"]
        marks = "".join(m for m, used in ((NO_SIGNAL, no_signal_shifts(summary, v, c["shift_a"], c["shift_b"])),
                                          (DISAGREE, delta_disagreement(c, summary["options"]["alpha"])))
                        if used)
        flags_used |= set(marks)
        eb = ax.errorbar(c["delta"], i, xerr=[[c["delta"] - c["ci_low"]], [c["ci_high"] - c["delta"]]],
                         linestyle="none", capsize=3, label=None if v in seen else v,
                         **_marker_kw(styles[v], NO_SIGNAL in marks))
        eb.lines[0].set_gid(f"{v}|{c['shift_a']}|{c['shift_b']}")
        seen.add(v)
        labels.append(f"{v}: {c['shift_a']} × {c['shift_b']}" + (f" {marks}" if marks else ""))
    ax.set_yticks(range(len(comps)), labels, fontsize=8)
    ax.set_ylim(len(comps) - 0.5, -0.5)
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_xlabel(f"Δ partial r vs {summary['baseline']} (paired cluster bootstrap, "
                  f"{summary['options']['level']:.0%} percentile CI)")
    ax.set_title(f"per-pair Δ partial r, quantized − {summary['baseline']}; {control_text(summary['options'])}",
                 fontsize=10)
    handles, names = ax.get_legend_handles_labels()
    if NO_SIGNAL in flags_used:
        handles.append(Line2D([], [], marker="o", linestyle="none", markerfacecolor="white", markeredgecolor="grey",
                              alpha=0.5))
        names.append(f"{NO_SIGNAL} faded: a shift without signal")
    if DISAGREE in flags_used:
        handles.append(Line2D([], [], linestyle="none"))
        names.append(f"{DISAGREE} interval and p disagree about 0")
    ax.legend(handles, names, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    return fig


def fig_comparisons(summary: dict) -> str:
    fig = build_comparisons(summary)
    if fig is None:
        return "<p>No quantized variant shares enough runs with the full-precision baseline yet.</p>"
    return _png(fig)


def ordered_headline(summary: dict) -> list[dict]:
    rank = {v: i for i, v in enumerate(ordered_variants(summary))}
    return sorted(summary.get("headline", []), key=lambda d: rank.get(d["variant"], len(rank)))


def build_headline(summary: dict):
    items = [d for d in ordered_headline(summary) if d.get("delta") is not None]
    if not items:
        return None
    fig, ax, styles = _forest(summary, len(items), width=8, row_height=0.45)
    bound = summary["options"]["bound"]
    ax.axvspan(-bound, bound, color="#e6f2e6", label=f"equivalence bound ±{bound:g}")
    labels = []
    for i, d in enumerate(items):
        lo, hi = d["ci_bca"]
        eb = ax.errorbar(d["delta"], i, xerr=[[d["delta"] - lo], [hi - d["delta"]]], linestyle="none", capsize=3,
                         **_marker_kw(styles[d["variant"]]))
        eb.lines[0].set_gid(d["variant"])
        ax.annotate(d["label"], (1.02, i), xycoords=("axes fraction", "data"), va="center", fontsize=8,
                    annotation_clip=False)
        dis = delta_disagreement(d, summary["options"]["alpha"])
        labels.append(d["variant"] + (f" {DISAGREE}" if dis else ""))
    ax.set_yticks(range(len(items)), labels, fontsize=8)
    ax.set_ylim(len(items) - 0.5, -0.5)
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_xlabel(f"Δ fragmentation index vs {summary['baseline']} (paired, BCa {summary['options']['level']:.0%} CI)")
    ax.set_title(f"Δ fragmentation index per variant; {control_text(summary['options'])}", fontsize=10)
    handles, names = ax.get_legend_handles_labels()
    if any(DISAGREE in label for label in labels):
        from matplotlib.lines import Line2D

        handles.append(Line2D([], [], linestyle="none"))
        names.append(f"{DISAGREE} interval and p disagree about 0")
    ax.legend(handles, names, fontsize=7, loc="lower left")
    return fig


def fig_headline(summary: dict) -> str:
    fig = build_headline(summary)
    return _png(fig) if fig is not None else ""
