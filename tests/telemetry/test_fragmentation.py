"""The pre-registered answer: index, paired Δ, verdicts, power, noise controls and paired drops.

Known-answer tests on constructed tables, plus one test per defect the science issue found
(each fails on the code before the fix).
"""

import math

import numpy as np
import pytest

from telemetry import fragmentation, stats
from telemetry.analysis import analyze
from telemetry.config import AnalysisOptions
from telemetry.population import build_population

FAST = AnalysisOptions(n_boot=300, n_perm=200, measure="exact")
SHIFTS = ("base", "length", "order")


def structured_rows(n_runs=60, seed=0, n_items=4000, rho=0.6, variants=None, steps=(50, 100)):
    """Runs whose shift residuals (after in-domain skill) share a factor of known strength.

    Shift s = 0.45 + 0.08 skill + 0.05 (sqrt(rho) f + sqrt(1 - rho) e_s): on the latent scale
    every pair of shifts has partial correlation rho given skill. ``variants`` maps a variant
    name to a function (latent residual matrix, rng) -> replaced residual matrix.
    """
    rng = np.random.default_rng(seed)
    skill = rng.normal(size=n_runs)
    shared = rng.normal(size=n_runs)
    own = rng.normal(size=(n_runs, len(SHIFTS)))
    resid = math.sqrt(rho) * shared[:, None] + math.sqrt(1 - rho) * own
    rows = []
    for variant, change in {"torch-fp32": None, **(variants or {})}.items():
        res = resid if change is None else change(resid, rng)
        for r in range(n_runs):
            for k, step in enumerate(steps):
                t = (k + 1) / len(steps)
                p = {"id": 0.5 + 0.1 * skill[r] * t}
                for j, s in enumerate(SHIFTS):
                    p[s] = 0.45 + 0.08 * skill[r] * t + 0.05 * res[r, j] * t
                for split, prob in p.items():
                    rows.append({"run": f"r{r:03d}", "step": step, "variant": variant, "split": split,
                                 "n": n_items, "correct": int(rng.binomial(n_items, float(np.clip(prob, 0, 1))))})
    return rows


def test_index_known_answer():
    rows = structured_rows(n_runs=400, n_items=200_000, rho=0.6)
    pop = build_population(rows, "torch-fp32", "final", "exact")
    pairs = fragmentation.signal_pairs(list(SHIFTS))
    assert len(pairs) == 3
    assert fragmentation.index(pop, pairs, FAST) == pytest.approx(0.6, abs=0.07)


def test_index_needs_two_shifts_with_signal():
    rows = structured_rows(n_runs=20)
    pop = build_population(rows, "torch-fp32", "final", "exact")
    with pytest.raises(stats.Undefined, match="fewer than 2 shifts"):
        fragmentation.index(pop, fragmentation.signal_pairs(["base"]), FAST)


def test_delta_known_answer_when_a_variant_fragments():
    """A variant whose shift residuals lose the shared factor: index 0.6 -> 0, Δ about -0.6, a change."""
    def fragment(resid, rng):
        return rng.normal(size=resid.shape)

    rows = structured_rows(n_runs=80, n_items=50_000, variants={"ort-int2": fragment})
    summary = analyze(rows, FAST)
    d = next(h for h in summary["headline"] if h["variant"] == "ort-int2")
    assert d["delta"] == pytest.approx(-0.6, abs=0.15)
    assert d["ci_bca"][1] < 0 and d["ci_jackknife_t"][1] < 0
    assert d["verdict"] == fragmentation.CHANGES and d["q"] < 0.05


def test_identical_answers_give_delta_zero_on_every_point_mode():
    """Defect 1: pairing by run only gave onnx-fp32 (identical answers) a Δ of -0.142 with points=all."""
    rows = structured_rows(n_runs=30)
    twin = [dict(r, variant="onnx-fp32") for r in rows if r["step"] == 100]  # exported at the final step only
    for points in ("final", "all"):
        summary = analyze(rows + twin, AnalysisOptions(n_boot=200, n_perm=200, measure="exact", points=points))
        for c in summary["comparisons"]:
            assert c["delta"] == pytest.approx(0, abs=1e-12) and c["n_points"] == 30
        d = summary["headline"][0]
        assert d["delta"] == pytest.approx(0, abs=1e-12) and d["n_points"] == 30


def test_equivalence_verdict_for_a_variant_with_tiny_noise():
    def nudge(resid, rng):
        return resid + 0.02 * rng.normal(size=resid.shape)

    rows = structured_rows(n_runs=150, n_items=200_000, variants={"ort-int8": nudge})
    d = analyze(rows, FAST)["headline"][0]
    assert abs(d["delta"]) < 0.02 and d["p_tost"] < 0.05
    assert d["verdict"] == fragmentation.EQUIVALENT and "±0.05" in d["label"]


def test_power_figures_follow_the_jackknife_se():
    d = analyze(structured_rows(n_runs=40, variants={"ort-int4": lambda r, g: r + 0.5 * g.normal(size=r.shape)}),
                FAST)["headline"][0]
    se = d["se_jackknife"]
    assert d["min_detectable_delta"] == pytest.approx((1.959964 + 0.841621) * se, rel=1e-4)
    assert d["runs_needed_for_0.1"] == math.ceil(40 * ((1.959964 + 0.841621) * se / 0.1) ** 2)
    if d["verdict"] == fragmentation.INCONCLUSIVE:
        assert f"{d['min_detectable_delta']:.3f}" in d["why"]


def test_verdict_rules_on_constructed_deltas():
    opts = AnalysisOptions()
    base = {"delta": -0.2, "n_runs": 48, "ci_bca": [-0.3, -0.1], "ci_jackknife_t": [-0.31, -0.09],
            "ci_bca_tost": [-0.28, -0.12], "ci_jackknife_t_tost": [-0.29, -0.11], "p_tost": 0.99,
            "min_detectable_delta": 0.08, "runs_needed_for_0.1": 31}
    assert fragmentation.verdict(base, 0.01, opts)["verdict"] == fragmentation.CHANGES
    assert fragmentation.verdict(base, 0.2, opts)["verdict"] == fragmentation.INCONCLUSIVE  # q too large
    disagree = base | {"ci_jackknife_t": [-0.35, 0.02]}
    assert fragmentation.verdict(disagree, 0.01, opts)["verdict"] == fragmentation.INCONCLUSIVE
    equivalent = base | {"delta": 0.005, "ci_bca": [-0.03, 0.04], "ci_jackknife_t": [-0.03, 0.04],
                         "ci_bca_tost": [-0.02, 0.03], "ci_jackknife_t_tost": [-0.02, 0.03], "p_tost": 0.001}
    assert fragmentation.verdict(equivalent, 0.9, opts)["verdict"] == fragmentation.EQUIVALENT
    wide = equivalent | {"ci_bca_tost": [-0.06, 0.07]}  # the bootstrap disagrees with the t interval
    assert fragmentation.verdict(wide, 0.9, opts)["verdict"] == fragmentation.INCONCLUSIVE


def test_no_change_is_called_on_binomial_redraws_in_at_least_95_percent_of_tables():
    """Variants whose answers are the baseline's re-drawn as binomial noise around the same accuracies.

    Each variant's per-run, per-split count is an independent Binomial(n, p) draw around the
    same p that the baseline's count was drawn from, so no variant differs from full
    precision: 200 simulated tables of 24 runs, each with two such variants, their Δ index, BH
    across them and the verdict. (Re-drawing around the baseline's *observed* accuracy would
    add a second layer of noise, which attenuates correlations: a real effect, not a null.)
    """
    opts = AnalysisOptions(n_boot=100, n_perm=100, measure="exact")
    same = {"ort-int8": lambda r, g: r, "ort-int4": lambda r, g: r}
    pairs = fragmentation.signal_pairs(list(SHIFTS))
    called = 0
    for seed in range(200):
        rows = structured_rows(n_runs=24, seed=seed, n_items=400, steps=(100,), variants=same)
        pb = build_population(rows, "torch-fp32", "final", "exact")
        deltas = [fragmentation.delta_index(build_population(rows, v, "final", "exact"), pb, pairs, opts, seed)
                  for v in same]
        fragmentation.with_qvalues(deltas, opts)
        called += any(d["verdict"] == fragmentation.CHANGES for d in deltas)
    assert called <= 10, f"{called} of 200 null tables had a Δ called a change"


def test_within_run_honours_the_control():
    """Defect 4: the within-run analysis used a linear control whatever --control said."""
    rows = structured_rows(n_runs=30, steps=(20, 40, 60, 80))
    lin = analyze(rows, AnalysisOptions(n_boot=100, n_perm=100, measure="exact", control="linear"))
    spl = analyze(rows, AnalysisOptions(n_boot=100, n_perm=100, measure="exact", control="probit"))
    w_lin = lin["variants"]["torch-fp32"]["within_run"][0]["r_partial"]
    w_spl = spl["variants"]["torch-fp32"]["within_run"][0]["r_partial"]
    assert w_lin != pytest.approx(w_spl, abs=1e-9)


def test_every_delta_has_a_p_value_and_q_value():
    """Defect 3: Δs had intervals only."""
    rows = structured_rows(n_runs=30, variants={"ort-int4": lambda r, g: r + 0.3 * g.normal(size=r.shape)})
    summary = analyze(rows, FAST)
    for c in summary["comparisons"]:
        assert 0 < c["p"] <= 1 and 0 < c["q"] <= 1 and c["ci_bca"][0] <= c["ci_bca"][1]
    for d in summary["headline"]:
        assert 0 < d["p"] <= 1 and 0 < d["p_bootstrap"] <= 1 and 0 < d["q"] <= 1 and "verdict" in d


def test_noise_control_is_reported_beside_its_variant():
    noisy = {"ort-int2": lambda r, g: r + 0.5 * g.normal(size=r.shape),
             "noise@ort-int2": lambda r, g: r + 0.5 * g.normal(size=r.shape)}
    summary = analyze(structured_rows(n_runs=30, variants=noisy), FAST)
    by = {d["variant"]: d for d in summary["headline"]}
    assert by["noise@ort-int2"]["noise_control"] == "ort-int2" and by["ort-int2"]["noise_control"] is None
    from telemetry.report import headline_lines

    assert any("noise-matched control of ort-int2" in line for line in headline_lines(summary))


def test_paired_drops_known_answer():
    """A variant that costs 'base' 0.05 beyond what its in-domain drop predicts, and nothing elsewhere."""
    rows = structured_rows(n_runs=40, n_items=100_000)
    hurt = []
    for r in rows:
        r2 = dict(r, variant="ort-int4")
        if r["split"] == "base":
            r2["correct"] = int(r["correct"] - 0.05 * r["n"])
        hurt.append(r2)
    summary = analyze(rows + hurt, FAST)
    by = {d["shift"]: d for d in summary["drops"]}
    assert by["base"]["excess"] == pytest.approx(0.05, abs=0.005) and by["base"]["q"] < 0.05
    assert abs(by["length"]["excess"]) < 0.005 and by["length"]["ci_low"] <= 0 <= by["length"]["ci_high"]


def test_vectorized_drop_resamples_equal_the_resampling_loop():
    """The paired drops' bootstrap draws the same resamples as stats.cluster_bootstrap_values, all at once."""
    from telemetry.drops import excess_drop, excess_drop_resamples

    rows = structured_rows(n_runs=12)
    noisy = [dict(r, variant="ort-int4", correct=max(0, r["correct"] - (7 * i) % 40)) for i, r in enumerate(rows)]
    pb, pq = build_population(rows, "torch-fp32", measure="exact"), build_population(noisy, "ort-int4", measure="exact")
    pq, pb = fragmentation.paired(pq, pb)
    clusters = fragmentation.run_clusters(pq)
    loop = stats.cluster_bootstrap_values(
        clusters, lambda picks: excess_drop(fragmentation.resampled(pq, picks), fragmentation.resampled(pb, picks),
                                            "base"), 300, 5)
    fast = excess_drop_resamples(pq, pb, "base", stats.cluster_picks(len(clusters), 300, 5))
    np.testing.assert_allclose(fast, loop, rtol=1e-9, atol=1e-12)


def test_runs_a_variant_lacks_are_named_beside_its_delta():
    """A variant missing on some runs (a failed export check) is compared on the rest: the headline says so."""
    from telemetry.report import headline_lines

    rows = structured_rows(n_runs=20, variants={"ort-int4": lambda r, g: r})
    rows = [r for r in rows if not (r["variant"] == "ort-int4" and r["run"] in ("r003", "r011"))]
    summary = analyze(rows, FAST)
    d = summary["headline"][0]
    assert d["runs_missing"] == ["r003", "r011"] and d["n_runs"] == 18
    line = next(x for x in headline_lines(summary) if x.startswith("  ort-int4"))
    assert "2 run(s) of the baseline lack this variant, e.g. r003" in line
