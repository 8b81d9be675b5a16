"""The generator parameters of one split, and the items they produce.

A split (the in-domain one or a shift) is nothing but a ``SplitSpec``: digit range,
number of terms, operators and their order, notation and base. A shift defined in a
YAML preset is a mapping of these fields; no code is needed.
"""

from __future__ import annotations

import random
import re
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from tasks.formatting import to_base

OPERATORS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b}
NOTATIONS = ("infix", "prefix")
NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
RESERVED = {"train", "dev", "all"}


@dataclass(frozen=True)
class SplitSpec:
    name: str  # registry name; also the `split` column and the Prometheus `shift` label
    digits: tuple[int, int] = (1, 3)  # inclusive range of digits per operand
    terms: tuple[int, int] = (2, 2)  # inclusive range of the number of operands
    operators: tuple[str, ...] = ("+",)  # operator i joins operand i and i+1 (cycled)
    notation: str = "infix"  # "infix": 12+34=   "prefix": +12|34= (Polish notation)
    base: int = 10  # number base of operands and answer; != 10 is tagged "b8|" in the prompt
    pad: bool = True  # zero-pad operands and answer to a fixed width (False: no padding at all)
    # The padded widths; 0 = this split's own widest value (operands: digits[1]; the answer: the
    # largest result terms[1] operands of digits[1] digits can give). A shift meant as a subset of
    # the in-domain format sets them to id's widths (3 and 4 by default), or its format changes too.
    operand_width: int = 0
    answer_width: int = 0
    description: str = ""  # one line for reports

    def __post_init__(self) -> None:
        # YAML gives lists; keep the dataclass hashable and comparable.
        object.__setattr__(self, "digits", tuple(int(d) for d in self.digits))
        object.__setattr__(self, "terms", tuple(int(t) for t in self.terms))
        object.__setattr__(self, "operators", tuple(str(o) for o in self.operators))
        object.__setattr__(self, "base", int(self.base))
        object.__setattr__(self, "pad", bool(self.pad))
        object.__setattr__(self, "operand_width", int(self.operand_width))
        object.__setattr__(self, "answer_width", int(self.answer_width))
        problems = []
        if not NAME_RE.match(self.name) or self.name in RESERVED:
            problems.append(f"name {self.name!r} must match {NAME_RE.pattern} and not be one of {sorted(RESERVED)}")
        if len(self.digits) != 2 or not 1 <= self.digits[0] <= self.digits[1] <= 12:
            problems.append(f"digits must be [min, max] with 1 <= min <= max <= 12, got {list(self.digits)}")
        if len(self.terms) != 2 or not 2 <= self.terms[0] <= self.terms[1] <= 6:
            problems.append(f"terms must be [min, max] with 2 <= min <= max <= 6, got {list(self.terms)}")
        if not self.operators or any(op not in OPERATORS for op in self.operators):
            problems.append(f"operators must be a non-empty list of {sorted(OPERATORS)}, got {list(self.operators)}")
        if self.notation not in NOTATIONS:
            problems.append(f"notation must be one of {NOTATIONS}, got {self.notation!r}")
        if not 2 <= self.base <= 16:
            problems.append(f"base must be in 2..16, got {self.base}")
        if not problems and self.operand_width and not self.digits[1] <= self.operand_width <= 12:
            problems.append(f"operand_width must be 0 (its own width, digits[1]) or {self.digits[1]}..12, "
                            f"got {self.operand_width}")
        if not problems and self.answer_width and not self.widest_answer() <= self.answer_width <= 16:
            problems.append(f"answer_width must be 0 (its own width, the widest result) or "
                            f"{self.widest_answer()}..16, got {self.answer_width}")
        if problems:
            raise ValueError(f"split spec {self.name!r}: " + "; ".join(problems))

    @classmethod
    def from_mapping(cls, name: str, params: dict[str, Any]) -> SplitSpec:
        """A new spec from YAML-style generator parameters (unknown keys refused)."""
        return cls(name=name, **cls._checked(name, params))

    def updated(self, params: dict[str, Any]) -> SplitSpec:
        """This spec with some generator parameters overridden (unknown keys refused)."""
        return replace(self, **self._checked(self.name, params))

    @classmethod
    def _checked(cls, name: str, params: dict[str, Any]) -> dict[str, Any]:
        known = {f.name for f in fields(cls)} - {"name"}
        unknown = set(params) - known
        if unknown:
            raise ValueError(f"split spec {name!r}: unknown parameter(s) {sorted(unknown)}; known: {sorted(known)}")
        return dict(params)

    def params(self) -> dict[str, Any]:
        """The generator parameters (what names the data: a width left at 0 is omitted, as before it existed)."""
        out = asdict(self)
        out.pop("description")
        for key in ("operand_width", "answer_width"):
            if not out[key]:
                out.pop(key)
        out["digits"], out["terms"], out["operators"] = list(self.digits), list(self.terms), list(self.operators)
        return out

    # -- generation ---------------------------------------------------------------
    def operator_sequence(self, n_terms: int) -> list[str]:
        return [self.operators[i % len(self.operators)] for i in range(n_terms - 1)]

    def sample_operand(self, rng: random.Random) -> int:
        """Uniform over values with digits[0]..digits[1] digits (0 counts as one digit).

        Uniform by value, not by length, so short operands are rare and the few
        one-digit pairs are not exhausted by the eval splits (which training excludes).
        """
        lo = 0 if self.digits[0] == 1 else self.base ** (self.digits[0] - 1)
        hi = self.base ** self.digits[1] - 1
        return rng.randint(lo, hi)

    def widest_answer(self) -> int:
        """Digits of the largest possible result."""
        return len(to_base(self.terms[1] * (self.base ** self.digits[1] - 1), self.base))

    def widths(self) -> tuple[int, int]:
        """(operand, answer) width every item of the split is padded to; (0, 0) without padding."""
        if not self.pad:
            return 0, 0
        return self.operand_width or self.digits[1], self.answer_width or self.widest_answer()

    def render(self, operands: list[int], ops: list[str]) -> str:
        width = self.widths()[0]
        nums = [to_base(x, self.base).rjust(width, "0") for x in operands]
        if self.notation == "infix":
            body = nums[0] + "".join(op + n for op, n in zip(ops, nums[1:]))
        else:  # ((a op1 b) op2 c) -> op2 op1 a|b|c
            body = "".join(reversed(ops)) + "|".join(nums)
        tag = "" if self.base == 10 else f"b{self.base}|"
        return f"{tag}{body}="

    def sample(self, rng: random.Random, answer_order: str = "lsd") -> dict[str, Any]:
        """One item: prompt, answer, and the generator parameters that made it."""
        for _ in range(1000):
            n_terms = rng.randint(*self.terms)
            operands = [self.sample_operand(rng) for _ in range(n_terms)]
            ops = self.operator_sequence(n_terms)
            result = operands[0]
            for op, x in zip(ops, operands[1:]):
                result = OPERATORS[op](result, x)
            if result >= 0:  # answers are non-negative: resample otherwise
                break
        else:
            raise ValueError(f"split {self.name!r} cannot produce a non-negative result")
        answer = to_base(result, self.base)
        answer = answer.rjust(self.widths()[1], "0")
        if answer_order == "lsd":
            answer = answer[::-1]
        elif answer_order != "msd":
            raise ValueError(f"answer_order must be 'lsd' or 'msd', got {answer_order!r}")
        return {
            "prompt": self.render(operands, ops),
            "answer": answer,
            "split": self.name,
            "meta": {**self.params(), "operands": operands, "result": result, "answer_order": answer_order},
        }
