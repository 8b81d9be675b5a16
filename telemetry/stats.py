"""Partial correlation between shifts across a population of runs, and its uncertainty.

For runs i = 1..n with accuracies a1, a2 on two shifts and aID in-domain:

    r12.ID = (r12 - r1ID r2ID) / sqrt((1 - r1ID^2)(1 - r2ID^2))

where rXY is Pearson's correlation across runs. Equivalently, the correlation of the
residuals of a1 and a2 after regressing each on the controls (an intercept plus the k
control columns); the residual form is what generalizes to k > 1 controls (probit,
splines). Honesty rules (DESIGN.md, The statistics): fewer than 5 runs is refused, fewer
than 20 warned about, a split without variance is "undefined" with its reason, and
every interval comes from a bootstrap that resamples runs, never checkpoints.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np
from scipy import interpolate, special, stats

MIN_RUNS = 5  # with one control, r12.ID at n = 3 is +-1 by construction
WARN_RUNS = 20


class StatsError(ValueError):
    """A statistic that cannot honestly be computed, with the reason."""


class Undefined(StatsError):
    """The statistic is undefined for this data (e.g. a split with zero variance)."""


def small_sample_warning(n: int) -> str | None:
    if n < MIN_RUNS:
        return f"refused: {n} runs; a partial correlation needs at least {MIN_RUNS} independent runs"
    if n < WARN_RUNS:
        return f"only {n} runs (< {WARN_RUNS}): intervals are wide and p-values fragile"
    return None


def _as_1d(x, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=float)
    if arr.ndim != 1:
        raise StatsError(f"{name} must be 1-D, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise StatsError(f"{name} contains NaN or infinite values")
    return arr


def _check_n(n: int) -> None:
    if n < MIN_RUNS:
        raise StatsError(small_sample_warning(n))


def pearson(x, y) -> float:
    """r = sum((x - mx)(y - my)) / sqrt(sum((x - mx)^2) sum((y - my)^2))."""
    x, y = _as_1d(x, "x"), _as_1d(y, "y")
    if len(x) != len(y):
        raise StatsError(f"x and y differ in length ({len(x)} vs {len(y)})")
    dx, dy = x - x.mean(), y - y.mean()
    sxx, syy = float(dx @ dx), float(dy @ dy)
    scale = max(1.0, float(np.abs(x).max()), float(np.abs(y).max())) ** 2 * len(x) * 1e-24
    if sxx <= scale:
        raise Undefined("x has zero variance across runs: its correlation is undefined")
    if syy <= scale:
        raise Undefined("y has zero variance across runs: its correlation is undefined")
    return float(np.clip((dx @ dy) / math.sqrt(sxx * syy), -1.0, 1.0))


def spearman(x, y) -> float:
    """Pearson's r of the ranks (average ranks for ties)."""
    return pearson(stats.rankdata(_as_1d(x, "x")), stats.rankdata(_as_1d(y, "y")))


def residualize(y, covar) -> np.ndarray:
    """Residuals of y after least squares on [1, covar] (covar 1-D or n x k)."""
    y = _as_1d(y, "y")
    z = np.asarray(covar, dtype=float)
    z = z[:, None] if z.ndim == 1 else z
    if z.shape[0] != len(y):
        raise StatsError(f"covar has {z.shape[0]} rows for {len(y)} observations")
    design = np.column_stack([np.ones(len(y)), z])
    beta, *_ = np.linalg.lstsq(design, y, rcond=None)
    return y - design @ beta


def n_controls(covar) -> int:
    z = np.asarray(covar, dtype=float)
    return 1 if z.ndim == 1 else z.shape[1]


def partial_corr(x, y, covar, method: str = "pearson") -> float:
    """Correlation of x and y once the controls in ``covar`` are regressed out of both.

    ``method="spearman"`` ranks x, y and each control column first.
    """
    x, y = _as_1d(x, "x"), _as_1d(y, "y")
    z = np.asarray(covar, dtype=float)
    if method == "spearman":
        x, y = stats.rankdata(x), stats.rankdata(y)
        z = stats.rankdata(z) if z.ndim == 1 else np.column_stack([stats.rankdata(c) for c in z.T])
    elif method != "pearson":
        raise StatsError(f"method must be pearson or spearman, got {method!r}")
    if len(x) - 2 - n_controls(z) < 1:
        raise StatsError(f"{len(x)} runs leave no degrees of freedom with {n_controls(z)} control(s)")
    try:
        return pearson(residualize(x, z), residualize(y, z))
    except Undefined as exc:
        raise Undefined(f"nothing left after controlling for in-domain accuracy ({exc})") from None


def partial_corr_closed_form(x, y, z) -> float:
    """(r12 - r1z r2z) / sqrt((1 - r1z^2)(1 - r2z^2)) for a single control z."""
    r12, r1z, r2z = pearson(x, y), pearson(x, z), pearson(y, z)
    denom = (1 - r1z**2) * (1 - r2z**2)
    if denom <= 1e-15:
        raise Undefined("a shift is a perfect linear function of in-domain accuracy")
    return float(np.clip((r12 - r1z * r2z) / math.sqrt(denom), -1.0, 1.0))


# -- controls for in-domain accuracy ----------------------------------------------------
CONTROLS = ("linear", "probit", "spline")


def probit(correct, n) -> np.ndarray:
    """Phi^-1((k + 1/2) / (n + 1)): the probit of accuracy, smoothed so 0 and 1 stay finite."""
    k, n = np.asarray(correct, dtype=float), np.asarray(n, dtype=float)
    return special.ndtri((k + 0.5) / (n + 1.0))


def spline_basis(x, df: int = 4) -> np.ndarray:
    """A cubic B-spline basis of x (scipy), knots at quantiles; df columns, intercept dropped.

    Regressing on it is a smooth nonlinear control: accuracy on the shift may bend with
    in-domain accuracy without that bend showing up as a shift-shift correlation.
    """
    x = _as_1d(x, "x")
    k = 3
    n_inner = max(df - k, 0)
    lo, hi = float(x.min()), float(x.max())
    if hi - lo <= 0:
        raise Undefined("in-domain accuracy does not vary: nothing to control for")
    inner = np.quantile(x, np.linspace(0, 1, n_inner + 2)[1:-1]) if n_inner else np.array([])
    knots = np.concatenate([[lo] * (k + 1), inner, [hi] * (k + 1)])
    basis = interpolate.BSpline.design_matrix(np.clip(x, lo, hi), knots, k).toarray()
    return basis[:, 1:]  # the columns sum to 1: drop one, the regression has its own intercept


def control_matrix(kind: str, correct, n, spline_df: int = 4) -> np.ndarray:
    """The control columns for in-domain accuracy (correct out of n per run)."""
    acc = np.asarray(correct, dtype=float) / np.asarray(n, dtype=float)
    if kind == "linear":
        return acc
    if kind == "probit":
        return probit(correct, n)
    if kind == "spline":
        return spline_basis(acc, spline_df)
    raise StatsError(f"control must be one of {CONTROLS}, got {kind!r}")


def transform_accuracy(kind: str, correct, n) -> np.ndarray:
    """Shift accuracies on the scale of the control: probit for probit, raw otherwise."""
    return probit(correct, n) if kind == "probit" else np.asarray(correct, dtype=float) / np.asarray(n, dtype=float)


# -- tests and intervals --------------------------------------------------------------
def t_test(r: float, n: int, k: int = 1) -> tuple[float, float]:
    """t = r sqrt(df) / sqrt(1 - r^2), df = n - 2 - k; two-sided p."""
    df = n - 2 - k
    if df < 1:
        raise StatsError(f"no degrees of freedom: n={n}, k={k}")
    if abs(r) >= 1:
        return math.copysign(math.inf, r), 0.0
    t = r * math.sqrt(df) / math.sqrt(1 - r * r)
    return t, float(2 * stats.t.sf(abs(t), df))


def fisher_interval(r: float, n: int, k: int = 1, level: float = 0.95) -> tuple[float, float]:
    """tanh(atanh(r) +- z_{(1+level)/2} / sqrt(n - 3 - k))."""
    if n - 3 - k < 1:
        raise StatsError(f"Fisher-z interval needs n > {3 + k}, got {n}")
    z = math.atanh(max(min(r, 1 - 1e-12), -1 + 1e-12))
    half = stats.norm.ppf((1 + level) / 2) / math.sqrt(n - 3 - k)
    return math.tanh(z - half), math.tanh(z + half)


def permutation_p(x, y, covar, n_perm: int = 2000, seed: int = 0, method: str = "pearson") -> float:
    """Two-sided p of the partial correlation by permuting x's residuals (Freedman-Lane style)."""
    rx, ry = residualize(x, covar), residualize(y, covar)
    if method == "spearman":
        rx, ry = stats.rankdata(rx), stats.rankdata(ry)
    observed = abs(pearson(rx, ry))
    rng = np.random.default_rng(seed)
    ry_c = (ry - ry.mean()) / np.linalg.norm(ry - ry.mean())
    perms = np.array([rng.permutation(rx) for _ in range(n_perm)])
    perms = perms - perms.mean(axis=1, keepdims=True)
    perms /= np.linalg.norm(perms, axis=1, keepdims=True)
    null = np.abs(perms @ ry_c)
    return float((1 + np.sum(null >= observed - 1e-12)) / (n_perm + 1))


def bh_qvalues(pvalues: Sequence[float]) -> list[float]:
    """Benjamini-Hochberg q-values (step-up, monotone), NaN entries passed through."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(len(p), np.nan)
    ok = np.where(np.isfinite(p))[0]
    if len(ok) == 0:
        return out.tolist()
    order = ok[np.argsort(p[ok])]
    m = len(order)
    ranked = p[order] * m / np.arange(1, m + 1)
    q = np.minimum.accumulate(ranked[::-1])[::-1]
    out[order] = np.minimum(q, 1.0)
    return out.tolist()


def cluster_bootstrap(clusters: Sequence, statistic: Callable[[list], float], n_boot: int = 2000,
                      seed: int = 0, level: float = 0.95) -> tuple[float, float, int]:
    """Percentile interval of ``statistic`` over resamples of whole clusters (runs).

    ``clusters`` is one entry per run (all of that run's points travel together).
    Resamples on which the statistic is undefined are dropped and counted; the third
    value is how many were kept.
    """
    rng = np.random.default_rng(seed)
    m = len(clusters)
    values = []
    for _ in range(n_boot):
        pick = rng.integers(0, m, m)
        try:
            v = statistic([clusters[i] for i in pick])
        except StatsError:
            continue
        if np.isfinite(v):
            values.append(v)
    if len(values) < n_boot // 2:
        raise Undefined(f"the statistic was undefined on {n_boot - len(values)} of {n_boot} bootstrap resamples")
    alpha = (1 - level) / 2
    lo, hi = np.quantile(values, [alpha, 1 - alpha])
    return float(lo), float(hi), len(values)


def warn_if_small(n: int) -> None:
    msg = small_sample_warning(n)
    if msg and n >= MIN_RUNS:
        warnings.warn(msg, stacklevel=2)
