"""Partial correlation between shifts across a population of runs, and its uncertainty.

For runs i = 1..n with accuracies a1, a2 on two shifts and aID in-domain:

    r12.ID = (r12 - r1ID r2ID) / sqrt((1 - r1ID^2)(1 - r2ID^2))

where rXY is Pearson's correlation across runs. Equivalently, the correlation of the
residuals of a1 and a2 after regressing each on the controls (an intercept plus the k
control columns); the residual form is what generalizes to k > 1 controls (probit,
splines). Honesty rules (docs/design.md, The statistics): fewer than 5 runs is refused, fewer
than 20 warned about, a split without variance is "undefined" with its reason, and
every interval comes from a bootstrap that resamples runs, never checkpoints. The
permutation test re-residualizes (Freedman-Lane) and permutes the statistic it reports;
where the percentile bootstrap is unreliable, BCa (with a cluster jackknife) is offered,
and paired differences get TOST equivalence tests and minimum-detectable-effect figures.
"""

from __future__ import annotations

import math
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


def _covar_2d(covar, n: int) -> np.ndarray:
    """covar as an n x k matrix of finite values (a 1-D covar is one column)."""
    z = np.asarray(covar, dtype=float)
    z = z[:, None] if z.ndim == 1 else z
    if z.ndim != 2 or z.shape[0] != n:
        raise StatsError(f"covar has shape {np.shape(covar)} for {n} observations")
    if not np.all(np.isfinite(z)):
        raise StatsError("covar contains NaN or infinite values")
    return z


SPEARMAN_BASIS_ERROR = (
    "method='spearman' with {k} control columns: ranking the columns of a basis (e.g. a spline basis) is a "
    "defect; rank the in-domain accuracy before expanding it into a basis and use method='pearson'"
)


def _ranked(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Average ranks of x, y and of the single control column of z (n x 1)."""
    if z.shape[1] != 1:
        raise StatsError(SPEARMAN_BASIS_ERROR.format(k=z.shape[1]))
    return stats.rankdata(x), stats.rankdata(y), stats.rankdata(z[:, 0])[:, None]


def _prepared(x, y, covar, method: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x, y and the n x k controls, checked, on the scale of ``method`` (ranks for spearman)."""
    x, y = _as_1d(x, "x"), _as_1d(y, "y")
    z = _covar_2d(covar, len(x))
    if method == "spearman":
        return _ranked(x, y, z)
    if method != "pearson":
        raise StatsError(f"method must be pearson or spearman, got {method!r}")
    return x, y, z


def partial_corr(x, y, covar, method: str = "pearson") -> float:
    """Correlation of x and y once the controls in ``covar`` are regressed out of both.

    ``method="spearman"`` is Pearson's partial correlation of the ranks of x, y and of a
    single control column. A multi-column covar (a spline basis) is refused with
    spearman: rank the in-domain accuracy first, then expand it into a basis.
    """
    x, y, z = _prepared(x, y, covar, method)
    if len(x) - 2 - n_controls(z) < 1:
        raise StatsError(f"{len(x)} runs leave no degrees of freedom with {n_controls(z)} control(s)")
    try:
        return pearson(residualize(x, z), residualize(y, z))
    except Undefined as exc:
        raise Undefined(f"nothing left after controlling for in-domain accuracy ({exc})") from None


def partial_corr_matrix(cols, covar) -> np.ndarray:
    """Partial correlations of every pair of columns of ``cols`` (n x m), the same controls for all.

    One least-squares fit residualizes all m columns at once (the bootstrap of an index over
    many pairs calls this thousands of times); entry (i, j) equals
    ``partial_corr(cols[:, i], cols[:, j], covar)``.
    """
    y = np.asarray(cols, dtype=float)
    if y.ndim != 2 or not np.all(np.isfinite(y)):
        raise StatsError("cols must be an n x m matrix of finite values")
    z = _covar_2d(covar, y.shape[0])
    if y.shape[0] - 2 - z.shape[1] < 1:
        raise StatsError(f"{y.shape[0]} runs leave no degrees of freedom with {z.shape[1]} control(s)")
    design = np.column_stack([np.ones(y.shape[0]), z])
    beta, *_ = np.linalg.lstsq(design, y, rcond=None)
    res = y - design @ beta
    res -= res.mean(axis=0)
    ss = np.einsum("ij,ij->j", res, res)
    scale = np.maximum(1.0, np.abs(y).max(axis=0)) ** 2 * y.shape[0] * 1e-24
    if np.any(ss <= scale):
        raise Undefined("nothing left after controlling for in-domain accuracy (a column has zero variance)")
    norm = res / np.sqrt(ss)
    return np.clip(norm.T @ norm, -1.0, 1.0)


def partial_corr_stack(cols: np.ndarray, control: np.ndarray) -> np.ndarray:
    """``partial_corr_matrix`` of every sample in a stack with one control column, at once.

    ``cols`` is (B, n, m) and ``control`` (B, n): sample b is ``cols[b]`` controlled for
    ``control[b]``. With one control the least-squares residual is closed-form,
    y_c − z_c (z_c·y_c) / (z_c·z_c) (c: centred), and a control numerically constant on a
    sample is dropped as lstsq's rank cut-off drops it. The result is (B, m, m), entry
    [b, i, j] equal to ``partial_corr_matrix(cols[b], control[b])[i, j]`` to rounding; a
    sample on which that raises Undefined (a column with nothing left) is all NaN.
    """
    y = np.asarray(cols, dtype=float)
    z = np.asarray(control, dtype=float)
    if y.ndim != 3 or z.shape != y.shape[:2]:
        raise StatsError(f"cols must be (B, n, m) and control (B, n), got {y.shape} and {z.shape}")
    n = y.shape[1]
    if n - 3 < 1:
        raise StatsError(f"{n} runs leave no degrees of freedom with 1 control(s)")
    yc = y - y.mean(axis=1, keepdims=True)
    zc = z - z.mean(axis=1, keepdims=True)
    zz = np.einsum("bn,bn->b", zc, zc)
    # lstsq's cut-off on the smallest singular value of [1, z]: below it z adds nothing
    s_max = np.sqrt(n + np.einsum("bn,bn->b", z, z))
    constant = np.sqrt(zz) <= s_max * max(n, 2) * np.finfo(float).eps
    coef = np.einsum("bn,bnm->bm", zc, yc) / np.where(constant, 1.0, zz)[:, None]
    res = yc - np.where(constant, 0.0, 1.0)[:, None, None] * zc[:, :, None] * coef[:, None, :]
    res -= res.mean(axis=1, keepdims=True)
    ss = np.einsum("bnm,bnm->bm", res, res)
    scale = np.maximum(1.0, np.abs(y).max(axis=1)) ** 2 * n * 1e-24
    undefined = np.any(ss <= scale, axis=1)
    norm = res / np.sqrt(np.where(ss <= scale, 1.0, ss))[:, None, :]
    out = np.clip(np.einsum("bni,bnj->bij", norm, norm), -1.0, 1.0)
    out[undefined] = np.nan
    return out


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


def _column_space(z: np.ndarray) -> np.ndarray:
    """An orthonormal basis Q of the column space of [1, z] (rank-deficient z allowed): H = Q Q'."""
    design = np.column_stack([np.ones(len(z)), z])
    u, s, _ = np.linalg.svd(design, full_matrices=False)
    keep = s > s[0] * max(design.shape) * np.finfo(float).eps
    return u[:, keep]


def freedman_lane_null(x, y, covar, perms) -> np.ndarray:
    """Partial correlations r* of x with y* = y_hat + P e, one per row of ``perms`` (Pearson).

    The reduced model y ~ [1, Z] gives fitted values y_hat = H y and residuals e = (I - H) y
    (H the hat matrix of [1, Z]). For a permutation P, y* = y_hat + P e, and r* is exactly
    partial_corr(x, y*, Z): y* is re-residualized on Z, resid(y*) = (I - H) P e, so

        r* = rx' (I - H) P e / (|rx| |(I - H) P e|),   rx = (I - H) x.

    ``perms`` is an (m, n) array of index permutations; the result has length m. A
    permutation for which (I - H) P e vanishes gives r* = 0 (its numerator vanishes too).
    """
    x, y = _as_1d(x, "x"), _as_1d(y, "y")
    z = _covar_2d(covar, len(x))
    q = _column_space(z)
    rx = x - q @ (q.T @ x)
    e = y - q @ (q.T @ y)
    pe = e[np.asarray(perms, dtype=np.intp)]  # row j is P_j e
    resid = pe - (pe @ q) @ q.T  # (I - H) P_j e, one per row
    norms = np.linalg.norm(resid, axis=1) * np.linalg.norm(rx)
    num = resid @ rx
    scale = float(np.linalg.norm(e)) * float(np.linalg.norm(rx))
    ok = norms > scale * 1e-12
    out = np.zeros(len(pe))
    out[ok] = np.clip(num[ok] / norms[ok], -1.0, 1.0)
    return out


def permutation_distribution(x, y, covar, n_perm: int = 2000, seed: int = 0,
                             method: str = "pearson") -> tuple[float, np.ndarray]:
    """The observed partial correlation and its Freedman-Lane permutation null (n_perm values).

    The observed value is partial_corr(x, y, covar, method), the statistic reported; the
    null values are the same statistic recomputed on (x, y*) with y* = y_hat + P e from the
    reduced model y ~ [1, Z] (see ``freedman_lane_null``). With method="spearman", x, y and
    the single control are ranked first and Freedman-Lane runs on the ranks with Pearson,
    so the permuted statistic is the reported one (a multi-column covar is refused).
    """
    if n_perm < 1:
        raise StatsError(f"n_perm must be at least 1, got {n_perm}")
    observed = partial_corr(x, y, covar, method)  # validates and raises on undefined
    x, y, z = _prepared(x, y, covar, method)
    rng = np.random.default_rng(seed)
    perms = rng.permuted(np.broadcast_to(np.arange(len(x)), (n_perm, len(x))), axis=1)
    return observed, freedman_lane_null(x, y, z, perms)


def permutation_p(x, y, covar, n_perm: int = 2000, seed: int = 0, method: str = "pearson") -> float:
    """Two-sided Freedman-Lane permutation p of the partial correlation of x and y given covar.

    p = (1 + #{|r*| >= |r_obs|}) / (n_perm + 1), with r_obs = partial_corr(x, y, covar, method)
    and r* = partial_corr(x, y_hat + P e, covar) for random permutations P of the residuals e
    of the reduced model y ~ [1, Z] (y* re-residualized on Z). method="spearman" ranks x, y
    and a 1-D control first and permutes on the ranks; it refuses a multi-column covar.
    """
    observed, null = permutation_distribution(x, y, covar, n_perm, seed, method)
    count = int(np.sum(np.abs(null) >= abs(observed) - 1e-12))
    return float((1 + count) / (n_perm + 1))


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


def cluster_picks(m: int, n_boot: int = 2000, seed: int = 0) -> np.ndarray:
    """The (n_boot, m) cluster indices ``cluster_bootstrap_values`` draws for this seed, row b being
    resample b: a vectorized statistic over these rows gives the same values as the loop."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, m, m) for _ in range(n_boot)]) if n_boot else np.empty((0, m), dtype=int)


def jackknife_picks(m: int) -> np.ndarray:
    """(m, m - 1) cluster indices: row i leaves cluster i out (``jackknife``'s samples, for a vectorized
    statistic)."""
    return np.stack([np.delete(np.arange(m), i) for i in range(m)])


def kept_resamples(values, n_boot: int) -> np.ndarray:
    """The finite values of a vectorized bootstrap (NaN: undefined on that resample), under the rule
    ``cluster_bootstrap_values`` applies: Undefined when fewer than half of the resamples are defined."""
    values = np.asarray(values, dtype=float)
    kept = values[np.isfinite(values)]
    if len(kept) < n_boot // 2:
        raise Undefined(f"the statistic was undefined on {n_boot - len(kept)} of {n_boot} bootstrap resamples")
    return kept


def jackknife_checked(values) -> np.ndarray:
    """A vectorized jackknife's values, under ``jackknife``'s rule: every leave-one-out value must exist."""
    values = np.asarray(values, dtype=float)
    bad = np.flatnonzero(~np.isfinite(values))
    if len(bad):
        raise Undefined(f"the statistic is undefined without cluster {bad[0]}")
    return values


def cluster_bootstrap_values(clusters: Sequence, statistic: Callable[[list], float], n_boot: int = 2000,
                             seed: int = 0) -> np.ndarray:
    """The statistic on n_boot resamples of whole clusters (runs), undefined resamples dropped.

    Resample b draws m = len(clusters) clusters with replacement and keeps
    theta*_b = statistic([clusters[i] for i in pick_b]) when it is defined and finite.
    Raises Undefined when fewer than half of the resamples are defined.
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
    return np.asarray(values, dtype=float)


def cluster_bootstrap(clusters: Sequence, statistic: Callable[[list], float], n_boot: int = 2000,
                      seed: int = 0, level: float = 0.95) -> tuple[float, float, int]:
    """Percentile interval of ``statistic`` over resamples of whole clusters (runs).

    ``clusters`` is one entry per run (all of that run's points travel together).
    Resamples on which the statistic is undefined are dropped and counted; the third
    value is how many were kept. The kept values themselves: ``cluster_bootstrap_values``.
    """
    values = cluster_bootstrap_values(clusters, statistic, n_boot, seed)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(values, [alpha, 1 - alpha])
    return float(lo), float(hi), len(values)


def jackknife(clusters: Sequence, statistic: Callable[[list], float]) -> np.ndarray:
    """Leave-one-cluster-out values theta_(i) = statistic(clusters without cluster i), i = 1..m.

    Raises Undefined if the statistic is undefined (or not finite) on any of them: the
    jackknife needs every value.
    """
    m = len(clusters)
    if m < 2:
        raise StatsError(f"the jackknife needs at least 2 clusters, got {m}")
    values = np.empty(m)
    for i in range(m):
        try:
            v = float(statistic([c for j, c in enumerate(clusters) if j != i]))
        except StatsError as exc:
            raise Undefined(f"the statistic is undefined without cluster {i} ({exc})") from None
        if not np.isfinite(v):
            raise Undefined(f"the statistic is not finite without cluster {i}")
        values[i] = v
    return values


def jackknife_se(jack_values) -> float:
    """sqrt((m - 1) / m * sum_i (theta_(i) - mean)^2) over m leave-one-out values."""
    v = _as_1d(jack_values, "jack_values")
    m = len(v)
    if m < 2:
        raise StatsError(f"the jackknife standard error needs at least 2 values, got {m}")
    return float(math.sqrt((m - 1) / m * np.sum((v - v.mean()) ** 2)))


def bca_interval(boot_values, estimate: float, jack_values, level: float = 0.95) -> tuple[float, float]:
    """Efron's bias-corrected and accelerated (BCa) bootstrap interval.

    z0 = Phi^-1(share of boot values < estimate, ties counted as half),
    a = sum_i (m - theta_(i))^3 / (6 (sum_i (m - theta_(i))^2)^1.5) from the jackknife
    values theta_(i) (m their mean), and the interval is the pair of quantiles of the boot
    values at Phi(z0 + (z0 + z_alpha) / (1 - a (z0 + z_alpha))) for z_alpha = Phi^-1((1 -
    level) / 2) and Phi^-1((1 + level) / 2). With a = 0 and z0 = 0 it is the percentile
    interval. If the jackknife values do not vary, a is undefined and taken as 0; if no
    boot value lies on one side of the estimate (z0 infinite), raises StatsError.
    """
    boot = _as_1d(boot_values, "boot_values")
    jack = _as_1d(jack_values, "jack_values")
    if len(boot) < 1:
        raise StatsError("BCa undefined: no bootstrap values")
    if not 0 < level < 1:
        raise StatsError(f"level must be in (0, 1), got {level}")
    if not math.isfinite(estimate):
        raise StatsError("BCa undefined: the estimate is not finite")
    if np.all(boot == boot[0]) and boot[0] == estimate:
        return float(boot[0]), float(boot[0])  # a degenerate bootstrap distribution at the estimate
    share = (np.count_nonzero(boot < estimate) + np.count_nonzero(boot <= estimate)) / (2 * len(boot))
    if share <= 0 or share >= 1:
        raise StatsError(f"BCa undefined: every bootstrap value lies on one side of the estimate {estimate:.6g}")
    z0 = float(special.ndtri(share))
    d = jack.mean() - jack
    ss = float(d @ d)
    a = float(np.sum(d**3)) / (6 * ss**1.5) if len(jack) > 1 and ss > 0 else 0.0
    if not math.isfinite(a):
        a = 0.0
    probs = []
    for z_alpha in (special.ndtri((1 - level) / 2), special.ndtri((1 + level) / 2)):
        w = z0 + z_alpha
        denom = 1 - a * w
        if denom <= 0:
            raise StatsError(f"BCa undefined: acceleration a = {a:.3g} is too large for level {level}")
        probs.append(float(special.ndtr(z0 + w / denom)))
    lo, hi = np.quantile(boot, probs)
    return float(lo), float(hi)


def bootstrap_p(boot_values, estimate: float) -> float:
    """Two-sided p of H0: theta = 0 from the bootstrap distribution shifted to the null.

    p = (1 + #{b : |theta*_b - theta_hat| >= |theta_hat|}) / (B + 1).
    """
    boot = _as_1d(boot_values, "boot_values")
    if len(boot) < 1:
        raise StatsError("no bootstrap values")
    if not math.isfinite(estimate):
        raise StatsError("the estimate is not finite")
    count = int(np.count_nonzero(np.abs(boot - estimate) >= abs(estimate)))
    return float((1 + count) / (len(boot) + 1))


def _check_se_df(se: float, df: float) -> None:
    if not (math.isfinite(se) and se > 0):
        raise StatsError(f"the standard error must be positive and finite, got {se}")
    if not df > 0:
        raise StatsError(f"degrees of freedom must be positive, got {df}")


def t_interval(estimate: float, se: float, df: float, level: float = 0.95) -> tuple[float, float]:
    """estimate -+ t_{(1 + level)/2, df} se."""
    _check_se_df(se, df)
    if not 0 < level < 1:
        raise StatsError(f"level must be in (0, 1), got {level}")
    half = float(stats.t.ppf((1 + level) / 2, df)) * se
    return estimate - half, estimate + half


def tost_p(estimate: float, se: float, df: float, bound: float) -> float:
    """Two one-sided t tests (TOST) of equivalence within (-bound, +bound).

    H0_lower: theta <= -bound, t_L = (estimate + bound) / se, p_lower = P(T_df >= t_L);
    H0_upper: theta >= +bound, t_U = (estimate - bound) / se, p_upper = P(T_df <= t_U);
    p = max(p_lower, p_upper). A small p means the estimate is significantly inside
    (-bound, +bound): equivalent within the bound.
    """
    _check_se_df(se, df)
    if not bound > 0:
        raise StatsError(f"the equivalence bound must be positive, got {bound}")
    p_lower = float(stats.t.sf((estimate + bound) / se, df))
    p_upper = float(stats.t.cdf((estimate - bound) / se, df))
    return max(p_lower, p_upper)


def min_detectable_effect(se: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """(z_{1 - alpha/2} + z_power) se: the smallest true effect a two-sided level-alpha z test
    detects with the given power."""
    if not (math.isfinite(se) and se >= 0):
        raise StatsError(f"the standard error must be non-negative and finite, got {se}")
    if not (0 < alpha < 1 and 0 < power < 1):
        raise StatsError(f"alpha and power must be in (0, 1), got {alpha}, {power}")
    return float((special.ndtri(1 - alpha / 2) + special.ndtri(power)) * se)


def runs_needed(se: float, n: int, effect: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """ceil(n (min_detectable_effect(se, alpha, power) / effect)^2): the runs needed to detect
    ``effect`` with the given power, given standard error se at n runs.

    Assumes se scales as 1 / sqrt(n) (independent runs, the same design), so that at N runs
    the detectable effect is min_detectable_effect(se) sqrt(n / N).
    """
    if not n >= 1:
        raise StatsError(f"n must be at least 1, got {n}")
    if not (math.isfinite(effect) and effect != 0):
        raise StatsError(f"the effect must be non-zero and finite, got {effect}")
    need = n * (min_detectable_effect(se, alpha, power) / abs(effect)) ** 2
    return max(1, math.ceil(need - 1e-9 * need))
