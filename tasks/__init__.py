"""The synthetic arithmetic task: generators, the shift registry, formatting and grading.

Pure Python: no torch, no numpy, so the server and any edge box can import it.
"""

from tasks.config import TaskConfig
from tasks.dataset import build_eval_splits, resolve_specs, sample_training, write_splits
from tasks.formatting import format_answer, format_prompt, normalize
from tasks.grader import Grade, grade
from tasks.registry import ID_NAME, SHIFTS
from tasks.spec import SplitSpec

__all__ = [
    "ID_NAME", "SHIFTS", "Grade", "SplitSpec", "TaskConfig", "build_eval_splits", "format_answer",
    "format_prompt", "grade", "normalize", "resolve_specs", "sample_training", "write_splits",
]
