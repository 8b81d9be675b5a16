"""Build the Grafana dashboards, or push them to a Grafana.

    python -m dashboards build                      # regenerate dashboards/json/*.json
    python -m dashboards push --url http://127.0.0.1:3000 --token $GRAFANA_TOKEN \\
        [--prometheus http://127.0.0.1:9090]

Or provision them with the committed files: point Grafana's provisioning directory at
dashboards/provisioning/ (see the README, "Watch it in Grafana").
"""

from __future__ import annotations

import argparse
import os
import sys

from common.cli import ArgumentParser


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m dashboards", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build", help="write dashboards/json/*.json")
    push = sub.add_parser("push", help="create or update the datasource and dashboards via the Grafana API")
    push.add_argument("--url", required=True, help="Grafana base URL")
    push.add_argument("--token", default=os.environ.get("GRAFANA_TOKEN", ""),
                      help="service-account token (default: $GRAFANA_TOKEN)")
    push.add_argument("--prometheus", default="http://127.0.0.1:9090", help="the datasource's Prometheus URL")
    args = parser.parse_args(argv)
    if args.command == "build":
        from dashboards.build import build

        for path in build():
            print(f"wrote {path}")
        return 0
    from dashboards.push import PushError
    from dashboards.push import push as do_push

    try:
        result = do_push(args.url, args.token, args.prometheus)
    except PushError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - anything else still a line, not a traceback
        print(f"error: push to {args.url} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"datasource {result['datasource']}; dashboards: {', '.join(result['dashboards'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
