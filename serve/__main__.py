"""Serve a sweep's variants over HTTP, or replay labelled traffic to a server.

    python -m serve --sweep runs/demo                         # every (run, variant), on 127.0.0.1:8000
    python -m serve --sweep runs/demo --variants onnx-fp32,ort-int8 --port 8001
    python -m serve --sweep runs/demo --memory_budget_mb=50    # lazy loading, LRU release
    python -m serve --sweep runs/demo --row_graph=false       # int8 weights held once (batch-1 steps slower)
    FRACTURE_API_TOKEN=secret python -m serve --sweep runs/demo   # bearer auth on all but /healthz, /readyz
    python -m serve replay --url http://127.0.0.1:8000 --data data/<task-hash> --eval-items 100 \\
        --out runs/demo/served-accuracy.csv
    python -m serve replay --sweep runs/demo --eval-items 20    # the sweep's own eval splits (`make traffic`)

Any field of serve/config.py can be given as --field=value. The server never imports
torch or transformers.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from common.cli import ArgumentParser, split_verb
from common.config import ConfigError, load_config, parse_cli_overrides


def _replay(argv: list[str]) -> int:
    from serve.replay import replay
    from tasks.dataset import sweep_data, sweep_extra_splits

    p = ArgumentParser(prog="python -m serve replay")
    p.add_argument("--url", default="http://127.0.0.1:8000")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, help="data/<task-hash>/ of the sweep")
    source.add_argument("--sweep", type=Path, help="the sweep folder: its sweep.yaml names its data/<task-hash>/")
    p.add_argument("--models", default="all", help='"all" or model ids, comma-separated')
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--eval-items", "--per-split", type=int, default=0,
                   help="first N items of each eval split (0 = all; the sweep's eval_items)")
    p.add_argument("--max-tokens", type=int, default=0, help="0 = longest answer + 2, as offline evaluation")
    p.add_argument("--deadline", type=float, default=3600, help="seconds for the whole replay")
    p.add_argument("--out", type=Path, default=None, help="accuracy table to write (accuracy.csv format)")
    p.add_argument("--token", default=os.environ.get("FRACTURE_API_TOKEN", ""))
    a = p.parse_args(argv)
    if a.concurrency < 1 or a.eval_items < 0:
        p.error("--concurrency must be >= 1 and --eval-items >= 0")
    try:
        data = a.data or sweep_data(a.sweep)
        # with --sweep, the splits `python -m export evaluate` added after training are sent too
        added = {name: a.sweep / e["file"] for name, e in sweep_extra_splits(a.sweep).items()} if a.sweep else None
        rows = replay(a.url, data, a.out, added=added, models=a.models.split(","), concurrency=a.concurrency,
                      eval_items=a.eval_items, max_tokens=a.max_tokens, token=a.token, deadline_s=a.deadline,
                      progress=sys.stderr.isatty())
    except (OSError, ValueError, RuntimeError, TimeoutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"replayed {sum(r['n'] for r in rows)} requests to {len({(r['run'], r['variant']) for r in rows})} "
          f"model(s); {sum(r['correct'] for r in rows)} correct" + (f"; wrote {a.out}" if a.out else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    verb, argv = split_verb(list(sys.argv[1:] if argv is None else argv), ("replay",), "python -m serve")
    if verb == "replay":
        return _replay(argv)
    parser = argparse.ArgumentParser(prog="python -m serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None,
                        help="a YAML file of ServeConfig fields (serve/config.py); flags override it")
    args, rest = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        import uvicorn
        from prometheus_client import CollectorRegistry

        from common.net import port_in_use
        from serve.app import build_app
        from serve.config import ServeConfig
        from serve.http import raise_fd_limit, uvicorn_config

        cfg = load_config(ServeConfig, args.config, parse_cli_overrides(rest))
        if port_in_use(cfg.port, cfg.host):  # before loading any model: the bind would fail only after that
            raise ValueError(f"port {cfg.port} on {cfg.host} is in use: stop what listens there (`make down` if it "
                             "is a fracture stack) or pass --port")
        app = build_app(cfg, CollectorRegistry())
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"fracture serve: http://{cfg.host}:{cfg.port}  ({len(app.state.fleet.entries)} models, "
          f"{len(app.state.fleet.refused)} refused)  metrics: /metrics  docs: /docs", flush=True)
    raise_fd_limit()  # connections are file descriptors: the soft limit (often 1024) must not be the cap
    uvicorn.Server(uvicorn_config(app, cfg)).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
