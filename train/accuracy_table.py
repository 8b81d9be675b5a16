"""accuracy.csv, the interchange table every consumer reads (DESIGN.md, Artifacts).

Long format, one row per (run, step, variant, split). Upserts replace rows with the
same key, so re-running an evaluation never duplicates them. Standard library only, so
the server and the telemetry job can use it without torch.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from pathlib import Path

from tasks.settings import atomic_write_text

KEY = ("run", "step", "variant", "split")
COLUMNS = (*KEY, "n", "correct")
EXTRA = ("digit_correct", "digit_total")
INT_COLUMNS = {"step", "n", "correct", "digit_correct", "digit_total"}


def read_table(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = set(COLUMNS) - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: missing column(s) {sorted(missing)}")
        return [{k: (int(v) if k in INT_COLUMNS and v != "" else v) for k, v in row.items()} for row in reader]


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
