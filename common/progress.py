"""Progress bars that suit where they are read: a terminal, or a log file (CI, `make demo > log`)."""

from __future__ import annotations

import sys

from tqdm import tqdm


def progress_bar(total: int, desc: str, unit: str, initial: int = 0) -> tqdm:
    """A tqdm bar on stderr: refreshed twice a second on a terminal, every 15 s in a log file (where each
    refresh is a line of its own)."""
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True,
                mininterval=0.5 if sys.stderr.isatty() else 15.0)
