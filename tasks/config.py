"""The task stage's config: which splits exist and how many items each holds."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TaskConfig:
    seed: int = 0  # every split is a pure function of (seed, split name, role)
    n_train: int = 20000  # in-domain training items written to train.jsonl
    n_eval: int = 1000  # items in dev and in each shift split (unique prompts)
    answer_order: str = "lsd"  # "lsd": least-significant digit first (learns far faster), or "msd"
    id: dict[str, Any] = field(default_factory=dict)  # overrides of the in-domain generator parameters
    # shift name -> {} (the registered entry) or generator parameters (a new or overridden shift)
    shifts: dict[str, Any] = field(default_factory=lambda: {
        "length": {}, "operator_order": {}, "base": {}, "base9": {}})

    def __post_init__(self) -> None:
        if self.n_eval < 1 or self.n_train < 0:
            raise ValueError("n_eval must be >= 1 and n_train >= 0")
        if self.answer_order not in ("lsd", "msd"):
            raise ValueError(f"answer_order must be 'lsd' or 'msd', got {self.answer_order!r}")
        if not self.shifts:
            raise ValueError("at least one shift is needed")
