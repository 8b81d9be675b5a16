"""The end of `make demo`: serve the exported fleet, replay labelled traffic, analyse both tables.

Runs after the task splits, the sweep and the export (the Makefile does those first):

1. the server in the background, Prometheus if installed (1 s scrapes), and the telemetry
   watcher (on Prometheus, or straight on the server when Prometheus is missing);
2. the replay of the first ``--eval-items`` items of every split to every model (the same
   items for every model), written to runs/<sweep>/served-accuracy.csv;
3. the telemetry analysis of the offline table (reports/<sweep>/), in the background from
   the start, and of the served one as Prometheus (or the server's /metrics) counted it
   (reports/<sweep>-served/);
4. a short summary per variant, the path of report.html; every process it started is
   stopped, also on failure or Ctrl-C.

    python -m deploy.demo --sweep runs/demo --eval-items 100
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common.cli import ArgumentParser
from common.net import free_port
from deploy.local import REPO, Services, start_stack
from tasks.dataset import sweep_data
from telemetry.report import headline_lines


class Background:
    """A command run beside the demo's other steps, its output kept and shown when it is collected."""

    def __init__(self, step: str, cmd: list[str]):
        print(f"== {step} (in the background): {' '.join(cmd[1:])}", flush=True)
        self.step, self.cmd, self.started = step, cmd, time.perf_counter()
        self.out = tempfile.TemporaryFile()  # noqa: SIM115 - closed in collect() or stop()
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=self.out, stderr=subprocess.STDOUT)

    def collect(self, timings: dict) -> None:
        """Wait for it, show its output; a failure stops the demo."""
        code = self.proc.wait()
        self.out.seek(0)
        print(f"== {self.step}:", flush=True)
        sys.stdout.write(self.out.read().decode(errors="replace"))
        sys.stdout.flush()
        self.out.close()
        timings[self.step] = round(time.perf_counter() - self.started, 1)
        if code:
            raise subprocess.CalledProcessError(code, self.cmd)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait()
        self.out.close()


def _run(step: str, cmd: list[str], timings: dict) -> None:
    started = time.perf_counter()
    print(f"== {step}: {' '.join(cmd[1:])}", flush=True)
    subprocess.run(cmd, cwd=REPO, check=True)
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
    p = ArgumentParser(prog="python -m deploy.demo")
    p.add_argument("--sweep", default="runs/demo")
    p.add_argument("--eval-items", "--per-split", type=int, default=100,
                   help="items of each eval split replayed to every model")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--reports", type=Path, default=REPO / "reports", help="parent folder of the reports")
    a = p.parse_args(argv)
    reports = a.reports.resolve()
    sweep = Path(a.sweep)
    name = sweep.name
    data = str(sweep_data(sweep))
    py = sys.executable
    timings: dict[str, float] = {}
    services = Services(REPO / ".run" / f"demo-{name}")
    started = time.perf_counter()
    # the offline analysis needs only accuracy.csv: it runs while the fleet starts and serves the replay, whose
    # pace is set by the server's one Python thread (the other core is free)
    offline_job = Background("analyze offline", [py, "-m", "telemetry", "analyze", "--accuracies",
                                                 str(sweep / "accuracy.csv"), "--out", str(reports / name)])
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
        _run("replay", [py, "-m", "serve", "replay", "--url", where["server"], "--data", data,
                        "--eval-items", str(a.eval_items), "--concurrency", str(a.concurrency),
                        "--out", str(served_csv)], timings)
        if where["prometheus"]:
            time.sleep(3)  # three scrapes at 1 s: the last counters are in Prometheus
        source = ["--prometheus", where["prometheus"]] if where["prometheus"] else ["--scrape", where["server"]]
        _run("analyze served", [py, "-m", "telemetry", "analyze", *source, "--out", str(reports / f"{name}-served")],
             timings)
        offline_job.collect(timings)
    finally:
        offline_job.stop()
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
