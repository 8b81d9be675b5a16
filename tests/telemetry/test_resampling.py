"""The batched bootstrap and label swaps (telemetry.resampling) equal the loop over populations.

The loop (fragmentation.stack returning None) is the reference: it re-scales every
resampled Population exactly as the point estimate does. Both paths draw the same
resamples, so every number in the summary must agree to rounding.
"""

import math

import numpy as np
import pytest

from telemetry import fragmentation, stats
from telemetry.analysis import analyze
from telemetry.config import AnalysisOptions

from .conftest import synthetic_rows


def _numbers(obj, path=""):
    """Every number in a summary, keyed by its path (strings and flags are compared as they are)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _numbers(v, f"{path}/{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _numbers(v, f"{path}[{i}]")
    else:
        yield path, obj


def _assert_same(fast: dict, loop: dict) -> None:
    a, b = dict(_numbers(fast)), dict(_numbers(loop))
    assert a.keys() == b.keys()
    for key in a:
        x, y = a[key], b[key]
        if isinstance(x, float) and isinstance(y, float) and not (math.isnan(x) and math.isnan(y)):
            assert x == pytest.approx(y, rel=1e-9, abs=1e-12), key
        elif not isinstance(x, float):
            assert x == y, key


@pytest.mark.parametrize("points", ["final", "all"])
@pytest.mark.parametrize("control", ["linear", "probit"])
def test_batched_analysis_equals_the_loop_over_populations(monkeypatch, points, control):
    rows = synthetic_rows(n_runs=14, variants=("torch-fp32", "ort-int8", "ort-int4"))
    opts = AnalysisOptions(n_boot=200, n_perm=200, measure="exact", control=control, points=points)
    fast = analyze(rows, opts)
    monkeypatch.setattr(fragmentation, "stack", lambda *a, **k: None)
    loop = analyze(rows, opts)
    assert fast["headline"] and fast["comparisons"] and all(d["delta"] is not None for d in fast["headline"])
    _assert_same(fast, loop)


def test_batched_analysis_drops_the_same_undefined_resamples(monkeypatch):
    """A shift at 0 on most runs is undefined on many resamples: both paths keep the same ones."""
    rows = synthetic_rows(n_runs=12)
    for r in rows:
        if r["split"] == "length" and int(r["run"][1:]) % 4:
            r["correct"] = 0
    opts = AnalysisOptions(n_boot=200, n_perm=200, measure="exact")
    fast = analyze(rows, opts)
    monkeypatch.setattr(fragmentation, "stack", lambda *a, **k: None)
    _assert_same(fast, analyze(rows, opts))


def test_partial_corr_stack_equals_partial_corr_matrix_sample_by_sample():
    rng = np.random.default_rng(3)
    y = rng.normal(size=(40, 9, 3))
    z = rng.normal(size=(40, 9))
    z[5] = 0.25  # a constant control: dropped, as lstsq's rank cut-off drops it
    y[7, :, 1] = 2 * z[7] + 1  # nothing left of a column once z is regressed out: undefined
    got = stats.partial_corr_stack(y, z)
    for b in range(len(y)):
        if b == 7:
            assert np.isnan(got[b]).all()
            with pytest.raises(stats.Undefined):
                stats.partial_corr_matrix(y[b], z[b])
        else:
            np.testing.assert_allclose(got[b], stats.partial_corr_matrix(y[b], z[b]), rtol=1e-10, atol=1e-12)


def test_one_draw_of_all_swaps_is_the_stream_of_one_draw_per_swap():
    """swap_deltas draws (n_perm, runs) uniforms at once: the same flips as a draw per swap."""
    a, b = np.random.default_rng(9), np.random.default_rng(9)
    np.testing.assert_array_equal(a.random((50, 7)), np.stack([b.random(7) for _ in range(50)]))
