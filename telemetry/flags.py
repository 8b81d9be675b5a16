"""The two flags the report's tables and figures share: † a pair with a shift that carries no signal,
‡ an interval and a p-value that disagree about 0 (with the notes that explain them)."""

from __future__ import annotations

import math

from telemetry.population import ID

NO_SIGNAL = "†"
DISAGREE = "‡"


def fmt(v, digits: int = 3) -> str:
    """A number for a table or a title; an em dash for a missing or undefined one."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return f"{v:.{digits}f}"


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
