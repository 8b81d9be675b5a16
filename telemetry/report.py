"""report.html (self-contained: images inlined as base64 PNG) and the terminal table.

The page leads with one line per variant (size and bits per parameter from the export
manifests beside the accuracy table, accuracy per split, the pre-registered answer); the
per-pair detail is collapsed below it. Every plot takes a variant's colour and marker from
one mapping (``variant_styles``), its titles from the options the analysis ran with, and
marks the same two flags as the tables: † a pair with a shift that carries no signal, ‡ an
interval and a p-value that disagree about 0.
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import json
import math
import statistics
import struct
import warnings
from pathlib import Path

import numpy as np

from common.accuracy_table import TORCH_VARIANT
from common.manifest import read_manifest
from telemetry import stats
from telemetry.population import ID, build_population

NO_SIGNAL = "†"
DISAGREE = "‡"
NOISE_PREFIX = "noise@"


def _fmt(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return f"{v:.{digits}f}"


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


# ---- the flags: a shift without signal (†), an interval and a p-value that disagree (‡) ---------------------------

def no_signal_shifts(summary: dict, variant: str, a: str, b: str) -> list[str]:
    """The shifts of the pair a × b that carry no signal (signal check) on the baseline or on the variant."""
    out = []
    for s in (a, b):
        for v in (summary.get("baseline"), variant):
            sig = summary["variants"].get(v, {}).get("signal", {}).get(s) if v else None
            if sig is not None and not sig.get("has_signal"):
                out.append(s)
                break
    return out


def disagreement(intervals: dict, p, alpha: float) -> str | None:
    """Where an interval excludes 0 and the p-value is not below alpha (or the reverse): what they say."""
    shown = {name: iv for name, iv in intervals.items() if iv and None not in iv}
    if p is None or not shown:
        return None
    significant = p < alpha
    excl = [name for name, iv in shown.items() if iv[0] > 0 or iv[1] < 0]
    incl = [name for name in shown if name not in excl]

    def which(names: list[str], verb: str) -> str:
        plural = len(names) > 1
        return f"the {' and '.join(names)} interval{'s' if plural else ''} {verb if plural else verb + 's'} 0"

    if significant and incl:
        return f"p = {p:.3g} < {alpha:g} but {which(incl, 'include')}"
    if not significant and excl:
        return f"{which(excl, 'exclude')} but p = {p:.3g} ≥ {alpha:g}"
    return None


def delta_disagreement(d: dict, alpha: float) -> str | None:
    """A Δ index (headline) or a per-pair Δ (comparisons): its intervals against its label-swap p."""
    if "ci_jackknife_t" in d:
        return disagreement({"BCa": d.get("ci_bca"), "jackknife-t": d.get("ci_jackknife_t")}, d.get("p"), alpha)
    return disagreement({"percentile": [d.get("ci_low"), d.get("ci_high")], "BCa": d.get("ci_bca")}, d.get("p"),
                        alpha)


def pair_disagreement(p: dict, alpha: float) -> str | None:
    return disagreement({"bootstrap": [p.get("ci_low"), p.get("ci_high")]}, p.get("p"), alpha)


DELTA_DISAGREE_NOTE = (
    f"{DISAGREE} The interval and the p-value disagree about 0. They measure different things: the interval "
    "resamples whole runs with replacement (a paired cluster bootstrap) and shows how much the Δ varies from one "
    "sample of runs to another; p swaps the two variants' labels within runs and asks how often a Δ this large "
    "arises when the two are interchangeable, a test that is exact at any number of runs, while a bootstrap "
    "interval can be too narrow at a few dozen runs. When they disagree, treat the row as inconclusive.")
PAIR_DISAGREE_NOTE = (
    f"{DISAGREE} The interval and the p-value disagree about 0. The interval is a cluster bootstrap of the partial r "
    "over runs; p is the t-test of the partial r (df = runs − 2 − controls), which assumes roughly normal "
    "residuals (summary.json also holds the Freedman–Lane permutation p, p_permutation). They measure different "
    "things; when they disagree, treat the pair as inconclusive.")
DROP_DISAGREE_NOTE = (
    f"{DISAGREE} The interval and the p-value disagree about 0: the interval is the percentile interval of the "
    "cluster bootstrap, p the same bootstrap shifted to the null; they differ only near the edge, where the row "
    "is inconclusive.")


def no_signal_note(summary: dict, what: str = "A shift of this pair") -> str:
    lacking = [s for s in summary["variants"].get(summary.get("baseline"), {}).get("signal", {})
               if s != ID and s not in summary.get("shifts_with_signal", [])]
    which = f" (on the baseline: {', '.join(lacking)})" if lacking else ""
    return (f"{NO_SIGNAL} {what} carries no signal{which}: runs barely differ on it beyond "
            "sampling noise (see the signal check), so the number is shown but is not a finding.")


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
    size = m.get("total_bytes") or sum(f["bytes"] for f in m["files"].values())
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


def _ordered_comparisons(summary: dict) -> list[dict]:
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


def build_comparisons(summary: dict):
    comps = [c for c in _ordered_comparisons(summary) if c.get("delta") is not None]
    if not comps:
        return None
    plt = _plt()
    from matplotlib.lines import Line2D

    styles = variant_styles(summary["variants"])
    fig, ax = plt.subplots(figsize=(7.5, 0.32 * len(comps) + 1.8))
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


def _ordered_headline(summary: dict) -> list[dict]:
    rank = {v: i for i, v in enumerate(ordered_variants(summary))}
    return sorted(summary.get("headline", []), key=lambda d: rank.get(d["variant"], len(rank)))


def build_headline(summary: dict):
    items = [d for d in _ordered_headline(summary) if d.get("delta") is not None]
    if not items:
        return None
    plt = _plt()
    styles = variant_styles(summary["variants"])
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(items) + 1.8))
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
    for d in _ordered_headline(summary):
        dis = delta_disagreement(d, alpha) if d.get("delta") is not None else None
        rows.append([d["variant"], _fmt(d.get("index")), d["n_runs"], _fmt(d.get("delta")), _ci(d.get("ci_bca")),
                     _ci(d.get("ci_jackknife_t")), _fmt(d.get("p"), 4), _fmt(d.get("q"), 4),
                     _fmt(d.get("p_tost"), 4), _fmt(d.get("min_detectable_delta")), d.get("runs_needed_for_0.1") or "—",
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
                         [[s, _fmt(v.get(m)), _fmt(acc.get(s)), _fmt(v.get("exact")), _fmt(v.get("digit"))]
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
            out.append([v, f"{p['shift_a']} × {p['shift_b']}", _fmt(p.get("r")), _fmt(p.get("r_partial")),
                        f"[{_fmt(p.get('ci_low'))}, {_fmt(p.get('ci_high'))}]", _fmt(p.get("p"), 4),
                        _fmt(p.get("q"), 4), "; ".join(notes)])
    return out


def comparison_rows(summary: dict) -> list[list]:
    return [[c["variant"], f"{c['shift_a']} × {c['shift_b']}", c["n_runs"], _fmt(c.get("delta")),
             f"[{_fmt(c.get('ci_low'))}, {_fmt(c.get('ci_high'))}]", _ci(c.get("ci_bca")), _fmt(c.get("p"), 4),
             _fmt(c.get("q"), 4), "; ".join(comparison_flags(summary, c))] for c in _ordered_comparisons(summary)]


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
        out.append([d["variant"], d["shift"], d["n_runs"], _fmt(d["drop_id"]), _fmt(d["drop_shift"]),
                    _fmt(d.get("excess")), f"[{_fmt(d.get('ci_low'))}, {_fmt(d.get('ci_high'))}]",
                    _fmt(d.get("p"), 4), _fmt(d.get("q"), 4), "; ".join(notes)])
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
    acc_rows = [[v, summary["variants"][v]["n_runs"], *(_fmt(a) for a in summary["variants"][v]["accuracy"].values())]
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
    sig_rows = [[v, s, _fmt(x["mean"]), _fmt(x["sd_across_runs"]), _fmt(x["binomial_se"]),
                 _fmt(x["spread_over_se"], 1), f"{x['share_at_0']:.0%}", f"{x['share_at_1']:.0%}",
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
                         f"{_fmt(p.get('r_partial'))} [{_fmt(p.get('ci_low'))}, {_fmt(p.get('ci_high'))}]",
                         f"{_fmt(w.get('r_partial'))} [{_fmt(w.get('ci_low'))}, {_fmt(w.get('ci_high'))}]"
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
