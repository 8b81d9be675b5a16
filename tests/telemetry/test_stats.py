"""Known answers, invariances, degenerate inputs and coverage of telemetry.stats."""

import math

import numpy as np
import pytest

from telemetry import stats


def population(n=40, seed=0, rho=0.5):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=n)
    e = rng.multivariate_normal([0, 0], [[1, rho], [rho, 1]], size=n)
    return z, 0.8 * z + e[:, 0], -0.5 * z + e[:, 1]



def partial_corr_closed_form(x, y, z) -> float:
    """Test-only oracle, independent of stats.partial_corr's residual form:
    (r12 - r1z r2z) / sqrt((1 - r1z^2)(1 - r2z^2)) for a single control z."""
    r12, r1z, r2z = stats.pearson(x, y), stats.pearson(x, z), stats.pearson(y, z)
    return float((r12 - r1z * r2z) / math.sqrt((1 - r1z**2) * (1 - r2z**2)))

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
    assert partial_corr_closed_form(x, y, z) == pytest.approx(1 / 3, abs=1e-12)
    z2, x2, y2 = population(200, 1)
    assert stats.partial_corr(x2, y2, z2) == pytest.approx(partial_corr_closed_form(x2, y2, z2), abs=1e-12)


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
    assert "only 8 runs" in stats.small_sample_warning(8) and stats.small_sample_warning(20) is None


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


# -- Freedman-Lane permutation test -------------------------------------------------------
def _spline_null(rng, n, items=1000):
    """x and y independent given in-domain accuracy z, each bending with z; the spline control."""
    correct = rng.integers(200, 900, size=n)  # in-domain accuracy spread uniformly over [0.2, 0.9)
    z = correct / items
    x = np.sin(3 * z) + 0.2 * rng.normal(size=n)
    y = 4 * (z - 0.5) ** 2 + 0.2 * rng.normal(size=n)
    return x, y, stats.control_matrix("spline", correct, items)


def null_rejection_rate(n, sims, n_perm=199, alpha=0.05, seed=0, permutation_p=None):
    permutation_p = permutation_p or stats.permutation_p
    rng = np.random.default_rng(seed)
    rejected = 0
    for _ in range(sims):
        x, y, covar = _spline_null(rng, n)
        rejected += permutation_p(x, y, covar, n_perm, int(rng.integers(2**31))) <= alpha
    return rejected / sims


@pytest.mark.parametrize("n", [24, 12])
def test_permutation_p_holds_its_level_with_the_spline_control(n):
    """2,000 simulated nulls at 199 permutations each: about 2 s per n (2 busy CPU cores).

    With 199 permutations, p <= 0.05 means at most 9 of 199 permuted |r*| reach |r_obs|:
    an exact 5% level under exchangeability. Monte Carlo SE of the rate: 0.005. On these
    same nulls Freedman-Lane rejects 5.9% (n = 24) and 5.15% (n = 12); the old test (x's
    residuals permuted, y* never re-residualized: Kennedy's method) rejected 8.4% and 13.3%.
    """
    rate = null_rejection_rate(n, sims=2000, seed=n)
    assert 0.035 <= rate <= 0.065, rate


def test_freedman_lane_null_is_the_partial_correlation_of_the_permuted_data():
    rng = np.random.default_rng(11)
    x, y, covar = _spline_null(rng, 15)
    perms = np.array([rng.permutation(15) for _ in range(20)] + [np.arange(15)])
    design = np.column_stack([np.ones(15), covar])
    y_hat = design @ np.linalg.lstsq(design, y, rcond=None)[0]
    e = y - y_hat
    expected = [stats.partial_corr(x, y_hat + e[p], covar) for p in perms]  # y* re-residualized
    assert stats.freedman_lane_null(x, y, covar, perms) == pytest.approx(expected, abs=1e-12)
    assert expected[-1] == pytest.approx(stats.partial_corr(x, y, covar), abs=1e-12)  # identity: observed


def test_permutation_p_formula_and_reproducibility():
    z, x, y = population(30, 12, rho=0.3)
    observed, null = stats.permutation_distribution(x, y, z, 999, seed=3)
    assert observed == stats.partial_corr(x, y, z) and null.shape == (999,)
    p = stats.permutation_p(x, y, z, 999, seed=3)
    assert p == (1 + np.sum(np.abs(null) >= abs(observed) - 1e-12)) / 1000
    assert p == stats.permutation_p(x, y, z, 999, seed=3)
    assert 1 / 1000 <= p <= 1


def test_permutation_p_is_fast_enough_for_large_populations():
    import time

    rng = np.random.default_rng(0)
    correct = rng.integers(200, 900, size=500)
    covar = stats.control_matrix("spline", correct, 1000)
    x, y = rng.normal(size=500), rng.normal(size=500)
    start = time.perf_counter()
    stats.permutation_p(x, y, covar, 2000)
    assert time.perf_counter() - start < 1.0


def test_spearman_permutation_ranks_the_statistic_it_reports():
    rng = np.random.default_rng(13)
    n = 30
    z = rng.uniform(0.2, 0.9, n)
    x = rng.normal(size=n)
    y = np.exp(4 * x) + 0.3 * z + 0.05 * rng.normal(size=n)  # monotone in x but far from linear
    observed, _ = stats.permutation_distribution(x, y, z, 200, method="spearman")
    assert observed == pytest.approx(stats.partial_corr(x, y, z, "spearman"), abs=1e-15)
    assert observed > 0.9
    assert stats.permutation_p(x, y, z, 999, method="spearman") == pytest.approx(1 / 1000)
    # Ranks only: monotone transforms of x, y and the control change nothing.
    p = stats.permutation_p(x, y, z, 499, seed=5, method="spearman")
    assert stats.permutation_p(x**3, np.log(y), np.exp(z), 499, seed=5, method="spearman") == p
    # A 1-column matrix is a single control.
    assert stats.permutation_p(x, y, z[:, None], 499, seed=5, method="spearman") == p


def test_spearman_refuses_a_ranked_basis():
    from scipy.stats import rankdata

    rng = np.random.default_rng(14)
    acc = rng.uniform(0.2, 0.9, 30)
    x, y = rng.normal(size=30), rng.normal(size=30)
    basis = stats.spline_basis(acc)
    with pytest.raises(stats.StatsError, match="rank the in-domain accuracy before expanding it into a basis"):
        stats.partial_corr(x, y, basis, "spearman")
    with pytest.raises(stats.StatsError, match="rank the in-domain accuracy before expanding it into a basis"):
        stats.permutation_p(x, y, basis, 99, method="spearman")
    # The supported route: rank the in-domain accuracy, expand the ranks, Pearson on ranked x and y.
    ranked = stats.spline_basis(rankdata(acc))
    r = stats.partial_corr(rankdata(x), rankdata(y), ranked)
    assert -1 <= r <= 1


# -- bootstrap, jackknife, equivalence and power -------------------------------------------
def test_cluster_bootstrap_values_back_the_interval():
    clusters = [np.array([i, i]) for i in range(10)]

    def stat(cs):
        return float(np.mean(np.concatenate(cs)))

    values = stats.cluster_bootstrap_values(clusters, stat, 400, seed=2)
    assert values.shape == (400,)
    lo, hi, kept = stats.cluster_bootstrap(clusters, stat, 400, seed=2)
    assert kept == 400 and (lo, hi) == tuple(np.quantile(values, [0.025, 0.975]))

    def mostly_undefined(cs):
        if cs[0][0] != 0:
            raise stats.Undefined("no")
        return 0.0

    with pytest.raises(stats.Undefined, match="undefined on"):
        stats.cluster_bootstrap_values(clusters, mostly_undefined, 100)


def test_jackknife_se_of_the_mean_is_the_standard_error():
    x = np.random.default_rng(15).exponential(size=25)
    jack = stats.jackknife([np.array([v]) for v in x], lambda cs: float(np.mean(np.concatenate(cs))))
    assert jack == pytest.approx([np.delete(x, i).mean() for i in range(25)])
    assert stats.jackknife_se(jack) == pytest.approx(x.std(ddof=1) / math.sqrt(25), rel=1e-12)

    def undefined_without_first(cs):
        if len(cs) < 25 and cs[0][0] != x[0]:
            raise stats.Undefined("needs the first run")
        return 0.0

    with pytest.raises(stats.Undefined, match="without cluster 0"):
        stats.jackknife([np.array([v]) for v in x], undefined_without_first)


def test_bca_matches_scipy_on_the_mean_of_a_skewed_sample():
    from scipy.stats import bootstrap

    x = np.random.default_rng(16).lognormal(sigma=1.0, size=30)
    for level in (0.9, 0.95):
        res = bootstrap((x,), np.mean, n_resamples=3000, method="BCa", confidence_level=level,
                        rng=np.random.default_rng(17))
        jack = np.array([np.delete(x, i).mean() for i in range(len(x))])
        lo, hi = stats.bca_interval(res.bootstrap_distribution, float(x.mean()), jack, level)
        assert lo == pytest.approx(res.confidence_interval.low, rel=1e-10)
        assert hi == pytest.approx(res.confidence_interval.high, rel=1e-10)
        # Skewed data: BCa shifts the percentile interval towards the long right tail.
        p_lo, p_hi = np.quantile(res.bootstrap_distribution, [(1 - level) / 2, (1 + level) / 2])
        assert lo > p_lo and hi > p_hi


def test_bca_without_bias_or_acceleration_is_the_percentile_interval():
    boot = np.arange(-500.0, 501.0)  # symmetric around the estimate 0: z0 = Phi^-1(0.5) = 0
    jack = np.array([-1.0, 0.0, 1.0])  # symmetric jackknife: a = 0
    assert stats.bca_interval(boot, 0.0, jack, 0.9) == tuple(np.quantile(boot, [0.05, 0.95]))
    # Constant jackknife values: a undefined, taken as 0.
    assert stats.bca_interval(boot, 0.0, np.ones(5)) == tuple(np.quantile(boot, [0.025, 0.975]))


def test_bca_degenerate_cases():
    assert stats.bca_interval(np.full(50, 0.3), 0.3, np.full(5, 0.3)) == (0.3, 0.3)
    with pytest.raises(stats.StatsError, match="BCa undefined"):
        stats.bca_interval(np.linspace(1, 2, 50), 0.5, np.arange(5.0))  # z0 = -inf
    with pytest.raises(stats.StatsError, match="BCa undefined"):
        stats.bca_interval(np.full(50, 0.3), 0.2, np.arange(5.0))  # all boot values above the estimate


def test_bootstrap_p_known_answer():
    boot = 1.0 + np.array([-2, -1.5, -0.5, 0, 0.5, 1.0, 3])  # |theta* - 1| >= 1 for 4 of 7
    assert stats.bootstrap_p(boot, 1.0) == pytest.approx(5 / 8)
    assert stats.bootstrap_p(-boot, -1.0) == pytest.approx(5 / 8)
    assert stats.bootstrap_p(np.full(99, 2.0), 2.0) == pytest.approx(1 / 100)  # never reaches 0
    assert stats.bootstrap_p(np.linspace(-1, 1, 99), 0.0) == 1.0  # estimate 0: nothing rejects


def test_t_interval_known_answer():
    lo, hi = stats.t_interval(1.0, 0.5, 10, 0.95)
    assert lo == pytest.approx(1 - 2.2281388519649385 * 0.5) and hi == pytest.approx(1 + 2.2281388519649385 * 0.5)


def test_tost_p_directions():
    from scipy.stats import t

    assert stats.tost_p(0.0, 0.01, 20, 0.05) == pytest.approx(t.sf(5.0, 20)) and t.sf(5.0, 20) < 1e-4
    assert stats.tost_p(0.2, 0.01, 20, 0.05) == pytest.approx(t.cdf(15.0, 20)) and t.cdf(15.0, 20) > 0.999
    assert stats.tost_p(-0.2, 0.01, 20, 0.05) == pytest.approx(t.cdf(15.0, 20))
    # Near the upper bound the upper test decides: t_U = (0.04 - 0.05) / 0.01 = -1.
    assert stats.tost_p(0.04, 0.01, 20, 0.05) == pytest.approx(t.cdf(-1.0, 20))
    assert stats.tost_p(-0.04, 0.01, 20, 0.05) == pytest.approx(t.cdf(-1.0, 20))
    assert stats.tost_p(0.0, 0.1, 20, 0.05) > 0.3  # too noisy to claim equivalence


def test_power_helpers_known_answers():
    assert stats.min_detectable_effect(0.1) == pytest.approx((1.959964 + 0.841621) * 0.1, rel=1e-6)
    assert stats.min_detectable_effect(0.1, 0.01, 0.9) == pytest.approx((2.575829 + 1.281552) * 0.1, rel=1e-6)
    assert stats.runs_needed(0.05, 40, 0.1) == math.ceil(40 * (2.8016 * 0.05 / 0.1) ** 2) == 79
    # se proportional to 1/sqrt(n): at the returned n the detectable effect is at most the target.
    n_new = stats.runs_needed(0.05, 40, 0.1)
    assert stats.min_detectable_effect(0.05 * math.sqrt(40 / n_new)) <= 0.1
    assert stats.min_detectable_effect(0.05 * math.sqrt(40 / (n_new - 1))) > 0.1
