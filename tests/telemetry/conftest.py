import numpy as np
import pytest


def synthetic_rows(n_runs=24, steps=(10, 20, 30), variants=("torch-fp32", "ort-int8"), seed=0, n_items=1000,
                   flat_split=None):
    """An accuracy table with a known structure: base and order share a run-level factor."""
    rng = np.random.default_rng(seed)
    rows = []
    skill = rng.normal(size=n_runs)
    shared = rng.normal(size=n_runs)
    for v_i, variant in enumerate(variants):
        for r in range(n_runs):
            for s_i, step in enumerate(steps):
                t = (s_i + 1) / len(steps)
                p = {
                    "id": 0.5 + 0.1 * skill[r] * t,
                    "base": 0.4 + 0.05 * skill[r] + 0.08 * shared[r] * t - 0.02 * v_i,
                    "operator_order": 0.45 + 0.05 * skill[r] + 0.08 * shared[r] * t,
                    "length": 0.3 + 0.05 * skill[r] + 0.05 * rng.normal(),
                }
                if flat_split:
                    p[flat_split] = 0.0
                for split, prob in p.items():
                    prob = float(np.clip(prob, 0, 1))
                    rows.append({"run": f"r{r:02d}", "step": step, "variant": variant, "split": split,
                                 "n": n_items, "correct": int(rng.binomial(n_items, prob))})
    return rows


@pytest.fixture
def rows():
    return synthetic_rows()
