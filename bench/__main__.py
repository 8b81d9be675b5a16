"""Benchmarks: each part runs its baseline in the same process and writes bench/results/.

    python -m bench decode --sweep runs/demo         # runtime vs transformers generate vs optimum, batch 1/64
    python -m bench serving --sweep runs/demo        # req/s, p50/p99 at concurrency 1/8/32 vs naive and floor

Ratios are the figures to read (absolute times depend on the machine). Not tests: they
run on demand (`make bench`), and nothing asserts on speed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="part", required=True)
    dec = sub.add_parser("decode", help="tokens/s of export/runtime.py vs generate and ORTModelForCausalLM")
    dec.add_argument("--sweep", default="runs/demo", type=Path)
    dec.add_argument("--items", type=int, default=128)
    dec.add_argument("--repeats", type=int, default=3)
    dec.add_argument("--threads", type=int, default=1)
    srv = sub.add_parser("serving", help="req/s and latency vs a naive transformers server and the HTTP floor")
    srv.add_argument("--sweep", default="runs/demo", type=Path)
    srv.add_argument("--max-requests", type=int, default=600)
    srv.add_argument("--max-seconds", type=float, default=12.0)
    args = parser.parse_args(argv)
    if args.part == "serving":
        from bench.serving import bench_serving

        try:
            bench_serving(args.sweep, max_requests=args.max_requests, max_seconds=args.max_seconds)
        except FileNotFoundError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    if args.part == "decode":
        from bench.decode import bench_decode

        try:
            bench_decode(args.sweep, items=args.items, repeats=args.repeats, threads=args.threads)
        except FileNotFoundError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
