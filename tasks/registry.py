"""Registered splits: the in-domain one and the named shifts.

Every shift is a registry entry (docs/design.md, Registries, not if-chains); a meta-test
fails when an entry has no test. Presets may add shifts by parameters alone
(``TaskConfig.shifts``) without touching this file.
"""

from __future__ import annotations

from tasks.spec import SplitSpec

ID_NAME = "id"

# The in-domain distribution: what fine-tuning sees (1-3 digit operands, infix, base 10).
ID_SPEC = SplitSpec(name=ID_NAME, digits=(1, 3), description="a+b with 1-3 digit operands, base 10, infix")

SHIFTS: dict[str, SplitSpec] = {}


def register_shift(spec: SplitSpec) -> SplitSpec:
    if spec.name in SHIFTS or spec.name == ID_NAME:
        raise ValueError(f"shift {spec.name!r} is already registered")
    SHIFTS[spec.name] = spec
    return spec


# Kept mild on purpose: one digit beyond training (rotary models extrapolate length poorly).
register_shift(SplitSpec(name="length", digits=(4, 4), description="4-digit operands (training sees 1-3)"))
# The same operator, written before its operands: an order fine-tuning never shows.
register_shift(SplitSpec(name="operator_order", notation="prefix",
                         description="prefix order +a|b= instead of infix a+b="))
# Another number base, marked in the prompt with a tag.
register_shift(SplitSpec(name="base", base=8, description="operands and answer in base 8, tagged b8|"))
# A second number base: near `base` in kind, so the pair says how far "another base" is one skill.
register_shift(SplitSpec(name="base9", base=9, description="operands and answer in base 9, tagged b9|"))
