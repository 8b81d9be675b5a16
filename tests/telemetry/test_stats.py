"""Known answers, invariances, degenerate inputs and coverage of telemetry.stats."""

import math
import warnings

import numpy as np
import pytest

from telemetry import stats


def population(n=40, seed=0, rho=0.5):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=n)
    e = rng.multivariate_normal([0, 0], [[1, rho], [rho, 1]], size=n)
    return z, 0.8 * z + e[:, 0], -0.5 * z + e[:, 1]


def test_pearson_known_answer():
    assert stats.pearson([1, 2, 3, 4], [2, 4, 6, 8]) == pytest.approx(1.0)
    assert stats.pearson([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert stats.pearson([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)


def test_partial_corr_known_answer():
    # Built from orthonormal centred vectors so that r12 = r1z = r2z = 0.5 exactly:
    # r12.z = (0.5 - 0.25) / (1 - 0.25) = 1/3.
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(10, 4)))
    e = q[:, 1:] - q[:, 1:].mean(axis=0)
    e = np.linalg.qr(np.column_stack([np.ones(10), e]))[0][:, 1:4]  # orthonormal and orthogonal to 1
    a = 0.25 / math.sqrt(0.75)
    z = e[:, 0]
    x = 0.5 * e[:, 0] + math.sqrt(0.75) * e[:, 1]
    y = 0.5 * e[:, 0] + a * e[:, 1] + math.sqrt(0.75 - a * a) * e[:, 2]
    assert stats.pearson(x, y) == pytest.approx(0.5) and stats.pearson(x, z) == pytest.approx(0.5)
    assert stats.partial_corr(x, y, z) == pytest.approx(1 / 3, abs=1e-12)
    assert stats.partial_corr_closed_form(x, y, z) == pytest.approx(1 / 3, abs=1e-12)
    z2, x2, y2 = population(200, 1)
    assert stats.partial_corr(x2, y2, z2) == pytest.approx(stats.partial_corr_closed_form(x2, y2, z2), abs=1e-12)


@pytest.mark.parametrize("k", [1, 3])
def test_partial_corr_agrees_with_pingouin(k):
    pg = pytest.importorskip("pingouin")
    import pandas as pd

    rng = np.random.default_rng(k)
    n = 50
    covar = rng.normal(size=(n, k))
    x = covar @ rng.normal(size=k) + rng.normal(size=n)
    y = covar @ rng.normal(size=k) + 0.3 * x + rng.normal(size=n)
    df = pd.DataFrame({"x": x, "y": y, **{f"c{i}": covar[:, i] for i in range(k)}})
    ref = pg.partial_corr(data=df, x="x", y="y", covar=[f"c{i}" for i in range(k)])
    ours = stats.partial_corr(x, y, covar if k > 1 else covar[:, 0])
    assert abs(ours - float(ref["r"].iloc[0])) < 1e-10
    _, p = stats.t_test(ours, n, k)
    assert p == pytest.approx(float(ref["p_val"].iloc[0] if "p_val" in ref else ref["p-val"].iloc[0]), rel=1e-6)


def test_spearman_matches_scipy():
    from scipy.stats import spearmanr

    _, x, y = population(30, 2)
    assert stats.spearman(x, y) == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)


def test_invariances():
    z, x, y = population(60, 3)
    r = stats.partial_corr(x, y, z)
    assert -1 <= r <= 1
    assert stats.partial_corr(y, x, z) == pytest.approx(r, abs=1e-12)  # symmetric
    assert stats.partial_corr(3 * x + 7, y, z) == pytest.approx(r, abs=1e-12)  # affine in x
    assert stats.partial_corr(x, -2 * y + 1, z) == pytest.approx(-r, abs=1e-12)  # sign follows the slope
    assert stats.partial_corr(x, y, 5 * z - 4) == pytest.approx(r, abs=1e-12)  # affine in the control


def test_degenerate_inputs_never_give_a_silent_nan():
    z, x, y = population(10, 4)
    with pytest.raises(stats.Undefined, match="zero variance"):
        stats.pearson(np.zeros(10), y)
    with pytest.raises(stats.Undefined):
        stats.partial_corr(x, z * 2.0, z)  # y is a linear function of the control: nothing left
    with pytest.raises(stats.StatsError, match="NaN"):
        stats.pearson([1, float("nan"), 3], [1, 2, 3])
    with pytest.raises(stats.StatsError, match="degrees of freedom"):
        stats.partial_corr(x[:3], y[:3], z[:3])
    assert "refused" in stats.small_sample_warning(4)
    assert "only 12 runs" in stats.small_sample_warning(12)
    assert stats.small_sample_warning(20) is None
    with pytest.raises(stats.Undefined, match="does not vary"):
        stats.spline_basis(np.ones(10))


def test_t_test_and_fisher_interval():
    t, p = stats.t_test(0.5, 30, 1)
    assert t == pytest.approx(0.5 * math.sqrt(27) / math.sqrt(0.75))
    lo, hi = stats.fisher_interval(0.5, 30, 1)
    assert lo < 0.5 < hi and hi - lo < 1
    assert stats.t_test(1.0, 10, 1) == (math.inf, 0.0)


def test_permutation_p_is_small_for_strong_and_large_for_null():
    z, x, _ = population(40, 5)
    y = x + 0.1 * np.random.default_rng(0).normal(size=40)
    assert stats.permutation_p(x, y, z, 500) < 0.01
    rng = np.random.default_rng(6)
    assert stats.permutation_p(rng.normal(size=40), rng.normal(size=40), z, 500) > 0.01


def test_bh_qvalues_match_statsmodels():
    from statsmodels.stats.multitest import multipletests

    p = [0.01, 0.04, 0.03, 0.2, 0.001]
    assert stats.bh_qvalues(p) == pytest.approx(list(multipletests(p, method="fdr_bh")[1]))
    assert math.isnan(stats.bh_qvalues([0.1, float("nan")])[1])


def test_probit_is_finite_at_0_and_1():
    v = stats.probit([0, 50, 100], [100, 100, 100])
    assert np.all(np.isfinite(v)) and v[1] == pytest.approx(0.0) and v[0] == pytest.approx(-v[2])


def test_spline_control_removes_a_nonlinear_confound():
    rng = np.random.default_rng(7)
    a_id = rng.uniform(0.2, 0.9, size=300)
    x = np.sin(6 * a_id) + 0.1 * rng.normal(size=300)
    y = np.sin(6 * a_id) + 0.1 * rng.normal(size=300)
    assert stats.partial_corr(x, y, a_id) > 0.3  # the linear control leaves the bend in
    assert abs(stats.partial_corr(x, y, stats.spline_basis(a_id, 6))) < 0.2


def test_cluster_bootstrap_resamples_clusters_and_warns_small():
    clusters = [np.array([i, i]) for i in range(10)]
    lo, hi, kept = stats.cluster_bootstrap(clusters, lambda cs: float(np.mean(np.concatenate(cs))), 500)
    assert kept == 500 and lo < 4.5 < hi
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        stats.warn_if_small(8)
    assert w and "only 8 runs" in str(w[0].message)


def test_bootstrap_interval_covers_the_true_partial_correlation():
    """Simulated populations with a known partial correlation: coverage near 95%."""
    rho, n, sims, hits = 0.4, 40, 200, 0
    for s in range(sims):
        z, x, y = population(n, 1000 + s, rho)  # x, y | z have correlation rho by construction
        clusters = [np.array([i]) for i in range(n)]

        def stat(cs, x=x, y=y, z=z):
            idx = np.concatenate(cs)
            return stats.partial_corr(x[idx], y[idx], z[idx])

        lo, hi, _ = stats.cluster_bootstrap(clusters, stat, n_boot=300, seed=s)
        hits += lo <= rho <= hi
    assert 0.88 <= hits / sims <= 0.99, hits / sims
