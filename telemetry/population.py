"""From the accuracy table to the population of points the statistics run on.

A point is (run, checkpoint). Between-run analyses use each run's final checkpoint;
within-run analyses use every checkpoint with each run's mean removed. ``correct`` and
``n`` hold the successes and trials of the chosen measure (train.signal.MEASURES):
exact-match answers out of items, or right answer digits out of answer digits.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from train.signal import DEFAULT_MEASURE, score

ID = "id"


class DataWarning(UserWarning):
    """Rows left out of a population (the CLI prints these; numerical warnings it silences)."""


@dataclass
class Population:
    variant: str
    runs: list[str]  # one entry per point (the cluster each point belongs to)
    steps: list[int]
    splits: list[str]  # "id" first, then the shifts in name order
    correct: dict[str, np.ndarray]  # split -> successes per point on the measure
    n: dict[str, np.ndarray]  # split -> trials per point on the measure
    measure: str = DEFAULT_MEASURE  # "exact" or "digit"

    def accuracy(self, split: str) -> np.ndarray:
        return self.correct[split] / self.n[split]

    @property
    def shifts(self) -> list[str]:
        return [s for s in self.splits if s != ID]

    @property
    def run_ids(self) -> list[str]:
        return list(dict.fromkeys(self.runs))

    def take(self, idx) -> Population:
        idx = np.asarray(idx, dtype=int)
        return Population(self.variant, [self.runs[i] for i in idx], [self.steps[i] for i in idx], self.splits,
                          {k: v[idx] for k, v in self.correct.items()}, {k: v[idx] for k, v in self.n.items()},
                          self.measure)

    @property
    def keys(self) -> list[tuple[str, int]]:
        return list(zip(self.runs, self.steps))

    def restricted_to(self, keys: list[tuple[str, int]]) -> Population:
        """These (run, step) points, in this order (for pairing two variants point by point)."""
        where = {k: i for i, k in enumerate(self.keys)}
        return self.take([where[k] for k in keys])


def common_points(a: Population, b: Population) -> list[tuple[str, int]]:
    """The (run, step) points both populations hold, sorted: a paired comparison uses only these."""
    return sorted(set(a.keys) & set(b.keys))


def _population_splits(variant: str, cells: dict) -> list[str]:
    """The splits most points hold ("id" first): a split only a few points carry (a stray row, a split
    added to some runs) is left out with a warning instead of emptying the population."""
    counts: dict[str, int] = {}
    for c in cells.values():
        for s in c:
            counts[s] = counts.get(s, 0) + 1
    stray = sorted(s for s, k in counts.items() if 2 * k < len(cells))
    if stray:
        warnings.warn(f"{variant}: split(s) {', '.join(f'{s} ({counts[s]} of {len(cells)} points)' for s in stray)}"
                      " held by fewer than half of the points: left out", DataWarning, stacklevel=3)
    return sorted((s for s in counts if s not in stray), key=lambda s: (s != ID, s))


def variants_in(rows: list[dict]) -> list[str]:
    return sorted({r["variant"] for r in rows})


def build_population(rows: list[dict], variant: str, points: str = "final",
                     measure: str = DEFAULT_MEASURE) -> Population:
    """Points of one variant with every split present; ``points`` is "final" or "all"."""
    if points not in ("final", "all"):
        raise ValueError(f"points must be 'final' or 'all', got {points!r}")
    mine = [r for r in rows if r["variant"] == variant]
    if not mine:
        raise ValueError(f"no rows for variant {variant!r}")
    cells: dict[tuple[str, int], dict[str, tuple[int, int]]] = {}
    for r in mine:
        cells.setdefault((r["run"], int(r["step"])), {})[r["split"]] = score(r, measure)
    splits = _population_splits(variant, cells)
    if ID not in splits:
        raise ValueError(f"variant {variant!r} has no in-domain ('id') rows to control for")
    complete = {k: v for k, v in cells.items() if all(s in v for s in splits)}
    if len(complete) < len(cells):
        left = sorted(set(cells) - set(complete))
        warnings.warn(f"{variant}: {len(left)} of {len(cells)} (run, step) point(s) lack a split and are left out "
                      f"(e.g. {left[0][0]} step {left[0][1]} has {sorted(cells[left[0]])})", DataWarning, stacklevel=2)
    if points == "final":
        last: dict[str, int] = {}
        for run, step in complete:
            last[run] = max(last.get(run, -1), step)
        keys = sorted((run, step) for run, step in complete if last[run] == step)
    else:
        keys = sorted(complete)
    return Population(
        variant=variant, runs=[k[0] for k in keys], steps=[k[1] for k in keys], splits=splits,
        correct={s: np.array([complete[k][s][0] for k in keys], dtype=float) for s in splits},
        n={s: np.array([complete[k][s][1] for k in keys], dtype=float) for s in splits}, measure=measure,
    )
