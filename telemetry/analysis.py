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

from telemetry import drops, fragmentation, stats
from telemetry.config import AnalysisOptions
from telemetry.population import ID, Population, build_population, variants_in
from train.signal import signal_check

BASELINES = ("torch-fp32", "onnx-fp32")


def _within(pop: Population, a: str, b: str, opts: AnalysisOptions) -> float:
    """Partial correlation of run-demeaned trajectories (run fixed effects), with the chosen control.

    x, y and every control column are put on the analysis scale first (probit, ranks, spline
    basis) and then demeaned within each run, so ``--control`` means the same thing here as
    between runs.
    """
    x, y, z = fragmentation.transformed(pop, a, b, opts)
    z = np.asarray(z, dtype=float)
    z = z[:, None] if z.ndim == 1 else z.copy()
    runs = np.array(pop.runs)
    x, y = x.astype(float).copy(), y.astype(float).copy()
    for r in set(pop.runs):
        m = runs == r
        x[m] -= x[m].mean()
        y[m] -= y[m].mean()
        z[m] -= z[m].mean(axis=0)
    keep = z.std(axis=0) > 1e-12  # a basis column constant within every run carries nothing
    if not keep.any():
        raise stats.Undefined("in-domain accuracy does not move within runs: nothing to control for")
    return stats.partial_corr(x, y, z[:, keep])


def _interval(pop: Population, fn, opts: AnalysisOptions, seed_offset: int) -> tuple[float, float]:
    clusters = fragmentation.run_clusters(pop)
    lo, hi, _ = stats.cluster_bootstrap(clusters, lambda picks: fn(fragmentation.resampled(pop, picks)),
                                        opts.n_boot, opts.seed + seed_offset, opts.level)
    return lo, hi


def _undefined(exc: Exception) -> dict:
    return {"r": None, "r_partial": None, "ci_low": None, "ci_high": None, "p": None, "q": None,
            "undefined": str(exc)}


def analyze_pair(pop: Population, a: str, b: str, opts: AnalysisOptions, k_index: int) -> dict:
    n_runs = len(pop.run_ids)
    out: dict = {"shift_a": a, "shift_b": b}
    try:
        out["r"] = stats.pearson(pop.accuracy(a), pop.accuracy(b))
        x, y, z = fragmentation.transformed(pop, a, b, opts)
        r_p = stats.partial_corr(x, y, z)
        k = stats.n_controls(z)
        out["r_partial"] = r_p
        out["ci_low"], out["ci_high"] = _interval(pop, lambda p: fragmentation.partial(p, a, b, opts), opts,
                                                  k_index)
        out["t"], out["p"] = stats.t_test(r_p, n_runs, k)
        out["df"] = n_runs - 2 - k
        out["fisher_low"], out["fisher_high"] = stats.fisher_interval(r_p, n_runs, k, opts.level)
        # Freedman-Lane on exactly the statistic reported (ranks already taken for spearman)
        out["p_permutation"] = stats.permutation_p(x, y, z, opts.n_perm, opts.seed + k_index) \
            if opts.points == "final" else None
        out["undefined"] = None
    except stats.StatsError as exc:
        out |= _undefined(exc)
    return out


def analyze_within(pop_all: Population, a: str, b: str, opts: AnalysisOptions, k_index: int) -> dict:
    out: dict = {"shift_a": a, "shift_b": b}
    per_run = {r: pop_all.runs.count(r) for r in pop_all.run_ids}
    if min(per_run.values(), default=0) < 2:
        return out | _undefined(stats.Undefined("fewer than 2 checkpoints per run: no trajectory"))
    try:
        out["r_partial"] = _within(pop_all, a, b, opts)
        out["ci_low"], out["ci_high"] = _interval(pop_all, lambda p: _within(p, a, b, opts), opts, 7919 + k_index)
        out["undefined"] = None
    except stats.StatsError as exc:
        out |= _undefined(exc)
    return out


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
    all_pairs = list(itertools.combinations(pop.shifts, 2))
    result["pairs"] = [analyze_pair(pop, a, b, opts, i) for i, (a, b) in enumerate(all_pairs)]
    for p in result["pairs"]:
        # A pair with a signal-less shift is computed but never presented as a finding.
        p["low_signal"] = [s for s in (p["shift_a"], p["shift_b"]) if not result["signal"][s]["has_signal"]]
    qs = stats.bh_qvalues([p["p"] if p["p"] is not None else math.nan for p in result["pairs"]])
    for p, q in zip(result["pairs"], qs):
        p["q"] = None if math.isnan(q) else q
    result["within_run"] = [analyze_within(pop_all, a, b, opts, i) for i, (a, b) in enumerate(all_pairs)]
    return result


def compare_pairs(pv: Population, pb: Population, opts: AnalysisOptions) -> list[dict]:
    """Per shift pair: Δ partial r (variant − baseline) on the same (run, step) points, paired bootstrap."""
    pv, pb = fragmentation.paired(pv, pb)
    n_runs = len(pv.run_ids)
    if n_runs < stats.MIN_RUNS:
        return []
    out = []
    clusters = fragmentation.run_clusters(pv)
    for i, (a, b) in enumerate(itertools.combinations([s for s in pv.shifts if s in pb.shifts], 2)):
        item = {"variant": pv.variant, "baseline": pb.variant, "shift_a": a, "shift_b": b, "n_runs": n_runs,
                "n_points": len(pv.runs)}

        def delta(picks, a=a, b=b):
            return fragmentation.partial(fragmentation.resampled(pv, picks), a, b, opts) - \
                fragmentation.partial(fragmentation.resampled(pb, picks), a, b, opts)

        try:
            item["delta"] = fragmentation.partial(pv, a, b, opts) - fragmentation.partial(pb, a, b, opts)
            boot = stats.cluster_bootstrap_values(clusters, delta, opts.n_boot, opts.seed + 104729 + i)
            jack = stats.jackknife(clusters, delta)
            alpha = (1 - opts.level) / 2
            lo, hi = np.quantile(boot, [alpha, 1 - alpha])
            item |= {"ci_low": float(lo), "ci_high": float(hi),
                     "ci_bca": list(stats.bca_interval(boot, item["delta"], jack, opts.level)),
                     "p_bootstrap": stats.bootstrap_p(boot, item["delta"]),
                     "p": fragmentation.swap_permutation_p(
                         pv, pb, lambda p, a=a, b=b: fragmentation.partial(p, a, b, opts), opts.n_perm,
                         opts.seed + 3571 + i),
                     "undefined": None}
        except stats.StatsError as exc:
            item |= {"delta": None, "ci_low": None, "ci_high": None, "p": None, "undefined": str(exc)}
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
        d |= {"variant": v, "baseline": baseline, "noise_control": noise_control_of(v),
              "index": summary["variants"][v].get("fragmentation", {}).get("index"),
              "baseline_index": summary["variants"][baseline].get("fragmentation", {}).get("index")}
        summary["headline"].append(d)
        summary["comparisons"].extend(compare_pairs(pv, pb, opts))
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
