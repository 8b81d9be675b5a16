"""bench/common.py: how every benchmark point is timed, in rounds, and how a ratio and its spread are read."""

from __future__ import annotations

import time

import pytest

from bench.common import interleaved, paired_ratio, spread


def test_a_self_timed_repeat_lasts_until_its_measured_seconds_reach_the_minimum():
    """A decode point reports its steps' seconds (its prefill left out): the repeat goes on until those add up,
    however long the calls take around them, and its figure is their mean."""
    decode = lambda: (0.03, 15)  # noqa: E731 - 15 steps timed in 0.03 s
    out = interleaved({"decode": decode}, repeats=3, min_seconds=0.1, warmup=0, self_timed=True)["decode"]
    assert out["calls_per_repeat"] == [4, 4, 4]  # 0.03 x 4 is the first sum >= 0.1
    assert out["samples"] == pytest.approx([0.002] * 3) and out["median"] == pytest.approx(0.002)  # a step
    assert all(m >= 0.1 for m in out["measured_s_per_repeat"])


def test_a_wall_timed_repeat_lasts_at_least_the_minimum():
    out = interleaved({"sleep": lambda: time.sleep(0.01)}, repeats=2, min_seconds=0.035, warmup=0)["sleep"]
    assert all(n >= 3 for n in out["calls_per_repeat"]) and all(m >= 0.035 for m in out["measured_s_per_repeat"])
    assert all(s >= 0.01 for s in out["samples"]) and out["n"] == 2


def test_rounds_go_forwards_then_backwards_after_every_point_warmed_up():
    calls = []
    points = {name: (lambda name=name: calls.append(name) or (1.0, 1)) for name in "abc"}
    interleaved(points, repeats=3, min_seconds=0.5, warmup=1, self_timed=True)
    assert "".join(calls) == "abc" + "abc" + "cba" + "abc"


def test_a_ratio_is_the_ratio_of_medians_with_the_quartiles_of_the_rounds():
    r = paired_ratio([2.0, 4.0, 6.0, 8.0, 100.0], [1.0, 1.0, 2.0, 2.0, 2.0])
    assert r["median"] == 6.0 / 2.0
    per_round = [2.0, 4.0, 3.0, 4.0, 50.0]
    assert (r["q1"], r["q3"]) == (spread(per_round)["q1"], spread(per_round)["q3"]) == (3.0, 4.0)
    with pytest.raises(ValueError):  # rounds that do not pair are refused, not truncated
        paired_ratio([1.0, 2.0], [1.0])


def test_a_figure_of_parts_measured_apart_spreads_with_each_parts_noise():
    """A cost measured in process times a req/s measured over HTTP: the spread of their product takes in both, the
    figure itself is the product of the medians; parts measured in the same rounds stay paired."""
    from bench.common import combined_spread

    r = combined_spread(lambda a, b: a * b, [1.0], [10.0, 20.0, 30.0])
    assert r["median"] == 20.0 and (r["q1"], r["q3"]) == (15.0, 25.0)  # a cost without noise: the req/s' spread
    paired = combined_spread(lambda ab, c: ab[0] / ab[1] + c, [(2.0, 1.0), (4.0, 2.0)], [0.0])
    assert paired["median"] == 3.0 / 1.5 and paired["q1"] == paired["q3"] == 2.0  # never 2 / 2 or 4 / 1
    both = combined_spread(lambda a, b: a * b, [1.0, 2.0], [10.0, 30.0])  # products 10, 30, 20, 60
    assert both["median"] == 1.5 * 20.0 and (both["q1"], both["q3"]) == (17.5, 37.5)


def test_a_self_timed_call_that_times_nothing_fails_instead_of_looping():
    with pytest.raises(ValueError, match="at least one unit"):
        interleaved({"decode": lambda: (0.0, 0)}, repeats=1, min_seconds=0.1, warmup=0, self_timed=True)
    from bench.common import combined_spread

    with pytest.raises(ValueError, match="at least one sample"):
        combined_spread(lambda a, b: a * b, [1.0], [])
