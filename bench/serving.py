"""Serving throughput: requests/s and p50/p99 latency at concurrency 1, 8 and 32.

Against, in the same run on the same machine:
- the naive baseline (bench/servers.py naive): transformers ``generate``, one request at a
  time, same HTTP stack;
- the floor (bench/servers.py floor): the same stack answering a fixed completion;
- the same fracture server with metrics recording nothing (telemetry overhead);
- the floor with and without fracture's HTTP guards (header limits and deadlines, body
  limit, bearer auth, drain): their cost per request, alternated over rounds;
- fracture's server with and without those guards (bench/servers.py unguarded): their
  cost on the served path itself.

Every server runs in its own process on 127.0.0.1; the load generator is a small async
client, bounded in requests and seconds per level, with a warm-up it does not
time. Latency is measured by the client (queueing included). The client is aiohttp: httpx's
async pool saturated first at concurrency 32 (358 req/s against the floor server, where
aiohttp reaches 5,655 on the same 2 cores).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.common import RESULTS, markdown_table, publish
from common.net import free_port, wait_http
from tasks.dataset import sweep_data

REPO = Path(__file__).resolve().parents[1]


def split_cores() -> tuple[set[int] | None, set[int] | None]:
    """(the servers' cores, the load generator's): the usable cores split in two halves, the first half
    for the server; (None, None) on a single core or where affinity cannot be set (not Linux)."""
    if not hasattr(os, "sched_getaffinity"):
        return None, None
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return None, None
    half = len(cores) // 2
    return set(cores[:half]), set(cores[half:])


@contextlib.contextmanager
def pinned(cores: set[int] | None):
    """This process (the load generator) on ``cores`` for the duration, then back where it was."""
    if not cores:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cores)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


@contextlib.contextmanager
def server_process(args: list[str], port: int, timeout: float = 180, ready: str = "/openapi.json",
                   cores: set[int] | None = None):
    """Start ``python <args>`` (on ``cores``, set before it runs, so that every thread it starts
    inherits them) and wait until ``ready`` answers 200 on ``port``; stop it afterwards."""
    pin = (lambda: os.sched_setaffinity(0, cores)) if cores else None
    proc = subprocess.Popen([sys.executable, *args], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, preexec_fn=pin)  # noqa: PLW1509 - no threads of ours run at that point
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_http(f"{url}{ready}", timeout, proc)
        except RuntimeError:
            raise RuntimeError(f"server {args} exited: {proc.stderr.read()[-2000:]}") from None
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


async def _load(url: str, bodies: list[dict], concurrency: int, max_requests: int, max_seconds: float,
                warmup: int, headers: dict | None = None) -> dict:
    import aiohttp

    latencies: list[float] = []
    errors = 0
    source = itertools.cycle(bodies)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(url, connector=connector, timeout=aiohttp.ClientTimeout(total=60),
                                     headers=headers) as client:
        async def one(body, record: bool):
            nonlocal errors
            t = time.perf_counter()
            async with client.post("/v1/completions", json=body) as resp:
                await resp.read()
                ok = resp.status == 200
            if not ok:
                errors += 1
            elif record:
                latencies.append(time.perf_counter() - t)

        await asyncio.gather(*(one(next(source), False) for _ in range(warmup)))
        started = time.perf_counter()
        deadline = started + max_seconds
        sent = 0

        async def worker():
            nonlocal sent
            while sent < max_requests and time.perf_counter() < deadline:
                sent += 1
                await one(next(source), True)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    ordered = sorted(latencies)
    return {"concurrency": concurrency, "completed": len(latencies), "errors": errors, "seconds": round(wall, 3),
            "rps": len(latencies) / wall, "p50_ms": 1000 * statistics.median(ordered),
            "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]}


def load(url, bodies, concurrency, max_requests, max_seconds, headers: dict | None = None) -> dict:
    return asyncio.run(_load(url, bodies, concurrency, max_requests, max_seconds, 2 * concurrency, headers))


def _pick(sweep: Path, variants: tuple[str, ...]) -> tuple[str, Path]:
    for run in sorted(p for p in sweep.iterdir() if p.is_dir()):
        if all((run / "variants" / v / "manifest.json").is_file() for v in variants):
            step = json.loads((run / "variants" / variants[0] / "manifest.json").read_text())["step"]
            return run.name, run / "checkpoints" / f"step-{step}"
    raise FileNotFoundError(f"no run of {sweep} has all of {variants}: run `python -m export --sweep {sweep}`")


QUANTIZED = ("ort-int8", "ort-int4")  # the variant the ratios are read on: the first of these the sweep has


def _default_variants(sweep: Path) -> tuple[str, ...]:
    """onnx-fp32 and every variant of QUANTIZED the sweep exported (the demo's set has no ort-int8)."""
    runs = [p for p in sweep.iterdir() if p.is_dir()] if sweep.is_dir() else []
    have = [q for q in QUANTIZED if any((r / "variants" / q / "manifest.json").is_file() for r in runs)]
    return ("onnx-fp32", *have) if have else ("onnx-fp32", *QUANTIZED)


def bench_serving(sweep: Path, variants: tuple[str, ...] | None = None, concurrencies=(1, 8, 32),
                  max_requests: int = 600, max_seconds: float = 12.0, overhead_rounds: int = 2,
                  baselines: bool = True, out_dir: Path | None = RESULTS) -> dict:
    """Every server on one half of the cores, the load generator on the other (``split_cores``), so
    that the client's work never preempts the server it measures."""
    server_cores, client_cores = split_cores()
    start = functools.partial(server_process, cores=server_cores)
    cores = {"server": sorted(server_cores or []), "load_generator": sorted(client_cores or [])}
    with pinned(client_cores):
        return _bench_serving(start, cores, sweep, variants, concurrencies, max_requests, max_seconds,
                              overhead_rounds, baselines, out_dir)


def _bench_serving(start, cores: dict, sweep: Path, variants: tuple[str, ...] | None, concurrencies,
                   max_requests: int, max_seconds: float, overhead_rounds: int, baselines: bool,
                   out_dir: Path | None) -> dict:
    from tasks.dataset import read_jsonl

    variants = tuple(variants or _default_variants(sweep))
    quantized = next((v for v in QUANTIZED if v in variants), variants[-1])
    run, checkpoint = _pick(sweep, variants)
    data = sweep_data(sweep)
    items = read_jsonl(data / "dev.jsonl")[:256]

    def bodies(model: str) -> list[dict]:
        return [{"model": model, "prompt": it["prompt"], "max_tokens": 7, "temperature": 0, "shift": "id",
                 "expected": it["answer"]} for it in items]

    def levels(url: str, model: str) -> dict:
        return {f"c{c}": load(url, bodies(model), c, max_requests if c > 1 else max_requests // 3, max_seconds)
                for c in concurrencies}

    results: dict[str, dict] = {}
    # the one run measured: a fleet of every run would spend seconds opening sessions at each server start
    serve_args = ["-m", "serve", f"--sweep={sweep}", f"--variants={','.join(variants)}", f"--runs={run}"]
    port = free_port()
    with start([*serve_args, f"--port={port}"], port) as url:
        for v in variants:
            results[v] = levels(url, f"{run}/{v}")
            print(f"  {v}: " + ", ".join(f"{k} {r['rps']:.0f} req/s" for k, r in results[v].items()), flush=True)
    if baselines:
        port = free_port()
        with start(["-m", "bench.servers", "naive", f"--checkpoint={checkpoint}", f"--port={port}"],
                            port) as url:
            results["naive"] = levels(url, "naive")
        port = free_port()
        with start(["-m", "bench.servers", "floor", f"--port={port}"], port) as url:
            results["floor"] = levels(url, "floor")

    top = f"c{max(concurrencies)}"
    overhead = {"with_metrics": [], "without_metrics": []}
    for _ in range(overhead_rounds):  # alternate, so drift on the machine hits both alike
        for key, flag in (("with_metrics", "true"), ("without_metrics", "false")):
            port = free_port()
            with start([*serve_args, f"--port={port}", f"--record_metrics={flag}"], port) as url:
                overhead[key].append(load(url, bodies(f"{run}/{quantized}"), max(concurrencies), max_requests,
                                          max_seconds)["rps"])
    served = {"guarded": [], "unguarded": []}
    for _ in range(overhead_rounds):  # fracture's server with and without its guards, alternated
        for key in ("guarded", "unguarded"):
            port = free_port()
            args = [*serve_args, f"--port={port}"] if key == "guarded" else \
                ["-m", "bench.servers", "unguarded", f"--sweep={sweep}", f"--variants={','.join(variants)}",
                 f"--runs={run}", f"--port={port}"]
            with start(args, port) as url:
                served[key].append(load(url, bodies(f"{run}/{quantized}"), max(concurrencies), max_requests,
                                        max_seconds)["rps"])
    guards = {"guarded": [], "plain": []}
    if baselines:
        from bench.servers import BENCH_TOKEN

        for _ in range(overhead_rounds):  # the floor behind fracture's guards vs without, alternated
            for key, extra, headers in (("guarded", ["--guarded"], {"Authorization": f"Bearer {BENCH_TOKEN}"}),
                                        ("plain", [], None)):
                port = free_port()
                with start(["-m", "bench.servers", "floor", f"--port={port}", *extra], port,
                                    ready="/healthz") as url:
                    r = load(url, bodies("floor"), max(concurrencies), 4 * max_requests, max_seconds, headers)
                if r["errors"]:
                    raise RuntimeError(f"the {key} floor answered {r['errors']} request(s) with an error")
                guards[key].append(r["rps"])
    ratios = {
        "c32_vs_c1": results[quantized][top]["rps"] / results[quantized]["c1"]["rps"],
        "metrics_overhead": 1 - (statistics.mean(overhead["with_metrics"])
                                 / statistics.mean(overhead["without_metrics"])),
        "guards_overhead_served": 1 - statistics.mean(served["guarded"]) / statistics.mean(served["unguarded"]),
    }
    if baselines:
        ratios["quantized_vs_naive_c32"] = results[quantized][top]["rps"] / results["naive"][top]["rps"]
        ratios["server_vs_floor_c32"] = results[quantized][top]["rps"] / results["floor"][top]["rps"]
        guarded, plain = statistics.mean(guards["guarded"]), statistics.mean(guards["plain"])
        ratios["guards_overhead_floor"] = 1 - guarded / plain
        # the guards' seconds per request, as a share of the served path's (the quantized variant, top level)
        ratios["guards_share_of_served"] = (1 / guarded - 1 / plain) * results[quantized][top]["rps"]
    payload = {"cores": cores, "run": run, "quantized": quantized, "results": results, "metrics_overhead_rps": overhead,
               "guards_rps": guards, "served_guards_rps": served, "ratios": ratios}
    rows = [[name, level, f"{r['rps']:.0f}", f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}", r["errors"]]
            for name, by_level in results.items() for level, r in by_level.items()]
    publish("serving", payload, out_dir, [
        markdown_table(["server", "concurrency", "req/s", "p50 ms", "p99 ms", "errors"], rows),
        markdown_table(list(ratios), [[round(v, 3) for v in ratios.values()]])])
    return payload
