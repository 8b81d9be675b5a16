"""The end of `make demo`: serve the exported fleet, replay labelled traffic, analyse both tables.

Runs after the task splits, the sweep and the export (the Makefile does those first):

1. the server in the background, Prometheus if installed (1 s scrapes), and the telemetry
   watcher (on Prometheus, or straight on the server when Prometheus is missing);
2. the replay of the first ``--per-split`` items of every split to every model (the same
   items for every model), written to runs/<sweep>/served-accuracy.csv;
3. the telemetry analysis of the offline table (reports/<sweep>/) and, side by side, of the
   served one as Prometheus (or the server's /metrics) counted it (reports/<sweep>-served/);
4. a short summary per variant, the path of report.html; every process it started is
   stopped, also on failure or Ctrl-C.

    python -m deploy.demo --sweep runs/demo --per-split 100
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from deploy.local import REPO, Services, free_port, start_stack
from telemetry.report import headline_lines


def _run(step: str, cmds: list[list[str]], timings: dict) -> None:
    """Run the commands side by side (each is single-threaded work), then show their output one after the
    other; a failure stops the demo with that command's output."""
    started = time.perf_counter()
    procs = []
    try:
        for cmd in cmds:
            print(f"== {step}: {' '.join(cmd[1:])}", flush=True)
            out = tempfile.TemporaryFile() if len(cmds) > 1 else None  # noqa: SIM115 - closed below
            procs.append((cmd, out, subprocess.Popen(cmd, cwd=REPO, stdout=out,
                                                     stderr=subprocess.STDOUT if out else None)))
        for cmd, out, proc in procs:
            code = proc.wait()
            if out:
                out.seek(0)
                sys.stdout.write(out.read().decode(errors="replace"))
                sys.stdout.flush()
            if code:
                raise subprocess.CalledProcessError(code, cmd)
    finally:
        for _, out, proc in procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait()
            if out:
                out.close()
    timings[step] = round(time.perf_counter() - started, 1)


def summary_lines(offline: dict, served: dict | None) -> list[str]:
    """The verdict per variant first, then each variant's accuracy per split."""
    lines = headline_lines(offline)
    lines.append(f"accuracy per split ({offline.get('measure')} measure, final checkpoints):")
    for name, v in offline["variants"].items():
        acc = "  ".join(f"{s} {a:.3f}" for s, a in v["accuracy"].items())
        lines.append(f"{name:16} ({v['n_runs']} runs)  {acc}")
    if served:
        lines.append(f"served sample ({served.get('measure')} measure, as counted by the telemetry source):")
        for name, v in served["variants"].items():
            accuracy = "  ".join(f"{s} {a:.3f}" for s, a in v["accuracy"].items())
            lines.append(f"{name:16} ({v['n_runs']} runs)  {accuracy}")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m deploy.demo")
    p.add_argument("--sweep", default="runs/demo")
    p.add_argument("--per-split", type=int, default=100, help="items of each split replayed to every model")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--reports", type=Path, default=REPO / "reports", help="parent folder of the reports")
    a = p.parse_args(argv)
    reports = a.reports.resolve()
    sweep = Path(a.sweep)
    name = sweep.name
    data = yaml.safe_load((sweep / "sweep.yaml").read_text())["data"]
    py = sys.executable
    timings: dict[str, float] = {}
    services = Services(REPO / ".run" / f"demo-{name}")
    started = time.perf_counter()
    try:
        t = time.perf_counter()
        where = start_stack(services, str(sweep), server_port=free_port(), watch_port=free_port(),
                            prom_port=free_port(), scrape="1s", interval=5.0)
        timings["start server, prometheus, watcher"] = round(time.perf_counter() - t, 1)
        if where["prometheus"]:
            print(f"server {where['server']}, prometheus {where['prometheus']}, telemetry {where['telemetry']}")
        else:
            print(f"server {where['server']}, telemetry {where['telemetry']}; Prometheus is not installed, so the "
                  "telemetry job scrapes the server directly")
        served_csv = sweep / "served-accuracy.csv"
        served_csv.unlink(missing_ok=True)
        _run("replay", [[py, "-m", "serve", "replay", "--url", where["server"], "--data", data,
                         "--per-split", str(a.per_split), "--concurrency", str(a.concurrency),
                         "--out", str(served_csv)]], timings)
        if where["prometheus"]:
            time.sleep(3)  # three scrapes at 1 s: the last counters are in Prometheus
        source = ["--prometheus", where["prometheus"]] if where["prometheus"] else ["--scrape", where["server"]]
        _run("analyze offline and served", [
            [py, "-m", "telemetry", "analyze", "--accuracies", str(sweep / "accuracy.csv"),
             "--out", str(reports / name)],
            [py, "-m", "telemetry", "analyze", *source, "--out", str(reports / f"{name}-served")]], timings)
    finally:
        services.stop()
    offline = json.loads((reports / name / "summary.json").read_text())
    served = json.loads((reports / f"{name}-served" / "summary.json").read_text())
    print("\n".join(["", "== summary (offline: all eval items of the final checkpoints)",
                     *summary_lines(offline, served)]))
    print(f"\nreport: {reports / name / 'report.html'}  (served: {reports / (name + '-served') / 'report.html'})")
    print("timings (s): " + ", ".join(f"{k} {v}" for k, v in timings.items())
          + f"; total {time.perf_counter() - started:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
