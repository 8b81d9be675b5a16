"""The analysis behind summary.json: per variant, every shift pair's partial correlation.

Between-run results use each run's final checkpoint (or every checkpoint with
``points="all"``, still resampling whole runs); within-run (trajectory) results remove
each run's mean first, so they say how shifts move together *during* fine-tuning. The
two can differ in sign and are reported side by side.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from telemetry import stats
from telemetry.config import AnalysisOptions
from telemetry.population import ID, Population, build_population, variants_in
from train.signal import signal_check

BASELINES = ("torch-fp32", "onnx-fp32")


def _xy_z(pop: Population, a: str, b: str, opts: AnalysisOptions):
    x = stats.transform_accuracy(opts.control, pop.correct[a], pop.n[a])
    y = stats.transform_accuracy(opts.control, pop.correct[b], pop.n[b])
    z = stats.control_matrix(opts.control, pop.correct[ID], pop.n[ID], opts.spline_df)
    return x, y, z


def _partial(pop: Population, a: str, b: str, opts: AnalysisOptions) -> float:
    x, y, z = _xy_z(pop, a, b, opts)
    return stats.partial_corr(x, y, z, opts.method)


def _within(pop: Population, a: str, b: str, opts: AnalysisOptions) -> float:
    """Partial correlation of run-demeaned trajectories (run fixed effects), linear control."""
    runs = np.array(pop.runs)
    cols = []
    for s in (a, b, ID):
        v = pop.accuracy(s).copy()
        for r in set(pop.runs):
            v[runs == r] -= v[runs == r].mean()
        cols.append(v)
    return stats.partial_corr(cols[0], cols[1], cols[2], opts.method)


def _clusters(pop: Population) -> list[np.ndarray]:
    runs = np.array(pop.runs)
    return [np.where(runs == r)[0] for r in pop.run_ids]


def _resampled(pop: Population, picks: list[np.ndarray]) -> Population:
    """A bootstrap population; a run drawn twice enters as two distinct clusters."""
    idx = np.concatenate(picks)
    out = pop.take(idx)
    out.runs = [f"{i}" for i, p in enumerate(picks) for _ in p]
    return out


def _interval(pop: Population, fn, opts: AnalysisOptions, seed_offset: int) -> tuple[float, float]:
    clusters = _clusters(pop)
    lo, hi, _ = stats.cluster_bootstrap(clusters, lambda picks: fn(_resampled(pop, picks)), opts.n_boot,
                                        opts.seed + seed_offset, opts.level)
    return lo, hi


def _undefined(exc: Exception) -> dict:
    return {"r": None, "r_partial": None, "ci_low": None, "ci_high": None, "p": None, "q": None,
            "undefined": str(exc)}


def analyze_pair(pop: Population, a: str, b: str, opts: AnalysisOptions, k_index: int) -> dict:
    n_runs = len(pop.run_ids)
    out: dict = {"shift_a": a, "shift_b": b}
    try:
        out["r"] = stats.pearson(pop.accuracy(a), pop.accuracy(b))
        x, y, z = _xy_z(pop, a, b, opts)
        r_p = stats.partial_corr(x, y, z, opts.method)
        k = stats.n_controls(z)
        out["r_partial"] = r_p
        out["ci_low"], out["ci_high"] = _interval(pop, lambda p: _partial(p, a, b, opts), opts, k_index)
        out["t"], out["p"] = stats.t_test(r_p, n_runs, k)
        out["df"] = n_runs - 2 - k
        out["fisher_low"], out["fisher_high"] = stats.fisher_interval(r_p, n_runs, k, opts.level)
        out["p_permutation"] = stats.permutation_p(x, y, z, opts.n_perm, opts.seed + k_index, opts.method) \
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


def analyze_variant(rows: list[dict], variant: str, opts: AnalysisOptions) -> dict:
    pop_final = build_population(rows, variant, "final")
    pop_all = build_population(rows, variant, "all")
    pop = pop_final if opts.points == "final" else pop_all
    n_runs = len(pop.run_ids)
    result: dict = {
        "n_runs": n_runs, "n_points": len(pop.runs), "points": opts.points,
        "accuracy": {s: float(pop_final.accuracy(s).mean()) for s in pop.splits},
        "signal": signal_check(rows, variant), "warning": stats.small_sample_warning(n_runs), "pairs": [],
        "within_run": [],
    }
    if n_runs < stats.MIN_RUNS:
        result["refused"] = result["warning"]
        return result
    pairs = list(itertools.combinations(pop.shifts, 2))
    result["pairs"] = [analyze_pair(pop, a, b, opts, i) for i, (a, b) in enumerate(pairs)]
    for p in result["pairs"]:
        # A pair with a signal-less shift is computed but never presented as a finding.
        p["low_signal"] = [s for s in (p["shift_a"], p["shift_b"]) if not result["signal"][s]["has_signal"]]
    qs = stats.bh_qvalues([p["p"] if p["p"] is not None else math.nan for p in result["pairs"]])
    for p, q in zip(result["pairs"], qs):
        p["q"] = None if math.isnan(q) else q
    result["within_run"] = [analyze_within(pop_all, a, b, opts, i) for i, (a, b) in enumerate(pairs)]
    return result


def compare(rows: list[dict], variant: str, baseline: str, opts: AnalysisOptions) -> list[dict]:
    """Paired difference in partial correlation, variant minus baseline, over their common runs."""
    pv, pb = build_population(rows, variant, opts.points), build_population(rows, baseline, opts.points)
    common = sorted(set(pv.run_ids) & set(pb.run_ids))
    out = []
    if len(common) < stats.MIN_RUNS:
        return out
    pv = pv.take([i for i, r in enumerate(pv.runs) if r in common])
    pb = pb.take([i for i, r in enumerate(pb.runs) if r in common])
    for i, (a, b) in enumerate(itertools.combinations([s for s in pv.shifts if s in pb.shifts], 2)):
        item = {"variant": variant, "baseline": baseline, "shift_a": a, "shift_b": b, "n_runs": len(common)}
        try:
            item["delta"] = _partial(pv, a, b, opts) - _partial(pb, a, b, opts)
            cv, cb = _clusters(pv), _clusters(pb)
            pos_b = {r: j for j, r in enumerate(pb.run_ids)}
            # One cluster per run, holding that run's points in both variants: resampled together.
            paired = [(cv[j], cb[pos_b[r]]) for j, r in enumerate(pv.run_ids)]

            def delta(picks, a=a, b=b):
                return _partial(_resampled(pv, [p[0] for p in picks]), a, b, opts) - \
                    _partial(_resampled(pb, [p[1] for p in picks]), a, b, opts)

            lo, hi, _ = stats.cluster_bootstrap(paired, delta, opts.n_boot, opts.seed + 104729 + i, opts.level)
            item |= {"ci_low": lo, "ci_high": hi, "undefined": None}
        except stats.StatsError as exc:
            item |= {"delta": None, "ci_low": None, "ci_high": None, "undefined": str(exc)}
        out.append(item)
    return out


def analyze(rows: list[dict], opts: AnalysisOptions) -> dict:
    variants = variants_in(rows)
    summary = {"options": opts.__dict__, "variants": {v: analyze_variant(rows, v, opts) for v in variants},
               "comparisons": []}
    baseline = next((b for b in BASELINES if b in variants), None)
    summary["baseline"] = baseline
    if baseline:
        for v in variants:
            if v != baseline:
                summary["comparisons"].extend(compare(rows, v, baseline, opts))
    return summary
