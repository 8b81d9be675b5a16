"""The analysis behind summary.json: per variant, every shift pair's partial correlation.

Between-run results use each run's final checkpoint (or every checkpoint with
``points="all"``, still resampling whole runs); within-run (trajectory) results remove
each run's mean first, so they say how shifts move together *during* fine-tuning. The
two can differ in sign and are reported side by side.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import numpy as np

from common.accuracy_table import TORCH_VARIANT
from telemetry import drops, fragmentation, resampling, stats
from telemetry.config import AnalysisOptions
from telemetry.population import ID, Population, build_population, variants_in
from train.signal import signal_check

BASELINES = (TORCH_VARIANT, "onnx-fp32")


def _within_scaled(pop: Population, shifts: list[str], opts: AnalysisOptions) -> tuple[np.ndarray, np.ndarray]:
    """Shift columns and controls of run-demeaned trajectories (run fixed effects), with the chosen control.

    Every column is put on the analysis scale first (probit, ranks, spline basis) and then
    demeaned within each run, so ``--control`` means the same thing here as between runs.
    """
    cols, z = fragmentation.scaled(pop, shifts, opts)
    z = np.asarray(z, dtype=float)
    z = z[:, None] if z.ndim == 1 else z.copy()
    cols = cols.astype(float).copy()
    runs = np.array(pop.runs)
    for r in set(pop.runs):
        m = runs == r
        cols[m] -= cols[m].mean(axis=0)
        z[m] -= z[m].mean(axis=0)
    keep = z.std(axis=0) > 1e-12  # a basis column constant within every run carries nothing
    if not keep.any():
        raise stats.Undefined("in-domain accuracy does not move within runs: nothing to control for")
    return cols, z[:, keep]


def between_matrix(pop: Population, shifts: list[str], opts: AnalysisOptions) -> np.ndarray:
    return stats.partial_corr_matrix(*fragmentation.scaled(pop, shifts, opts))


def within_matrix(pop: Population, shifts: list[str], opts: AnalysisOptions) -> np.ndarray:
    return stats.partial_corr_matrix(*_within_scaled(pop, shifts, opts))


def boot_matrices(pops: list[Population], shifts: list[str], opts: AnalysisOptions, seed: int,
                  within: bool = False) -> np.ndarray:
    """(kept resamples) x len(pops) x m x m: every shift pair's statistic on the same resamples of runs.

    One resample gives every pair at once, so a report with many pairs costs little more
    than one with a single pair; where the populations allow it (fragmentation.stack) all
    resamples are one batched fit. ``pops`` hold the same points in the same order (a
    paired comparison resamples them together). ``within``: the run-demeaned statistic.
    """
    clusters = fragmentation.run_clusters(pops[0])
    picks = stats.cluster_picks(len(clusters), opts.n_boot, seed)
    stacks = [fragmentation.stack(p, shifts, opts) for p in pops]
    if all(s is not None for s in stacks):
        out = resampling.resample_matrices(stacks, picks, within)
    else:
        matrix = within_matrix if within else between_matrix
        out = np.full((len(picks), len(pops), len(shifts), len(shifts)), np.nan)
        for b, pick in enumerate(picks):
            chosen = [clusters[i] for i in pick]
            try:
                out[b] = [matrix(fragmentation.resampled(p, chosen), shifts, opts) for p in pops]
            except stats.StatsError:
                continue
    out = out[~np.isnan(out).any(axis=(1, 2, 3))]
    if len(out) < opts.n_boot // 2:
        raise stats.Undefined(f"the statistic was undefined on {opts.n_boot - len(out)} of {opts.n_boot} "
                              "bootstrap resamples")
    return out


def _undefined(exc: Exception) -> dict:
    return {"r": None, "r_partial": None, "ci_low": None, "ci_high": None, "p": None, "q": None,
            "undefined": str(exc)}


def _percentile(values: np.ndarray, opts: AnalysisOptions) -> tuple[float, float]:
    alpha = (1 - opts.level) / 2
    lo, hi = np.quantile(values, [alpha, 1 - alpha])
    return float(lo), float(hi)


def analyze_pairs(pop: Population, opts: AnalysisOptions, seed: int) -> list[dict]:
    """Every shift pair between runs: r, partial r, cluster-bootstrap CI, t, Fisher-z, Freedman-Lane p."""
    shifts = pop.shifts
    pairs = list(itertools.combinations(range(len(shifts)), 2))
    n_runs = len(pop.run_ids)
    try:
        est = between_matrix(pop, shifts, opts)
        boot = boot_matrices([pop], shifts, opts, seed)[:, 0]
    except stats.StatsError:  # a split without variance: each pair on its own says which
        return [analyze_pair(pop, shifts[i], shifts[j], opts, k) for k, (i, j) in enumerate(pairs)]
    out = []
    for k, (i, j) in enumerate(pairs):
        a, b = shifts[i], shifts[j]
        item: dict = {"shift_a": a, "shift_b": b}
        try:
            x, y, z = fragmentation.transformed(pop, a, b, opts)
            kz = stats.n_controls(z)
            item["r"] = stats.pearson(pop.accuracy(a), pop.accuracy(b))
            item["r_partial"] = float(est[i, j])
            item["ci_low"], item["ci_high"] = _percentile(boot[:, i, j], opts)
            item["t"], item["p"] = stats.t_test(item["r_partial"], n_runs, kz)
            item["df"] = n_runs - 2 - kz
            item["fisher_low"], item["fisher_high"] = stats.fisher_interval(item["r_partial"], n_runs, kz, opts.level)
            # Freedman-Lane on exactly the statistic reported (ranks already taken for spearman)
            item["p_permutation"] = stats.permutation_p(x, y, z, opts.n_perm, opts.seed + k) \
                if opts.points == "final" else None
            item["undefined"] = None
        except stats.StatsError as exc:
            item |= _undefined(exc)
        out.append(item)
    return out


def analyze_pair(pop: Population, a: str, b: str, opts: AnalysisOptions, k_index: int) -> dict:
    """One pair on its own (the path for populations where some split has no variance)."""
    n_runs = len(pop.run_ids)
    out: dict = {"shift_a": a, "shift_b": b}
    try:
        out["r"] = stats.pearson(pop.accuracy(a), pop.accuracy(b))
        x, y, z = fragmentation.transformed(pop, a, b, opts)
        r_p = stats.partial_corr(x, y, z)
        k = stats.n_controls(z)
        out["r_partial"] = r_p
        lo, hi, _ = stats.cluster_bootstrap(
            fragmentation.run_clusters(pop),
            lambda picks: fragmentation.partial(fragmentation.resampled(pop, picks), a, b, opts),
            opts.n_boot, opts.seed + k_index, opts.level)
        out["ci_low"], out["ci_high"] = lo, hi
        out["t"], out["p"] = stats.t_test(r_p, n_runs, k)
        out["df"] = n_runs - 2 - k
        out["fisher_low"], out["fisher_high"] = stats.fisher_interval(r_p, n_runs, k, opts.level)
        out["p_permutation"] = stats.permutation_p(x, y, z, opts.n_perm, opts.seed + k_index) \
            if opts.points == "final" else None
        out["undefined"] = None
    except stats.StatsError as exc:
        out |= _undefined(exc)
    return out


def analyze_within(pop_all: Population, opts: AnalysisOptions, seed: int) -> list[dict]:
    """Every shift pair within runs (trajectories), with a cluster-bootstrap interval."""
    shifts = pop_all.shifts
    pairs = [(shifts[i], shifts[j], i, j) for i, j in itertools.combinations(range(len(shifts)), 2)]
    per_run = {r: pop_all.runs.count(r) for r in pop_all.run_ids}
    try:
        if min(per_run.values(), default=0) < 2:
            raise stats.Undefined("fewer than 2 checkpoints per run: no trajectory")
        est = within_matrix(pop_all, shifts, opts)
        boot = boot_matrices([pop_all], shifts, opts, seed, within=True)[:, 0]
    except stats.StatsError as exc:
        return [{"shift_a": a, "shift_b": b} | _undefined(exc) for a, b, _, _ in pairs]
    return [{"shift_a": a, "shift_b": b, "r_partial": float(est[i, j]),
             **dict(zip(("ci_low", "ci_high"), _percentile(boot[:, i, j], opts))), "undefined": None}
            for a, b, i, j in pairs]


def analyze_variant(rows: list[dict], variant: str, opts: AnalysisOptions, pairs: list[tuple[str, str]],
                    seed_offset: int) -> dict:
    pop_final = build_population(rows, variant, "final", opts.measure)
    pop_all = build_population(rows, variant, "all", opts.measure)
    pop = pop_final if opts.points == "final" else pop_all
    n_runs = len(pop.run_ids)
    result: dict = {
        "n_runs": n_runs, "n_points": len(pop.runs), "points": opts.points,
        "accuracy": {s: float(pop_final.accuracy(s).mean()) for s in pop.splits},
        "signal": signal_check(rows, variant, opts.measure), "warning": stats.small_sample_warning(n_runs),
        "pairs": [], "within_run": [],
    }
    if n_runs < stats.MIN_RUNS:
        result["refused"] = result["warning"]
        return result
    result["fragmentation"] = fragmentation.variant_index(pop, pairs, opts, opts.seed + 31 * seed_offset)
    result["pairs"] = analyze_pairs(pop, opts, opts.seed + 101 * seed_offset)
    for p in result["pairs"]:
        # A pair with a signal-less shift is computed but never presented as a finding.
        p["low_signal"] = [s for s in (p["shift_a"], p["shift_b"]) if not result["signal"][s]["has_signal"]]
    qs = stats.bh_qvalues([p["p"] if p["p"] is not None else math.nan for p in result["pairs"]])
    for p, q in zip(result["pairs"], qs):
        p["q"] = None if math.isnan(q) else q
    result["within_run"] = analyze_within(pop_all, opts, opts.seed + 7919 + 101 * seed_offset)
    return result


def compare_pairs(pv: Population, pb: Population, opts: AnalysisOptions, seed: int) -> list[dict]:
    """Per shift pair: Δ partial r (variant − baseline) on the same (run, step) points, resampled in pairs.

    Detail beside the pre-registered index: percentile and BCa intervals, and a p-value from
    swapping the two variants' labels within runs; BH runs across these pairs as their own family.
    """
    pv, pb = fragmentation.paired(pv, pb)
    n_runs = len(pv.run_ids)
    shifts = [s for s in pv.shifts if s in pb.shifts]
    if n_runs < stats.MIN_RUNS:
        return []
    pairs = [(shifts[i], shifts[j], i, j) for i, j in itertools.combinations(range(len(shifts)), 2)]
    base = {"variant": pv.variant, "baseline": pb.variant, "n_runs": n_runs, "n_points": len(pv.runs)}

    def delta(pops):
        return between_matrix(pops[0], shifts, opts) - between_matrix(pops[1], shifts, opts)

    try:
        est = delta((pv, pb))
        boot = boot_matrices([pv, pb], shifts, opts, seed)
        boot = boot[:, 0] - boot[:, 1]
        clusters = fragmentation.run_clusters(pv)
        jack = np.array([delta((pv.take(keep), pb.take(keep))) for keep in
                         (np.concatenate([c for k, c in enumerate(clusters) if k != i]) for i in range(n_runs))])
        p = fragmentation.swap_p(fragmentation.swap_deltas(pv, pb, shifts, opts, opts.n_perm, seed + 1), est)
    except stats.StatsError as exc:
        return [base | {"shift_a": a, "shift_b": b, "delta": None, "ci_low": None, "ci_high": None, "p": None,
                        "undefined": str(exc)} for a, b, _, _ in pairs]
    out = []
    for a, b, i, j in pairs:
        item = base | {"shift_a": a, "shift_b": b, "delta": float(est[i, j])}
        item["ci_low"], item["ci_high"] = _percentile(boot[:, i, j], opts)
        try:
            item["ci_bca"] = list(stats.bca_interval(boot[:, i, j], item["delta"], jack[:, i, j], opts.level))
        except stats.StatsError:
            item["ci_bca"] = None
        item |= {"p_bootstrap": stats.bootstrap_p(boot[:, i, j], item["delta"]), "p": float(p[i, j]),
                 "undefined": None}
        out.append(item)
    return out


def _measure_available(rows: list[dict], measure: str) -> str | None:
    if measure == "digit" and any(not r.get("digit_total") for r in rows):
        return "this table has no per-digit counts (digit_correct, digit_total): the exact measure is used"
    return None


def analyze(rows: list[dict], opts: AnalysisOptions) -> dict:
    note = _measure_available(rows, opts.measure)
    if note:
        opts = replace(opts, measure="exact")
    variants = variants_in(rows)
    baseline = next((b for b in BASELINES if b in variants), None)
    # The pre-registered pairs: shifts with signal on the full-precision baseline, the same for every variant.
    base_signal = signal_check(rows, baseline, opts.measure) if baseline else {}
    with_signal = [s for s, v in base_signal.items() if s != ID and v["has_signal"]]
    pairs = fragmentation.signal_pairs(with_signal)
    summary = {"options": opts.__dict__, "measure": opts.measure, "measure_note": note, "baseline": baseline,
               "index_pairs": [list(p) for p in pairs], "shifts_with_signal": with_signal,
               "variants": {v: analyze_variant(rows, v, opts, pairs, i) for i, v in enumerate(variants)},
               "comparisons": [], "headline": [], "drops": []}
    if not baseline:
        return summary
    pb = build_population(rows, baseline, opts.points, opts.measure)
    for i, v in enumerate(x for x in variants if x != baseline):
        pv = build_population(rows, v, opts.points, opts.measure)
        d = fragmentation.delta_index(pv, pb, pairs, opts, opts.seed + 7 * i + 3)
        # runs the baseline has and this variant lacks (e.g. a failed export check): the Δ is on the rest, a
        # selection the reader must see, since the runs a variant fails on may be those where it differs most
        d["runs_missing"] = sorted(set(pb.run_ids) - set(pv.run_ids))
        d |= {"variant": v, "baseline": baseline, "noise_control": noise_control_of(v),
              "index": summary["variants"][v].get("fragmentation", {}).get("index"),
              "baseline_index": summary["variants"][baseline].get("fragmentation", {}).get("index")}
        summary["headline"].append(d)
        summary["comparisons"].extend(compare_pairs(pv, pb, opts, opts.seed + 104729 + 13 * i))
    fragmentation.with_qvalues(summary["headline"], opts)
    qs = stats.bh_qvalues([c["p"] if c.get("p") is not None else math.nan for c in summary["comparisons"]])
    for c, q in zip(summary["comparisons"], qs):
        c["q"] = None if math.isnan(q) else q
    final_b = build_population(rows, baseline, "final", opts.measure)
    for v in variants:
        if v != baseline:
            summary["drops"].extend(drops.accuracy_drops(build_population(rows, v, "final", opts.measure), final_b,
                                                         opts))
    drops.with_qvalues(summary["drops"])
    return summary


def noise_control_of(variant: str) -> str | None:
    """For a noise-matched control ``noise@<q>``, the quantized variant it stands beside."""
    return variant.split("@", 1)[1] if variant.startswith("noise@") else None
