"""accuracy.csv, the interchange table every consumer reads (docs/design.md, Artifacts).

Long format, one row per (run, step, variant, split). Upserts replace rows with the
same key, so re-running an evaluation never duplicates them. Standard library only, so
the server and the telemetry job can use it without torch.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Collection, Iterable
from pathlib import Path

from common.files import atomic_write_text

KEY = ("run", "step", "variant", "split")
TORCH_VARIANT = "torch-fp32"  # the variant name of a torch checkpoint's own rows: the full-precision baseline
COLUMNS = (*KEY, "n", "correct")
EXTRA = ("digit_correct", "digit_total")
INT_COLUMNS = {"step", "n", "correct", "digit_correct", "digit_total"}


def _int(value):
    """The integer a cell holds; the text itself when it holds none (check_row names it)."""
    try:
        return int(value) if value not in ("", None) else value
    except ValueError:
        return value


def check_row(row: dict) -> str | None:
    """Why a row cannot be a count of graded items (None when it can): n > 0, 0 <= correct <= n, and the
    same for the digit counts when present."""
    for k in INT_COLUMNS & set(row):
        if row[k] != "" and not isinstance(row[k], int):
            return f"{k} is {row[k]!r}, not an integer"
    for k in KEY:
        if row.get(k) in (None, ""):
            return f"{k} is empty"
    if row["n"] <= 0:
        return f"n = {row['n']} (a row counts at least one item)"
    if not 0 <= row["correct"] <= row["n"]:
        return f"correct = {row['correct']} outside 0..n = {row['n']}"
    if row.get("digit_total", "") != "" or row.get("digit_correct", "") != "":
        total, right = row.get("digit_total"), row.get("digit_correct")
        if not isinstance(total, int) or not isinstance(right, int) or total <= 0 or not 0 <= right <= total:
            return f"digit_correct = {right!r} outside 0..digit_total = {total!r}"
    return None


def read_table(path: str | Path, splits: Collection[str] | None = None) -> list[dict]:
    """Every row, checked: a row that is not a valid count, repeats another row's key or (with ``splits``,
    the task's split names) names a split the task does not have stops the read with one line naming the
    file and line (a silent wrong mean is worse than no table)."""
    path = Path(path)
    if not path.is_file():
        return []
    rows, seen = [], {}
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = set(COLUMNS) - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: missing column(s) {sorted(missing)}")
        for row in reader:
            line = reader.line_num
            row = {k: (_int(v) if k in INT_COLUMNS else v) for k, v in row.items()}
            problem = check_row(row)
            if not problem and splits is not None and row["split"] not in splits:
                problem = f"split {row['split']!r} is not one of the task's splits ({', '.join(splits)})"
            if problem:
                raise ValueError(f"{path} line {line}: {problem}")
            key = tuple(str(row[k]) for k in KEY)
            if key in seen:
                raise ValueError(f"{path} line {line}: the same (run, step, variant, split) as line {seen[key]}: "
                                 f"{', '.join(key)}")
            seen[key] = line
            rows.append(row)
    return rows


def upsert_rows(path: str | Path, rows: Iterable[dict]) -> list[dict]:
    """Merge ``rows`` into the table at ``path`` (atomically) and return the whole table."""
    merged = {tuple(str(r[k]) for k in KEY): r for r in read_table(path)}
    for r in rows:
        merged[tuple(str(r[k]) for k in KEY)] = r
    table = sorted(merged.values(), key=lambda r: (r["variant"], r["run"], int(r["step"]), r["split"]))
    extra = [c for c in EXTRA if any(c in r for r in table)]
    extra += sorted({c for r in table for c in r} - set(COLUMNS) - set(extra))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[*COLUMNS, *extra], lineterminator="\n")
    writer.writeheader()
    writer.writerows(table)
    atomic_write_text(path, buf.getvalue())
    return table
