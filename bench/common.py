"""Shared bits of the benchmarks: timing with repeats, results files, Markdown tables."""

from __future__ import annotations

import json
import math
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
    turn, so a slow spell of the machine falls on a point and its baseline alike.

    A repeat calls its point as many times as it takes to last ``min_seconds`` (counted on the last of
    ``warmup`` untimed calls, at least one), so that a scheduler hiccup is a small part of it. Returns,
    per point, the per-call seconds of every round (``samples``, in round order, for paired ratios) and
    their median and quartiles. With ``self_timed``, a point returns the seconds it measured itself (a
    decode step timed inside the loop, apart from the prefill around it), and a repeat's figure is the
    mean of what its calls returned. ``pause_s``: a rest before each repeat, for points whose engines keep
    the cores busy after they return (ONNX Runtime's idle intra-op threads spin for tens of ms, and slowed
    the next engine measured by up to 2x).
    """
    calls = {}
    for name, fn in points.items():
        for _ in range(max(warmup - 1, 0)):
            fn()
        t = time.perf_counter()
        fn()  # the last warm-up call sizes the repeats
        calls[name] = max(1, math.ceil(min_seconds / max(time.perf_counter() - t, 1e-9)))
    samples: dict[str, list[float]] = {name: [] for name in points}
    for _ in range(repeats):
        for name, fn in points.items():
            time.sleep(pause_s)
            t = time.perf_counter()
            measured = [fn() for _ in range(calls[name])]
            elapsed = time.perf_counter() - t
            samples[name].append(statistics.fmean(measured) if self_timed else elapsed / calls[name])
    return {name: {"samples": s, "calls_per_repeat": calls[name], **spread(s)} for name, s in samples.items()}


def paired_ratio(num: list[float], den: list[float]) -> dict:
    """``median(num) / median(den)``, with the quartiles of the per-round ratios as its spread."""
    per_round = [a / b for a, b in zip(num, den, strict=True)]
    return {**spread(per_round), "median": statistics.median(num) / statistics.median(den)}


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


def machine() -> dict:
    import os

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
