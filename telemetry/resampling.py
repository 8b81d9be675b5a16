"""Bootstrap resamples and label swaps of a population, thousands at once.

A resample of runs, or a swap of two variants' labels within runs, changes which points
enter a statistic, not how one point is scaled, whenever each point's analysis-scale row
depends on that point alone: Pearson's r with a linear or probit control. Then every
resample's columns are rows of one array, and its partial-correlation matrix is one
closed-form least-squares fit (``stats.partial_corr_stack``) instead of a Population
object and an ``lstsq`` call per resample (the analysis of the demo spent about 30 s
there). Ranks (spearman) and spline knots depend on the whole sample, and so does a run
count that differs between runs: those analyses loop over resampled populations
(``fragmentation``, ``analysis``), drawing the same resamples. Both paths give the same
numbers to rounding (tests/telemetry/test_resampling.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from telemetry import stats

CHUNK = 256  # resamples per batched fit: (256, points, shifts) floats stay a few MB at the study's size


@dataclass(frozen=True)
class Stack:
    """One population on the analysis scale, laid out for batched resampling."""

    cols: np.ndarray  # (points, shifts): each shift on the analysis scale
    control: np.ndarray  # (points,): in-domain accuracy on the analysis scale
    groups: np.ndarray  # (runs, points per run): the point indices of each run, in run_ids order

    @property
    def run_of_point(self) -> np.ndarray:
        out = np.empty(self.groups.size, dtype=int)
        for r, g in enumerate(self.groups):
            out[g] = r
        return out


def rows_of(stack: Stack, picks: np.ndarray) -> np.ndarray:
    """Point indices (B, k · points per run) of B resamples, each a row of k run indices."""
    return stack.groups[picks].reshape(len(picks), -1)


def _within(y: np.ndarray, z: np.ndarray, per_run: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run-demeaned columns and control (run fixed effects); the third value marks samples whose
    control does not move within runs (nothing to control for: undefined, as in the loop)."""
    b, n, m = y.shape
    y = y.reshape(b, n // per_run, per_run, m)
    z = z.reshape(b, n // per_run, per_run)
    y = (y - y.mean(axis=2, keepdims=True)).reshape(b, n, m)
    z = (z - z.mean(axis=2, keepdims=True)).reshape(b, n)
    return y, z, ~(z.std(axis=1) > 1e-12)


def _matrices(y: np.ndarray, z: np.ndarray, within: bool, per_run: int) -> np.ndarray:
    if not within:
        return stats.partial_corr_stack(y, z)
    y, z, flat = _within(y, z, per_run)
    out = stats.partial_corr_stack(y, z)
    out[flat] = np.nan
    return out


def resample_matrices(stacks: list[Stack], picks: np.ndarray, within: bool = False) -> np.ndarray:
    """(B, len(stacks), m, m): every stack's partial-correlation matrix on each resample of runs.

    ``picks`` (B, k) holds run indices (a bootstrap draws k = runs with replacement; a
    jackknife leaves one out). The stacks hold the same points in the same order (a paired
    comparison resamples them together). ``within`` demeans each drawn run first. Entries
    of a resample where a matrix is undefined are NaN.
    """
    per_run = stacks[0].groups.shape[1]
    m = stacks[0].cols.shape[1]
    out = np.empty((len(picks), len(stacks), m, m))
    for start in range(0, len(picks), CHUNK):
        rows = rows_of(stacks[0], picks[start:start + CHUNK])
        for k, s in enumerate(stacks):
            out[start:start + len(rows), k] = _matrices(s.cols[rows], s.control[rows], within, per_run)
    return out


def swap_matrices(sv: Stack, sb: Stack, flips: np.ndarray) -> np.ndarray:
    """(P, 2, m, m): the two variants' matrices after swapping their labels on the flipped runs.

    ``flips`` (P, runs) is True where a run's points trade places between the variant
    ``sv`` and the baseline ``sb`` (the same points in the same order). Undefined: NaN.
    """
    point_of = sv.run_of_point
    m = sv.cols.shape[1]
    out = np.empty((len(flips), 2, m, m))
    for start in range(0, len(flips), CHUNK):
        mask = flips[start:start + CHUNK][:, point_of]
        cols, ctrl = mask[:, :, None], mask
        out[start:start + len(mask), 0] = stats.partial_corr_stack(np.where(cols, sb.cols, sv.cols),
                                                                   np.where(ctrl, sb.control, sv.control))
        out[start:start + len(mask), 1] = stats.partial_corr_stack(np.where(cols, sv.cols, sb.cols),
                                                                   np.where(ctrl, sv.control, sb.control))
    return out
