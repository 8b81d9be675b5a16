"""The answer grader shared by offline evaluation and the server.

Exact match decides ``correct``. The per-digit score gives partial credit so that a
shift whose exact-match accuracy is near 0 still carries signal: answers are compared
position by position (answers are written least-significant digit first, so positions
line up by place value) and divided by the longer of the two lengths, which penalises
missing and extra digits alike.
"""

from __future__ import annotations

from dataclasses import dataclass

from tasks.formatting import normalize


@dataclass(frozen=True)
class Grade:
    exact: bool  # normalized prediction equals the expected answer
    digit_correct: int  # positions where prediction and answer agree
    digit_total: int  # max(len(prediction), len(answer)); never 0 for a real answer


def grade(prediction: str, expected: str) -> Grade:
    """Grade one model output against the canonical expected answer."""
    pred = normalize(prediction)
    exp = normalize(expected)
    if not exp:
        raise ValueError("expected answer is empty")
    agree = sum(1 for p, e in zip(pred, exp) if p == e)
    return Grade(exact=pred == exp, digit_correct=agree, digit_total=max(len(pred), len(exp)))
