"""The signal check: does a split's accuracy vary across runs more than sampling noise?

A shift on which every run scores 0 (or 1) carries no signal (docs/design.md, The statistics).
Per split, over the final checkpoints of the runs: mean accuracy, across-run standard
deviation, the binomial standard error sqrt(p(1-p)/N) of one run's accuracy, and the
share of runs at the floor (0 correct) and at the ceiling (all correct).

Two measures are recorded for every row and either can be checked: ``exact`` (exact-match
accuracy) and ``digit`` (the share of answer digits right). For ``digit`` the standard
error still divides by the number of *items*, not digits: the digits of one answer are not
independent, and the variance of a mean of per-item scores in [0, 1] is at most
p(1-p)/N, so this SE is conservative (it never makes a shift look like it has signal).
"""

from __future__ import annotations

import math
import statistics

from common.accuracy_table import TORCH_VARIANT

# The bar for "this shift carries signal" (docs/design.md, The signal check).
MEAN_RANGE = (0.1, 0.9)
MAX_FLOOR_CEILING_SHARE = 0.2
MIN_SPREAD_OVER_SE = 2.0
MEASURES = ("exact", "digit")
# The measure the analysis and the signal check use unless told otherwise: per-digit accuracy, because
# on the embedded base the shifts carry signal there long before they do at exact match (models/README.md).
DEFAULT_MEASURE = "digit"


def score(row: dict, measure: str) -> tuple[float, float]:
    """(successes, trials) of one accuracy row on a measure."""
    if measure == "exact":
        return float(row["correct"]), float(row["n"])
    if measure == "digit":
        if not row.get("digit_total"):
            raise ValueError("the digit measure needs digit_correct and digit_total in the accuracy table")
        return float(row["digit_correct"]), float(row["digit_total"])
    raise ValueError(f"measure must be one of {MEASURES}, got {measure!r}")


def final_rows(rows: list[dict], variant: str) -> list[dict]:
    last = {}
    for r in rows:
        if r["variant"] == variant:
            last[r["run"]] = max(last.get(r["run"], -1), int(r["step"]))
    return [r for r in rows if r["variant"] == variant and int(r["step"]) == last[r["run"]]]


def signal_check(rows: list[dict], variant: str = TORCH_VARIANT, measure: str = DEFAULT_MEASURE) -> dict[str, dict]:
    by_split: dict[str, list[dict]] = {}
    for r in final_rows(rows, variant):
        by_split.setdefault(r["split"], []).append(r)
    out = {}
    for split, rs in sorted(by_split.items(), key=lambda kv: (kv[0] != "id", kv[0])):
        scores = [score(r, measure) for r in rs]
        acc = [k / n for k, n in scores]
        mean = statistics.fmean(acc)
        sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
        n_items = statistics.fmean(r["n"] for r in rs)
        se = math.sqrt(mean * (1 - mean) / n_items)
        floor = sum(k == 0 for k, _ in scores) / len(rs)
        ceiling = sum(k == n for k, n in scores) / len(rs)
        ratio = sd / se if se > 0 else None
        reasons = []
        if not MEAN_RANGE[0] <= mean <= MEAN_RANGE[1]:
            reasons.append(f"mean {mean:.3f} outside {MEAN_RANGE}")
        if max(floor, ceiling) >= MAX_FLOOR_CEILING_SHARE:
            reasons.append(f"{max(floor, ceiling):.0%} of runs at floor/ceiling")
        if ratio is None or ratio <= MIN_SPREAD_OVER_SE:
            reasons.append("across-run spread not above 2x the binomial SE")
        if len(rs) < 2:
            reasons.append("fewer than 2 runs")
        out[split] = {
            "measure": measure, "runs": len(rs), "items_per_run": n_items, "mean": mean, "sd_across_runs": sd,
            "binomial_se": se, "spread_over_se": ratio, "share_at_0": floor, "share_at_1": ceiling,
            "has_signal": not reasons, "why_not": reasons,
        }
    return out


def base_scores(rows: list[dict]) -> dict[str, dict]:
    """Per split, the base model's exact and per-digit accuracy before fine-tuning (step 0)."""
    return {r["split"]: {m: k / n for m in MEASURES for k, n in [score(r, m)]} for r in rows}


def format_signal_table(check: dict[str, dict], before: dict[str, dict] | None = None) -> str:
    measure = next(iter(check.values()))["measure"] if check else DEFAULT_MEASURE
    head = f"{'split':16s} {'step 0':>6s} {'runs':>4s} {'mean':>6s} {'sd':>6s} {'SE':>6s} {'sd/SE':>6s} " \
           f"{'at 0':>5s} {'at 1':>5s}  signal ({measure} measure)"
    lines = [head, "-" * len(head)]
    for split, s in check.items():
        ratio = f"{s['spread_over_se']:6.1f}" if s["spread_over_se"] is not None else "   n/a"
        start = f"{before[split][measure]:6.3f}" if before and split in before else "   n/a"
        verdict = "yes" if s["has_signal"] else "no: " + "; ".join(s["why_not"])
        lines.append(f"{split:16s} {start} {s['runs']:4d} {s['mean']:6.3f} {s['sd_across_runs']:6.3f} "
                     f"{s['binomial_se']:6.3f} {ratio} {s['share_at_0']:5.0%} {s['share_at_1']:5.0%}  {verdict}")
    return "\n".join(lines)
