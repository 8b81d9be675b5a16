"""Shared bits of the benchmarks: timing with repeats, results files, Markdown tables."""

from __future__ import annotations

import itertools
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def spread(samples: list[float]) -> dict:
    """Median and interquartile range of ``samples`` (the figures every results file keeps)."""
    q1, med, q3 = statistics.quantiles(samples, n=4, method="inclusive") if len(samples) > 1 else samples * 3
    return {"median": med, "q1": q1, "q3": q3, "n": len(samples)}


def interleaved(points: dict[str, Callable[[], object]], repeats: int = 5, min_seconds: float = 0.2,
                warmup: int = 1, self_timed: bool = False, pause_s: float = 0.0) -> dict[str, dict]:
    """Seconds per call of every point, timed in rounds: each round runs one repeat of every point in
    turn, so a slow spell of the machine falls on a point and its baseline alike. Rounds go forwards and
    backwards in turn, so what a point leaves behind (caches it filled or emptied, threads still spinning)
    does not fall on the same neighbour every round.

    A repeat calls its point until the time it measured reaches ``min_seconds`` (after ``warmup`` untimed
    calls of every point), so that a scheduler hiccup is a small part of it. With ``self_timed``, a point
    times itself and returns ``(seconds, units)``: the seconds it measured and how many units of work they
    cover (the decode steps of a call, timed inside the loop apart from the prefill around it). A repeat
    then lasts until those seconds add up to ``min_seconds``, and its figure is seconds per unit over the
    repeat; otherwise it is the repeat's wall time over its calls. Returns, per point, the figure of every
    round (``samples``, in round order, for paired ratios), their median and quartiles, and each repeat's
    calls and measured seconds. ``pause_s``: a rest before each
    repeat, for points whose engines keep the cores busy after they return (ONNX Runtime's idle intra-op
    threads spin for tens of ms, and slowed the next engine measured by up to 2x).
    """
    for fn in points.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in points}
    calls: dict[str, list[int]] = {name: [] for name in points}
    measured: dict[str, list[float]] = {name: [] for name in points}
    order = list(points)
    for round_ in range(repeats):
        for name in order if round_ % 2 == 0 else order[::-1]:
            fn = points[name]
            time.sleep(pause_s)
            n, units, total, started = 0, 0, 0.0, time.perf_counter()
            while total < min_seconds or n == 0:
                got = fn()
                n += 1
                if self_timed:
                    if got[1] <= 0 or got[0] < 0:
                        raise ValueError(f"{name}: a self-timed call must time at least one unit, got {got}")
                    total, units = total + got[0], units + got[1]
                else:
                    total, units = time.perf_counter() - started, n
            samples[name].append(total / units)
            calls[name].append(n)
            measured[name].append(total)
    return {name: {"samples": s, "calls_per_repeat": calls[name], "measured_s_per_repeat": measured[name],
                   **spread(s)} for name, s in samples.items()}


def paired_ratio(num: list[float], den: list[float]) -> dict:
    """``median(num) / median(den)``, with the quartiles of the per-round ratios as its spread."""
    per_round = [a / b for a, b in zip(num, den, strict=True)]
    return {**spread(per_round), "median": statistics.median(num) / statistics.median(den)}


def combined_spread(fn: Callable[..., float], *parts: list) -> dict:
    """A figure made of parts measured apart (each a list of samples): ``fn`` of the parts' medians, with the
    quartiles of ``fn`` over every combination of one sample from each part, so that each part's own noise
    shows in the spread. Values measured in the same rounds go in as one part, a list of tuples: their rounds
    stay paired in the combinations, and the figure takes each column's median. Like ``paired_ratio``'s, the
    figure can lie outside its quartiles when the parts pair unevenly."""
    if not all(parts):
        raise ValueError("every part needs at least one sample")

    def median(samples: list):
        if isinstance(samples[0], tuple):
            return tuple(statistics.median(column) for column in zip(*samples, strict=True))
        return statistics.median(samples)

    q = spread([fn(*combo) for combo in itertools.product(*parts)])
    return {"median": fn(*(median(part) for part in parts)), "q1": q["q1"], "q3": q["q3"]}


def record_ratio(ratios: dict, spreads: dict, name: str, ratio: dict, scale: float = 1.0) -> None:
    """Put a ratio (``paired_ratio``'s median, q1, q3, times ``scale``) into a part's ``ratios`` and
    ``ratio_spread``."""
    ratios[name] = scale * ratio["median"]
    spreads[name] = {"q1": scale * ratio["q1"], "q3": scale * ratio["q3"]}


def ratio_table(ratios: dict, spreads: dict) -> str:
    """A part's ratios, each with the quartiles of its rounds."""
    return markdown_table(["ratio", "median", "q1", "q3"],
                          [[k, round(v, 3), round(spreads[k]["q1"], 3), round(spreads[k]["q3"], 3)]
                           for k, v in ratios.items()])


def publish(part: str, payload: dict, out_dir: Path | None, tables: list[str]) -> None:
    """Write a part's results file (none when ``out_dir`` is None: ``bench all`` writes one for every
    part), then print its tables and where the file went."""
    path = write_results(part, payload, out_dir) if out_dir else None
    for table in tables:
        print(table)
    if path:
        print(f"wrote {path}")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` and all its threads so far (Linux' /proc), else None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime: fields 14 and 15


def machine() -> dict:
    return {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()}


def write_results(part: str, payload: dict, out_dir: Path = RESULTS) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = out_dir / f"{stamp}-{part}.json"
    path.write_text(json.dumps({"part": part, "machine": machine(), **payload}, indent=2))
    return path


def markdown_table(header: list[str], rows: list[list]) -> str:
    def cell(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
