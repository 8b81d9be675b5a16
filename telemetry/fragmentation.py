"""The pre-registered answer: one fragmentation index per variant and its paired change.

Defined here, in code, before any data is looked at (docs/design.md, The statistics):

- **Fragmentation index** of a population: the mean, over every pair of shifts that carries
  signal on the full-precision baseline, of the partial correlation between the two shifts'
  accuracies controlling for in-domain accuracy. High: a run that beats its in-domain
  prediction on one shift tends to beat it on the others (generalization moves as one
  piece). Lower: more fragmented. The pairs are fixed by the baseline, so every variant is
  measured on the same pairs.
- **Δ index** = index(variant) − index(baseline), on the same (run, step) points. Its
  uncertainty comes from a paired cluster bootstrap over runs (BCa interval) and, as a
  second method, a jackknife over runs (t interval, n_runs − 1 df). p-value: a permutation
  test that swaps the two variants' labels within runs (exact under exchangeability; the
  bootstrap's own p, also reported, was liberal at 24 runs: 8% at α = 0.05).
- **Verdict**, with q the Benjamini–Hochberg q-value across every variant's Δ index:
  "changes fragmentation" when q < α and both intervals exclude 0; "equivalent within
  ±bound" when the TOST p < α and the (1 − 2α) bootstrap interval lies inside ±bound;
  otherwise "inconclusive at this n", with the smallest Δ detectable at 80% power.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import numpy as np

from telemetry import resampling, stats
from telemetry.config import AnalysisOptions
from telemetry.population import ID, Population

CHANGES, EQUIVALENT, INCONCLUSIVE = "changes fragmentation", "equivalent", "inconclusive"
POWER = 0.8
TARGET_DELTA = 0.1  # the runs-needed figure is for a Δ index of this size


def signal_pairs(shifts_with_signal: list[str]) -> list[tuple[str, str]]:
    return list(itertools.combinations(sorted(shifts_with_signal), 2))


def transformed(pop: Population, a: str, b: str, opts: AnalysisOptions):
    """(x, y, controls) on the analysis scale, for the Pearson statistic the report shows.

    Spearman ranks x, y and the in-domain accuracy *before* the control is built from it,
    so a spline control is a basis of the ranks, never ranks of basis columns.
    """
    if opts.method == "spearman":
        from scipy.stats import rankdata

        x, y = rankdata(pop.accuracy(a)), rankdata(pop.accuracy(b))
        ranked_id = rankdata(pop.accuracy(ID))
        z = stats.spline_basis(ranked_id, opts.spline_df) if opts.control == "spline" else ranked_id
        return x, y, z
    x = stats.transform_accuracy(opts.control, pop.correct[a], pop.n[a])
    y = stats.transform_accuracy(opts.control, pop.correct[b], pop.n[b])
    z = stats.control_matrix(opts.control, pop.correct[ID], pop.n[ID], opts.spline_df)
    return x, y, z


def partial(pop: Population, a: str, b: str, opts: AnalysisOptions) -> float:
    x, y, z = transformed(pop, a, b, opts)
    return stats.partial_corr(x, y, z)


def scaled(pop: Population, shifts: list[str], opts: AnalysisOptions) -> tuple[np.ndarray, np.ndarray]:
    """(n x m shift columns, controls) on the analysis scale: the same transform as ``transformed``."""
    if opts.method == "spearman":
        from scipy.stats import rankdata

        cols = np.column_stack([rankdata(pop.accuracy(s)) for s in shifts])
        ranked_id = rankdata(pop.accuracy(ID))
        return cols, stats.spline_basis(ranked_id, opts.spline_df) if opts.control == "spline" else ranked_id
    cols = np.column_stack([stats.transform_accuracy(opts.control, pop.correct[s], pop.n[s]) for s in shifts])
    return cols, stats.control_matrix(opts.control, pop.correct[ID], pop.n[ID], opts.spline_df)


def index(pop: Population, pairs: list[tuple[str, str]], opts: AnalysisOptions) -> float:
    """Mean partial correlation over the pairs (StatsError if any pair is undefined)."""
    shifts, rows, cols = _positions(pairs)
    return float(stats.partial_corr_matrix(*scaled(pop, shifts, opts))[rows, cols].mean())


def run_clusters(pop: Population) -> list[np.ndarray]:
    runs = np.array(pop.runs)
    return [np.where(runs == r)[0] for r in pop.run_ids]


_LABELS = [str(i) for i in range(4096)]  # cluster labels of resamples, made once (a resample is cheap)


def resampled(pop: Population, picks: list[np.ndarray]) -> Population:
    """A bootstrap population; a run drawn twice enters as two distinct clusters."""
    out = pop.take(np.concatenate(picks))
    labels = _LABELS if len(picks) <= len(_LABELS) else [str(i) for i in range(len(picks))]
    out.runs = [labels[i] for i, p in enumerate(picks) for _ in range(len(p))]
    return out


def stack(pop: Population, shifts: list[str], opts: AnalysisOptions) -> resampling.Stack | None:
    """``pop`` laid out for batched resampling, or None where a resample must be re-scaled as a whole
    (spearman ranks, spline knots) or runs hold different numbers of points: then callers loop."""
    if opts.method != "pearson" or opts.control == "spline":
        return None
    groups = run_clusters(pop)
    if len({len(g) for g in groups}) != 1:
        return None
    cols, z = scaled(pop, shifts, opts)
    return resampling.Stack(cols.astype(float), np.asarray(z, dtype=float).reshape(-1), np.stack(groups))


def _positions(pairs: list[tuple[str, str]]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The shifts ``index`` computes a matrix over, and each pair's (row, column) in it."""
    if not pairs:
        raise stats.Undefined("fewer than 2 shifts carry signal: no pair to average")
    shifts = sorted({s for p in pairs for s in p})
    where = {s: i for i, s in enumerate(shifts)}
    return shifts, np.array([where[a] for a, _ in pairs]), np.array([where[b] for _, b in pairs])


def index_batch(pops: list[Population], pairs: list[tuple[str, str]], opts: AnalysisOptions):
    """picks (B, k) -> (B, len(pops)) index values on those resamples of runs (NaN: undefined), or None
    where the populations need the loop (see ``stack``)."""
    shifts, rows, cols = _positions(pairs)
    stacks = [stack(p, shifts, opts) for p in pops]
    if any(s is None for s in stacks):
        return None
    return lambda picks: resampling.resample_matrices(stacks, picks)[..., rows, cols].mean(axis=-1)


def uncertainty(clusters: list, statistic: Callable[[list], float], estimate: float, opts: AnalysisOptions,
                seed: int, batch: Callable[[np.ndarray], np.ndarray] | None = None) -> dict:
    """Cluster-bootstrap (percentile and BCa) and jackknife-t intervals of one statistic.

    ``batch``, where given, computes the statistic on a (B, k) array of cluster picks at once
    (NaN where undefined); it sees the same resamples as the loop over ``statistic``.
    """
    n = len(clusters)
    if batch is not None:
        boot = stats.kept_resamples(batch(stats.cluster_picks(n, opts.n_boot, seed)), opts.n_boot)
        jack = stats.jackknife_checked(batch(stats.jackknife_picks(n)))
    else:
        boot = stats.cluster_bootstrap_values(clusters, statistic, opts.n_boot, seed)
        jack = stats.jackknife(clusters, statistic)
    se = stats.jackknife_se(jack)
    alpha = (1 - opts.level) / 2
    lo, hi = np.quantile(boot, [alpha, 1 - alpha])
    out = {"estimate": estimate, "n_runs": n, "boot_kept": len(boot), "se_jackknife": se,
           "ci_percentile": [float(lo), float(hi)],
           "ci_bca": list(stats.bca_interval(boot, estimate, jack, opts.level)),
           "p_bootstrap": stats.bootstrap_p(boot, estimate)}
    # the (1 - 2 alpha) intervals TOST reads: a two one-sided test at alpha each
    tost_level = 1 - 2 * opts.alpha
    out["ci_bca_tost"] = list(stats.bca_interval(boot, estimate, jack, tost_level))
    if se > 0:
        out["ci_jackknife_t"] = list(stats.t_interval(estimate, se, n - 1, opts.level))
        out["ci_jackknife_t_tost"] = list(stats.t_interval(estimate, se, n - 1, tost_level))
        out["p_tost"] = stats.tost_p(estimate, se, n - 1, opts.bound)
    else:  # the statistic is the same on every leave-one-run-out sample (e.g. identical answers)
        out["ci_jackknife_t"] = out["ci_jackknife_t_tost"] = [estimate, estimate]
        out["p_tost"] = 0.0 if abs(estimate) < opts.bound else 1.0
    return out


def variant_index(pop: Population, pairs: list[tuple[str, str]], opts: AnalysisOptions, seed: int) -> dict:
    try:
        est = index(pop, pairs, opts)
        batch = index_batch([pop], pairs, opts)
        res = uncertainty(run_clusters(pop), lambda picks: index(resampled(pop, picks), pairs, opts), est, opts,
                          seed, batch and (lambda picks: batch(picks)[:, 0]))
        return {"index": est, "pairs": [list(p) for p in pairs], **res, "undefined": None}
    except stats.StatsError as exc:
        return {"index": None, "pairs": [list(p) for p in pairs], "undefined": str(exc)}


def paired(pv: Population, pb: Population) -> tuple[Population, Population]:
    """Both populations on their common (run, step) points, in the same order."""
    from telemetry.population import common_points

    keys = common_points(pv, pb)
    return pv.restricted_to(keys), pb.restricted_to(keys)


def delta_index(pv: Population, pb: Population, pairs: list[tuple[str, str]], opts: AnalysisOptions,
                seed: int) -> dict:
    """Δ index (variant − baseline) over the (run, step) points both share, resampled in pairs."""
    pv, pb = paired(pv, pb)
    n_runs = len(pv.run_ids)
    out: dict = {"n_runs": n_runs, "n_points": len(pv.runs)}
    if n_runs < stats.MIN_RUNS:
        return out | {"delta": None, "undefined": stats.small_sample_warning(n_runs)}
    clusters = run_clusters(pv)  # identical in pb: same points, same order

    def delta(picks):
        return index(resampled(pv, picks), pairs, opts) - index(resampled(pb, picks), pairs, opts)

    try:
        est = index(pv, pairs, opts) - index(pb, pairs, opts)
        batch = index_batch([pv, pb], pairs, opts)
        res = uncertainty(clusters, delta, est, opts, seed, batch and (lambda picks: np.subtract(*batch(picks).T)))
        shifts, rows, cols = _positions(pairs)
        swaps = swap_deltas(pv, pb, shifts, opts, opts.n_perm, seed + 1)[:, rows, cols].mean(axis=-1)
        res["p"] = float(swap_p(swaps, np.float64(est)))
    except stats.StatsError as exc:
        return out | {"delta": None, "undefined": str(exc)}
    se = res["se_jackknife"]
    res["min_detectable_delta"] = stats.min_detectable_effect(se, opts.alpha, POWER)
    res["runs_needed_for_0.1"] = stats.runs_needed(se, n_runs, TARGET_DELTA, opts.alpha, POWER) if se > 0 else None
    return out | {"delta": est, **res, "undefined": None}


def swap_deltas(pv: Population, pb: Population, shifts: list[str], opts: AnalysisOptions, n_perm: int,
                seed: int) -> np.ndarray:
    """(kept swaps, m, m): variant − baseline partial-correlation matrices after each of ``n_perm`` swaps
    of the two variants' labels on a random half of the runs (a run's points travel together).

    Under the null that the variant and full precision are exchangeable run by run, every
    swap is as likely as the observed labelling, so ``swap_p`` of these is exact at any n
    (the bootstrap and jackknife intervals are not, at a few dozen runs). Swaps on which a
    matrix is undefined are dropped; Undefined when more than half are.
    """
    rng = np.random.default_rng(seed)
    flips = rng.random((n_perm, len(pv.run_ids))) < 0.5
    sv, sb = stack(pv, shifts, opts), stack(pb, shifts, opts)
    if sv is not None and sb is not None:
        mats = resampling.swap_matrices(sv, sb, flips)
        deltas = mats[:, 0] - mats[:, 1]
    else:
        runs, run_ids = np.array(pv.runs), np.asarray(pv.run_ids)
        deltas = np.full((n_perm, len(shifts), len(shifts)), np.nan)
        for k, flip in enumerate(flips):
            mask = np.isin(runs, run_ids[flip])
            try:
                deltas[k] = (stats.partial_corr_matrix(*scaled(swapped(pv, pb, mask), shifts, opts))
                             - stats.partial_corr_matrix(*scaled(swapped(pb, pv, mask), shifts, opts)))
            except stats.StatsError:
                continue
    kept = deltas[~np.isnan(deltas).any(axis=(1, 2))]
    if len(kept) < n_perm // 2:
        raise stats.Undefined(f"the Δ was undefined on {n_perm - len(kept)} of {n_perm} label swaps")
    return kept


def swap_p(swaps: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """Two-sided permutation p of each observed Δ: (1 + #{|Δ*| ≥ |Δ|}) / (swaps + 1)."""
    return (1 + np.sum(np.abs(swaps) >= np.abs(observed) - 1e-12, axis=0)) / (len(swaps) + 1)


def swapped(keep: Population, other: Population, mask: np.ndarray) -> Population:
    """``keep`` with the masked points taken from ``other`` (the same points, in the same order)."""
    out = keep.take(np.arange(len(keep.runs)))
    for s in out.splits:
        out.correct[s] = np.where(mask, other.correct[s], keep.correct[s])
        out.n[s] = np.where(mask, other.n[s], keep.n[s])
    return out


def _excludes_zero(ci) -> bool:
    return ci[0] > 0 or ci[1] < 0


def verdict(d: dict, q: float | None, opts: AnalysisOptions) -> dict:
    """The headline for one Δ: changes / equivalent / inconclusive, and why."""
    if d.get("delta") is None:
        return {"verdict": INCONCLUSIVE, "why": d.get("undefined") or "undefined"}
    if q is not None and q < opts.alpha and _excludes_zero(d["ci_bca"]) and _excludes_zero(d["ci_jackknife_t"]):
        return {"verdict": CHANGES, "why": f"q = {q:.3g} < {opts.alpha} and the BCa and jackknife-t intervals "
                                           "both exclude 0"}
    inside = all(-opts.bound < v < opts.bound for v in (*d["ci_bca_tost"], *d["ci_jackknife_t_tost"]))
    if d.get("p_tost") is not None and d["p_tost"] < opts.alpha and inside:
        return {"verdict": EQUIVALENT, "why": f"TOST p = {d['p_tost']:.3g} < {opts.alpha}: the {1 - 2 * opts.alpha:.0%}"
                                              f" intervals lie inside ±{opts.bound}"}
    why = []
    if q is not None and q >= opts.alpha:
        why.append(f"q = {q:.3g}")
    elif q is not None:
        why.append("the interval methods disagree on excluding 0")
    why.append(f"smallest Δ detectable at {POWER:.0%} power with {d['n_runs']} runs: {d['min_detectable_delta']:.3f}")
    if d.get("runs_needed_for_0.1"):
        why.append(f"a Δ of {TARGET_DELTA} would need about {d['runs_needed_for_0.1']} runs")
    return {"verdict": INCONCLUSIVE, "why": "; ".join(why)}


def label(v: dict, opts: AnalysisOptions, n_runs: int) -> str:
    """The verdict as a user reads it."""
    return {CHANGES: "changes fragmentation", EQUIVALENT: f"equivalent within ±{opts.bound:g}",
            INCONCLUSIVE: f"inconclusive at n = {n_runs}"}[v["verdict"]]


def with_qvalues(deltas: list[dict], opts: AnalysisOptions) -> None:
    """Benjamini–Hochberg across every Δ index, then each one's verdict (in place)."""
    qs = stats.bh_qvalues([d["p"] if d.get("delta") is not None else math.nan for d in deltas])
    for d, q in zip(deltas, qs):
        d["q"] = None if math.isnan(q) else q
        d |= verdict(d, d["q"], opts)
        d["label"] = label(d, opts, d["n_runs"])
