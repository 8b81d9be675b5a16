"""The telemetry stage's config: how the partial correlations are computed."""

from __future__ import annotations

from dataclasses import dataclass, field

from train.signal import DEFAULT_MEASURE, MEASURES


def _opt(default, text: str):
    return field(default=default, metadata={"help": text})


@dataclass(frozen=True)
class AnalysisOptions:
    """Every option of the analysis; the CLI (``telemetry analyze|watch``) offers each field as a flag."""

    control: str = _opt("linear", "how in-domain accuracy is controlled for: linear, probit or spline")
    points: str = _opt("final", "final: one point per run; all: every checkpoint (clusters = runs)")
    method: str = _opt("pearson", "pearson or spearman")
    n_boot: int = _opt(2000, "cluster-bootstrap resamples (runs, not points)")
    n_perm: int = _opt(2000, "permutations for the permutation p-values")
    level: float = _opt(0.95, "interval coverage")
    seed: int = _opt(0, "seed of the bootstrap and permutation streams")
    spline_df: int = _opt(4, "basis size of the spline control")
    measure: str = _opt(DEFAULT_MEASURE, "digit: share of answer digits right; exact: exact-match answers")
    alpha: float = _opt(0.05, "significance level of every test (BH q-values, TOST)")
    bound: float = _opt(0.05, "equivalence bound of the Δ fragmentation index (TOST): |Δ| < bound is equivalent")

    def __post_init__(self) -> None:
        problems = []
        if self.control not in ("linear", "probit", "spline"):
            problems.append(f"control={self.control!r} (linear, probit or spline)")
        if self.points not in ("final", "all"):
            problems.append(f"points={self.points!r} (final or all)")
        if self.method not in ("pearson", "spearman"):
            problems.append(f"method={self.method!r} (pearson or spearman)")
        if self.n_boot < 100 or self.n_perm < 100:
            problems.append("n_boot and n_perm must be at least 100")
        if self.measure not in MEASURES:
            problems.append(f"measure={self.measure!r} ({' or '.join(MEASURES)})")
        if not 0 < self.alpha < 0.5 or not 0 < self.bound < 1:
            problems.append(f"alpha={self.alpha}, bound={self.bound} (0 < alpha < 0.5, 0 < bound < 1)")
        if not 0.5 < self.level < 1:
            problems.append(f"level={self.level}")
        if problems:
            raise ValueError("invalid telemetry options: " + ", ".join(problems))
