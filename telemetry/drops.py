"""Accuracy drops, paired: which shifts does quantization hurt more than in-domain predicts?

Per run i (final checkpoints, the same run in both variants) and shift s:

    drop_s,i  = acc_fp(s)_i  − acc_q(s)_i
    drop_id,i = acc_fp(id)_i − acc_q(id)_i
    excess_s  = mean_i [ drop_s,i − β_s · drop_id,i ]

where β_s is the slope of the baseline's shift accuracy on its in-domain accuracy across
runs (the "accuracy on the line" fit): the drop that in-domain skill alone would predict.
excess_s > 0: quantization costs shift s more than its in-domain cost explains. Pairing
each run with itself removes the between-run variance, so this needs far fewer runs than
a difference of correlations. Interval: cluster bootstrap over runs, re-fitting β_s in
every resample; p from the bootstrap shifted to the null; BH across every (variant, shift).
"""

from __future__ import annotations

import math

import numpy as np

from telemetry import fragmentation, stats
from telemetry.config import AnalysisOptions
from telemetry.population import ID, Population


def excess_drop(pq: Population, pb: Population, shift: str) -> float:
    a_id, a_s = pb.accuracy(ID), pb.accuracy(shift)
    if np.ptp(a_id) <= 0:
        raise stats.Undefined("in-domain accuracy does not vary across runs: no line to predict from")
    slope = float(np.polyfit(a_id, a_s, 1)[0])
    d_id = a_id - pq.accuracy(ID)
    d_s = a_s - pq.accuracy(shift)
    return float(np.mean(d_s - slope * d_id))


def excess_drop_resamples(pq: Population, pb: Population, shift: str, picks: np.ndarray) -> np.ndarray:
    """``excess_drop`` on every row of point indices in ``picks`` (B, n) at once; rows where in-domain
    accuracy does not vary are dropped, as the loop drops undefined resamples."""
    a_id, a_s = pb.accuracy(ID)[picks], pb.accuracy(shift)[picks]
    d_id, d_s = a_id - pq.accuracy(ID)[picks], a_s - pq.accuracy(shift)[picks]
    ok = np.ptp(a_id, axis=1) > 0
    x = a_id[ok] - a_id[ok].mean(axis=1, keepdims=True)
    slope = (x * (a_s[ok] - a_s[ok].mean(axis=1, keepdims=True))).sum(axis=1) / (x * x).sum(axis=1)
    return stats.kept_resamples(np.mean(d_s[ok] - slope[:, None] * d_id[ok], axis=1), len(picks))


def accuracy_drops(pq: Population, pb: Population, opts: AnalysisOptions) -> list[dict]:
    """One entry per shift: mean drops, the excess drop with its interval and p."""
    pq, pb = fragmentation.paired(pq, pb)
    n_runs = len(pq.run_ids)
    if n_runs < stats.MIN_RUNS:
        return []
    clusters = fragmentation.run_clusters(pq)
    out = []
    for i, shift in enumerate(s for s in pq.shifts if s in pb.shifts):
        item = {"variant": pq.variant, "baseline": pb.variant, "shift": shift, "n_runs": n_runs,
                "drop_id": float(np.mean(pb.accuracy(ID) - pq.accuracy(ID))),
                "drop_shift": float(np.mean(pb.accuracy(shift) - pq.accuracy(shift)))}

        def stat(picks, shift=shift):
            return excess_drop(fragmentation.resampled(pq, picks), fragmentation.resampled(pb, picks), shift)

        try:
            est = excess_drop(pq, pb, shift)
            seed = opts.seed + 271 + i
            if all(len(c) == 1 for c in clusters):  # one point per run (the default): all resamples at once
                boot = excess_drop_resamples(pq, pb, shift, stats.cluster_picks(len(clusters), opts.n_boot, seed))
            else:
                boot = stats.cluster_bootstrap_values(clusters, stat, opts.n_boot, seed)
            alpha = (1 - opts.level) / 2
            lo, hi = np.quantile(boot, [alpha, 1 - alpha])
            item |= {"excess": est, "ci_low": float(lo), "ci_high": float(hi), "p": stats.bootstrap_p(boot, est),
                     "undefined": None}
        except stats.StatsError as exc:
            item |= {"excess": None, "ci_low": None, "ci_high": None, "p": None, "undefined": str(exc)}
        out.append(item)
    return out


def with_qvalues(items: list[dict]) -> None:
    qs = stats.bh_qvalues([d["p"] if d.get("p") is not None else math.nan for d in items])
    for d, q in zip(items, qs):
        d["q"] = None if math.isnan(q) else q
