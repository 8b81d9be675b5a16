"""How numbers and expressions are written as text, and how text is cut into digits.

Two digit formats exist because tokenizers differ:
- ``compact`` ("12+34=") for the embedded character tokenizer, one token per character;
- ``spaced`` ("1 2 + 3 4 =") for BPE tokenizers such as GPT-NeoX's, whose merges turn a
  digit run like "1234" into one or two tokens; a space before each digit makes every
  " d" a token of its own, so the model sees one token per digit there too.
The canonical (stored, graded) form is always compact.
"""

from __future__ import annotations

DIGITS = "0123456789abcdef"
DIGIT_FORMATS = ("compact", "spaced")


def to_base(value: int, base: int) -> str:
    """Non-negative ``value`` written most-significant digit first in ``base`` (2..16)."""
    if not 2 <= base <= len(DIGITS):
        raise ValueError(f"base must be in 2..{len(DIGITS)}, got {base}")
    if value < 0:
        raise ValueError(f"negative values are not written: {value}")
    if value == 0:
        return "0"
    out = []
    while value:
        value, rem = divmod(value, base)
        out.append(DIGITS[rem])
    return "".join(reversed(out))


def format_prompt(prompt: str, digit_format: str) -> str:
    """Canonical prompt -> the text fed to a tokenizer of the given digit format."""
    _check(digit_format)
    return prompt if digit_format == "compact" else " ".join(prompt)


def format_answer(answer: str, digit_format: str) -> str:
    """Canonical answer -> the continuation text that follows ``format_prompt``'s output."""
    _check(digit_format)
    return answer if digit_format == "compact" else "".join(" " + ch for ch in answer)


def normalize(text: str) -> str:
    """Model output -> canonical form: whitespace (the spaced format's separators) removed."""
    return "".join(text.split())


def _check(digit_format: str) -> None:
    if digit_format not in DIGIT_FORMATS:
        raise ValueError(f"unknown digit format {digit_format!r}; expected one of {DIGIT_FORMATS}")
