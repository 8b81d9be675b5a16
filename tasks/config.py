"""The task stage's config: which splits exist and how many items each holds."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from tasks.registry import ID_NAME, ID_SPEC, SHIFTS
from tasks.spec import SplitSpec


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
        object.__setattr__(self, "_specs", _resolve_specs(self))  # once: every stage reads cfg.specs

    @property
    def specs(self) -> MappingProxyType[str, SplitSpec]:
        """``{"id": spec, "<shift>": spec, ...}``: the generator of every split (registry entries, with
        this config's overrides, and shifts defined in YAML), resolved when the config is made."""
        return MappingProxyType(self._specs)


def _resolve_specs(cfg: TaskConfig) -> dict[str, SplitSpec]:
    specs = {ID_NAME: ID_SPEC.updated(cfg.id) if cfg.id else ID_SPEC}
    for name, params in cfg.shifts.items():
        if params:
            base = SHIFTS.get(name)
            if base is not None:
                specs[name] = base.updated(dict(params))
            else:
                specs[name] = SplitSpec.from_mapping(name, dict(params))
        elif name in SHIFTS:
            specs[name] = SHIFTS[name]
        else:
            raise ValueError(f"shift {name!r} is not registered ({sorted(SHIFTS)}); "
                             "define it with generator parameters (digits, terms, operators, notation, base)")
        _warn_if_narrower(specs[ID_NAME], specs[name])
    return specs


def _warn_if_narrower(id_spec: SplitSpec, spec: SplitSpec) -> None:
    """A shift padded narrower than the in-domain split changes the format as well as the numbers
    (``34+86=`` beside id's ``068+034=``): say so, unless its widths were set on purpose."""
    (id_op, id_ans), (op, ans) = id_spec.widths(), spec.widths()
    narrower = [f"{what} to {mine} where id pads to {theirs} (set {key}: {theirs} to keep id's format)"
                for what, key, mine, theirs, given in (("operands", "operand_width", op, id_op, spec.operand_width),
                                                       ("answers", "answer_width", ans, id_ans, spec.answer_width))
                if spec.pad and not given and mine < theirs]
    if narrower:
        warnings.warn(f"shift {spec.name!r} pads " + " and ".join(narrower), stacklevel=5)
