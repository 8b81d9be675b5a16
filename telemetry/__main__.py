"""Partial correlations between shifts, for full-precision vs quantized variants.

    python -m telemetry analyze --accuracies runs/demo/accuracy.csv --out reports/demo
    python -m telemetry analyze --scrape http://127.0.0.1:8000 --out reports/served
    python -m telemetry analyze --prometheus http://127.0.0.1:9090 --out reports/prom --window=1h
    python -m telemetry analyze --accuracies runs/demo/accuracy.csv --out reports/probit --control=probit --points=all

    python -m telemetry watch --prometheus http://127.0.0.1:9090 --port 9108 --interval 30

`analyze` writes <out>/summary.json and <out>/report.html (all or nothing) and prints a
table. `watch` recomputes every --interval seconds and serves the results as gauges on
http://127.0.0.1:<port>/metrics for Prometheus (and Grafana).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import warnings
from pathlib import Path

from common.cli import ArgumentParser
from common.files import atomic_write_text
from telemetry.analysis import AnalysisOptions, analyze
from telemetry.population import DataWarning
from telemetry.report import render_html, terminal_table
from telemetry.sources import SourceError, from_csv, from_prometheus, from_scrape


def _options(args) -> AnalysisOptions:
    return AnalysisOptions(**{f.name: getattr(args, f.name) for f in dataclasses.fields(AnalysisOptions)})


def sweep_context(accuracies: str | None) -> dict:
    """From the sweep folder beside an accuracy.csv: the base's step-0 scores and any replayed shift."""
    if not accuracies:
        return {}
    path = Path(accuracies).parent / "signal.json"
    try:
        signal = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {"before_finetuning": signal.get("before_finetuning"), "replayed_shifts": signal.get("replayed_shifts")}


def cmd_analyze(args) -> int:
    started = time.perf_counter()
    source, fetch = _fetcher(args)
    out = Path(args.out)
    _check_out(out, args.force)
    rows = fetch()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = analyze(rows, _options(args))
    left_out = list(dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, DataWarning)))
    for msg in left_out:
        print(f"warning: {msg}", file=sys.stderr)
    summary["source"] = source
    summary["source_kind"] = "accuracies" if args.accuracies else ("prometheus" if args.prometheus else "scrape")
    summary["left_out"] = left_out
    summary |= sweep_context(args.accuracies)
    # only its own two files, each replaced atomically: whatever else the folder holds is never touched
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, default=float) + "\n")
    atomic_write_text(out / "report.html", render_html(summary, rows, source))
    print(terminal_table(summary))
    print(f"wrote {out / 'summary.json'} and {out / 'report.html'} in {time.perf_counter() - started:.1f}s")
    return 0


REPORT_FILES = {"summary.json", "report.html"}


def _check_out(out: Path, force: bool) -> None:
    """A report folder holds the report's files only: refuse to write into one that holds anything else
    (a typo such as --out . or --out runs/demo), unless --force."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder")
    other = sorted(p.name for p in out.iterdir() if p.name not in REPORT_FILES and not p.name.startswith(".")) \
        if out.is_dir() else []
    if other and not force:
        raise ValueError(f"--out {out} holds other files ({', '.join(other[:3])}{', ...' if len(other) > 3 else ''}); "
                         "pick an empty or report folder, or pass --force to write summary.json and report.html "
                         "beside them")


def _fetcher(args):
    if args.accuracies:
        return args.accuracies, lambda: from_csv(args.accuracies)
    if args.prometheus:
        return args.prometheus, lambda: from_prometheus(args.prometheus, args.window)
    return args.scrape, lambda: from_scrape(args.scrape)


def cmd_watch(args) -> int:
    import logging
    import signal

    from prometheus_client import CollectorRegistry, start_http_server

    from telemetry.watch import Watcher

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    source, fetch = _fetcher(args)
    registry = CollectorRegistry()
    watcher = Watcher(fetch, registry, _options(args), interval=args.interval)
    server, thread = start_http_server(args.port, addr=args.host, registry=registry)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: watcher.stop.set())
    print(f"watching {source} every {args.interval:g}s; gauges on http://{args.host}:{args.port}/metrics", flush=True)
    watcher.run()
    server.shutdown()
    return 0


def _add_common(p, required_out: bool) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--accuracies", help="accuracy.csv written by offline evaluation")
    src.add_argument("--prometheus", help="Prometheus base URL (http://127.0.0.1:9090)")
    src.add_argument("--scrape", help="a fracture server's base URL or /metrics URL")
    if required_out:
        p.add_argument("--out", required=True, help="report folder, e.g. reports/demo (only summary.json and "
                       "report.html are written there)")
        p.add_argument("--force", action="store_true", help="write into --out even when it holds other files")
    p.add_argument("--window", default=None, help="with --prometheus: count requests over this range (e.g. 1h)")
    for f in dataclasses.fields(AnalysisOptions):  # every option, its default and help from the dataclass
        flags = [f"--{f.name}"] + ([f"--{f.name.replace('_', '-')}"] if "_" in f.name else [])
        p.add_argument(*flags, type=type(f.default), default=f.default,
                       help=f"{f.metadata['help']} (default {f.default})")


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m telemetry", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    a = sub.add_parser("analyze", help="compute summary.json and report.html once")
    _add_common(a, required_out=True)
    w = sub.add_parser("watch", help="recompute periodically and serve gauges for Prometheus")
    _add_common(w, required_out=False)
    w.add_argument("--host", default="127.0.0.1")
    w.add_argument("--port", type=int, default=9108)
    w.add_argument("--interval", type=float, default=30.0, help="seconds between recomputations")
    args = parser.parse_args(argv)
    try:
        return cmd_analyze(args) if args.command == "analyze" else cmd_watch(args)
    except (SourceError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
