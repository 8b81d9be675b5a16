"""Progress bars that suit where they are read: a terminal, or a log file (CI, `make demo > log`)."""

from __future__ import annotations

import sys
import time

from tqdm import tqdm


def progress_bar(total: int, desc: str, unit: str, initial: int = 0) -> tqdm:
    """A tqdm bar on stderr: refreshed twice a second on a terminal, every 15 s in a log file (where each
    refresh is a line of its own)."""
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True,
                mininterval=0.5 if sys.stderr.isatty() else 15.0)


class PopulationProgress:
    """One bar for a population of runs: runs done / total, runs in flight, and an ETA from the steps done.

    ``step(run_id, step, total)`` is what a run reports as it trains; ``finished(run_id, summary)`` when it
    is done (trained and evaluated). With ``log_runs``, a line per run as it starts (or resumes) and ends.
    """

    def __init__(self, total: int, done: int, steps: dict[str, int], log_runs: bool = False):
        self.steps, self.log_runs = steps, log_runs
        self.at: dict[str, int] = {}  # run -> its last reported step, while in flight
        self.ended: set[str] = set()  # a step report can arrive after its run's end (another channel)
        self.work_done, self.work = 0, sum(steps.values())
        self.started = self.drawn = time.monotonic()
        self.bar = tqdm(total=total, initial=done, unit="run", dynamic_ncols=True,
                        mininterval=0.5 if sys.stderr.isatty() else 15.0,
                        bar_format="runs: {n_fmt}/{total_fmt} |{bar}| {desc}")
        self._refresh(force=True)

    def step(self, run_id: str, step: int, total: int) -> None:
        if run_id in self.ended:
            return
        if run_id not in self.at and self.log_runs:
            self.bar.write(f"{run_id}: " + (f"resumed at step {step}/{total}" if step else f"started, {total} steps"))
        self.at[run_id] = step
        self._refresh()

    def finished(self, run_id: str, summary: dict | None = None) -> None:
        self.at.pop(run_id, None)
        self.ended.add(run_id)
        self.work_done += self.steps.get(run_id, 0)
        if self.log_runs and summary:
            self.bar.write(f"{run_id}: done, {summary.get('train_seconds', 0):.0f} s training, "
                           f"{summary.get('total_seconds', 0):.0f} s in all")
        self.bar.update(1)
        self._refresh(force=True)

    def _refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.drawn < self.bar.mininterval:
            return
        self.drawn = now
        if not self.work:
            self.bar.set_description_str("nothing left to run")
            return
        done = self.work_done + sum(self.at.values())
        elapsed = now - self.started
        eta = tqdm.format_interval(elapsed * (self.work - done) / done) if done else "?"
        self.bar.set_description_str(f"{len(self.at)} in flight, {done / self.work:.0%} of steps, ETA {eta}, "
                                     f"{tqdm.format_interval(elapsed)} elapsed")

    def close(self) -> None:
        self._refresh(force=True)
        self.bar.close()
