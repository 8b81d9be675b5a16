"""`make up` / `make down`: Prometheus (when installed), the server and the telemetry watcher.

Everything listens on 127.0.0.1. Process ids, logs and Prometheus' storage go to .run/;
`down` stops exactly the processes `up` recorded (SIGTERM, then SIGKILL after a grace
period). Without a prometheus binary the watcher scrapes the server directly, and says so.

    python -m deploy.local up --sweep runs/demo
    python -m deploy.local down
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import yaml

from common.cli import ArgumentParser
from common.net import port_in_use, wait_http
from dashboards.build import DASHBOARDS

REPO = Path(__file__).resolve().parents[1]
STATE = REPO / ".run"
TEMPLATE = Path(__file__).parent / "prometheus.yml"


def prometheus_config(server: str, watcher: str, interval: str = "5s") -> str:
    cfg = yaml.safe_load(TEMPLATE.read_text())
    cfg["global"]["scrape_interval"] = cfg["global"]["evaluation_interval"] = interval
    targets = {"fracture-serve": server, "fracture-telemetry": watcher}
    token = os.environ.get("FRACTURE_API_TOKEN", "")
    for job in cfg["scrape_configs"]:
        job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
        if token and job["job_name"] == "fracture-serve":  # the server's /metrics needs the token when one is set
            job["authorization"] = {"type": "Bearer", "credentials": token}
    return yaml.safe_dump(cfg, sort_keys=False)


# The panels `make up` links to in Prometheus' own graph page (Grafana is not part of `make up`): (dashboard
# uid, panel title). The queries are the dashboards' own, read from dashboards/build.py.
HEADLINE_PANELS = (
    ("fracture-serving", "Accuracy by shift over time"),
    ("fracture-serving", "Requests per second"),
    ("fracture-serving", "Latency p50 / p99 by variant"),
    ("fracture-fractures", "Partial correlation per variant, with its 95% interval"),
    ("fracture-fractures", "Δ fragmentation index vs full precision, with its BCa 95% interval"),
)
GRAPH_RANGE = "30m"  # the dashboards' time range (now-30m)
# Grafana's built-in variables, as Prometheus has no such thing: a rate window of a few 5 s scrapes, the range
GRAFANA_BUILTINS = {"__rate_interval": "1m", "__range": GRAPH_RANGE}


def panel_queries(uid: str, title: str) -> list[str]:
    """The PromQL of one dashboard panel, as the dashboard holds it (Grafana variables included)."""
    panels = [p for p in DASHBOARDS[uid]()["panels"] if p["title"] == title]
    if len(panels) != 1:
        raise KeyError(f"dashboard {uid} has {len(panels)} panels titled {title!r}")
    return [t["expr"] for t in panels[0]["targets"]]


def expand_variables(expr: str, dashboard: dict) -> str:
    """``expr`` as Grafana runs it with the dashboard's defaults: "All" (the variable's allValue) where a
    variable allows it, else its current value; built-ins from GRAFANA_BUILTINS."""
    values = dict(GRAFANA_BUILTINS)
    for var in dashboard["templating"]["list"]:
        values[var["name"]] = var["allValue"] if var.get("includeAll") else var["current"]["value"]

    def value(match: re.Match) -> str:
        if match[1] not in values:
            raise KeyError(f"no value for the Grafana variable ${match[1]} in {expr!r}")
        return values[match[1]]
    return re.sub(r"\$(\w+)", value, expr)


def graph_url(prometheus: str, exprs: list[str], range_: str = GRAPH_RANGE) -> str:
    """Prometheus' graph page with one graph per expression (g0, g1, ...), URL-encoded."""
    params = []
    for i, expr in enumerate(exprs):
        params += [(f"g{i}.expr", expr), (f"g{i}.tab", "0"), (f"g{i}.range_input", range_)]
    return f"{prometheus.rstrip('/')}/graph?" + urllib.parse.urlencode(params, quote_via=urllib.parse.quote)


def headline_urls(prometheus: str) -> list[tuple[str, str]]:
    """(panel title, Prometheus graph URL) for each of HEADLINE_PANELS."""
    out = []
    for uid, title in HEADLINE_PANELS:
        dashboard = DASHBOARDS[uid]()
        exprs = [expand_variables(e, dashboard) for e in panel_queries(uid, title)]
        out.append((title, graph_url(prometheus, exprs)))
    return out


class Services:
    """Processes started in the background, stopped together (also on error)."""

    def __init__(self, state: Path = STATE):
        self.state = state
        self.state.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, cmd: list[str], niceness: int = 0) -> subprocess.Popen:
        """Start ``cmd`` in its own session, logging to .run/<name>.log; ``niceness`` > 0 lowers its CPU priority."""
        log = open(self.state / f"{name}.log", "w")  # noqa: SIM115 - the child keeps writing to it
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=(lambda: os.nice(niceness)) if niceness > 0 else None)
        self.procs[name] = proc
        self.save()
        return proc

    def save(self) -> None:
        (self.state / "pids.json").write_text(json.dumps({n: p.pid for n, p in self.procs.items()}))

    def stop(self) -> None:
        stop_pids({n: p.pid for n, p in self.procs.items()})
        for p in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=1)
        self.procs.clear()
        (self.state / "pids.json").unlink(missing_ok=True)


def stop_pids(pids: dict[str, int], grace: float = 15.0) -> list[str]:
    stopped = []
    for name, pid in pids.items():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
            stopped.append(name)
    deadline = time.monotonic() + grace
    for pid in pids.values():
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    break
            time.sleep(0.1)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    return stopped


def start_stack(services: Services, sweep: str, server_port: int = 8000, watch_port: int = 9108,
                prom_port: int = 9090, scrape: str = "5s", interval: float = 10.0,
                serve_args: tuple[str, ...] = ()) -> dict:
    """Start the server, Prometheus (if installed) and the watcher; returns where each listens. Every port is
    checked first: one in use stops the start before any process runs."""
    py = sys.executable
    prometheus = shutil.which("prometheus")
    ports = {"--port (the server)": server_port, "--watch-port (the telemetry watcher)": watch_port}
    if prometheus:
        ports["--prometheus-port"] = prom_port
    busy = [f"{port} ({flag})" for flag, port in ports.items() if port_in_use(port)]
    if busy:
        raise RuntimeError(f"port(s) in use on 127.0.0.1: {', '.join(busy)}; stop what listens there (`make down` "
                           "if it is an earlier stack) or pick other ports")
    server = services.start("serve", [py, "-m", "serve", f"--sweep={sweep}", f"--port={server_port}", *serve_args])
    wait_http(f"http://127.0.0.1:{server_port}/readyz", proc=server)
    where = {"server": f"http://127.0.0.1:{server_port}"}
    if prometheus:
        config = services.state / "prometheus.yml"
        config.touch()
        config.chmod(0o600)  # it may hold the API token
        config.write_text(prometheus_config(f"127.0.0.1:{server_port}", f"127.0.0.1:{watch_port}", scrape))
        data = services.state / "prometheus-data"
        shutil.rmtree(data, ignore_errors=True)
        prom = services.start("prometheus", [prometheus, f"--config.file={config}", f"--storage.tsdb.path={data}",
                                             f"--web.listen-address=127.0.0.1:{prom_port}"])
        wait_http(f"http://127.0.0.1:{prom_port}/-/ready", proc=prom)
        where["prometheus"] = f"http://127.0.0.1:{prom_port}"
        source = ["--prometheus", where["prometheus"]]
    else:
        where["prometheus"] = None
        source = ["--scrape", where["server"]]
    # below the server's priority: a recomputation must never slow down the traffic it measures
    watcher = services.start("watch", [py, "-m", "telemetry", "watch", *source, f"--port={watch_port}",
                                       f"--interval={interval:g}", "--n_boot=500", "--n_perm=500"], niceness=10)
    wait_http(f"http://127.0.0.1:{watch_port}/metrics", proc=watcher)
    where["telemetry"] = f"http://127.0.0.1:{watch_port}/metrics"
    return where


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m deploy.local")
    p.add_argument("command", choices=["up", "down"])
    p.add_argument("--sweep", default="runs/demo")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--watch-port", type=int, default=9108)
    p.add_argument("--prometheus-port", type=int, default=9090)
    a = p.parse_args(argv)
    if a.command == "down":
        path = STATE / "pids.json"
        if not path.is_file():
            print("nothing to stop (no .run/pids.json)")
            return 0
        stopped = stop_pids(json.loads(path.read_text()))
        path.unlink()
        print(f"stopped: {', '.join(stopped) or 'nothing was still running'}")
        return 0
    if (STATE / "pids.json").is_file():
        print("already up (.run/pids.json exists): run `make down` first", file=sys.stderr)
        return 1
    services = Services()
    try:
        where = start_stack(services, a.sweep, a.port, a.watch_port, a.prometheus_port)
    except (RuntimeError, TimeoutError) as exc:
        services.stop()
        print(f"error: {exc} (logs in {STATE})", file=sys.stderr)
        return 1
    print(f"server      {where['server']}  (OpenAPI docs at /docs, metrics at /metrics)")
    if where["prometheus"]:
        print(f"prometheus  {where['prometheus']}")
    else:
        print("prometheus  not installed: the telemetry watcher scrapes the server directly")
    print(f"telemetry   {where['telemetry']}")
    print(f"logs and pids in {STATE}; stop everything with `make down`")
    print(f"the fleet has served nothing yet: `make traffic SERVE_PORT={a.port}` replays labelled eval items to it "
          "(or send your own requests, with a shift label and the expected answer)")
    if where["prometheus"]:
        print("the headline panels in Prometheus (the Grafana queries, every variant, model and shift):")
        for title, url in headline_urls(where["prometheus"]):
            print(f"  {title}\n    {url}")
    else:
        print(f"no Prometheus, so no graphs: the watcher's gauges are at {where['telemetry']}; "
              "`docker compose -f deploy/compose.yaml up` runs Prometheus and Grafana")
    return 0


if __name__ == "__main__":
    sys.exit(main())
