"""Serving throughput: requests/s and p50/p99 latency at concurrency 1, 8 and 32.

Against, in the same run on the same machine:
- the naive baseline (bench/servers.py naive): transformers ``generate``, one request at a
  time, same HTTP stack;
- the floor (bench/servers.py floor): the same stack answering a fixed completion;
- with ``overheads`` (``python -m bench serving``; ``make bench`` leaves them out): the same
  fracture server with metrics recording nothing (telemetry overhead); the floor with and
  without fracture's HTTP guards (header limits and deadlines, body limit, bearer auth,
  drain): their cost per request; fracture's server with and without those guards
  (bench/servers.py unguarded): their cost on the served path itself. No target: a 3 s
  point moves ±10-15% from round to round here, so these cannot tell 3%.
- in process, the metric calls one request makes, on real Prometheus metrics and on the
  do-nothing ones (``metrics_seconds_per_request``), and the guards, uvicorn's protocol and the
  ASGI stack with and without them (``guards_seconds_per_request``): each one's cost per request
  to a microsecond, as a share of a served request (``metrics_share_of_served``,
  ``guards_share_of_served``), where the served comparison can only tell ±10-15%.
- in process, the model's own decoding of a request at the largest batch the top concurrency
  can form (``model_seconds_per_request``): its share of a served request
  (``model_share_of_served``) and the most the server could reach against the floor were all
  its other work free (``server_vs_floor_c32_bound``).

The demo's model is served as ``ort-int8`` (``SERVED``), the variant every ratio is read on; where the sweep
has not exported it (a fresh ``make demo`` has ``ort-int4``), ``served_sweep`` builds it for the first run
into bench/cache/, leaving the sweep as it was.

Beside the demo's model, the pythia-70m-sized ``ort-int8`` of the edge part (``edge_sweep``: random
weights, built once and cached under bench/cache/) is served at every concurrency: what a request
costs at the size users deploy.

Every server runs in its own process on 127.0.0.1, all of them started before the first
point and pinned to one half of the cores, the load generator (a small async client) to
the other. Each point (a server, a model, a concurrency) is loaded for a fixed time
(``seconds``, 3 by default) after an untimed warm-up, in ``repeats`` (5) rounds that visit
every point in turn, forwards then backwards, each point next to its baseline, so a slow
spell of the machine falls on both alike; every figure keeps the median and quartiles of
its rounds, and a ratio is the ratio of medians with the quartiles of the per-round ratios
as its spread. Latency is measured by the client (queueing included); each server's CPU time
over the requests it answered in a round comes from /proc. The client is
bench/loadgen.py: keep-alive connections on asyncio with httptools' parser, which keeps the
floor server busy where aiohttp's client could not (see there).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import itertools
import json
import operator
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.common import (
    RESULTS,
    combined_spread,
    interleaved,
    markdown_table,
    paired_ratio,
    publish,
    ratio_table,
    record_ratio,
    spread,
)
from bench.edge import CACHE, STAMP
from bench.gpu_check import PYTHIA_70M
from bench.loadgen import load
from common.net import free_port, wait_http
from tasks.dataset import sweep_data, sweep_splits

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
    inherits them) and wait until ``ready`` answers 200 on ``port``; yields (its URL, its pid); stops it
    afterwards."""
    pin = (lambda: os.sched_setaffinity(0, cores)) if cores else None
    proc = subprocess.Popen([sys.executable, *args], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, preexec_fn=pin)  # noqa: PLW1509 - no threads of ours run at that point
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_http(f"{url}{ready}", timeout, proc)
        except RuntimeError:
            raise RuntimeError(f"server {args} exited: {proc.stderr.read()[-2000:]}") from None
        yield url, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _current(folder: Path, variant: str) -> bool:
    """``folder`` holds a published ``variant`` whose graph this fracture's rewrites made: a sweep exported
    before a rewrite changed is not benchmarked on its older graph (``export.pipeline.stale_graph``)."""
    from export.pipeline import stale_graph
    from export.registry import get_variant

    path = folder / "manifest.json"
    return path.is_file() and stale_graph(json.loads(path.read_text()), get_variant(variant)) is None


def _pick(sweep: Path, variants: tuple[str, ...], current: bool = True) -> tuple[str, int] | None:
    """(the first run of ``sweep`` that has every one of ``variants``, made by the current rewrites unless
    ``current`` is false, and its step), or None."""
    published = _current if current else (lambda folder, _: (folder / "manifest.json").is_file())
    for run in sorted(p for p in sweep.iterdir() if p.is_dir()):
        if all(published(run / "variants" / v, v) for v in variants):
            return run.name, json.loads((run / "variants" / variants[0] / "manifest.json").read_text())["step"]
    return None


MAX_TOKENS = 7  # of every request the benchmark sends
SERVED = "ort-int8"  # the variant every serving ratio is read on


def _link_files(src: Path, dest: Path) -> None:
    """Every file of ``src`` into ``dest``, hard-linked (copied where ``dest`` is on another file system)."""
    for f in src.iterdir():
        try:
            os.link(f, dest / f.name)
        except OSError:
            shutil.copy2(f, dest / f.name)


def served_cache_record(sweep: Path, run: str, variants: tuple[str, ...] = (SERVED,)) -> dict:
    """What the serving benchmark's cache of ``sweep``'s ``run`` is built from: the run's published onnx-fp32 (its
    manifest holds every file's sha256) and what the builders do with it (``checked``: since 2026-11-29 each
    build is checked as an export is; a cache built before, without the parity check, is not reused); and the
    ``variants`` it was built for (not in the key: bench/caches.py reads them to tell when the sweep has its own).
    Raises FileNotFoundError when the run has no published onnx-fp32."""
    import onnxruntime

    from export.fusion import FUSION_VERSION
    from export.quantize import PER_TOKEN_VERSION
    from export.registry import FP32

    manifest = sweep / run / "variants" / FP32 / "manifest.json"
    return {"sweep": str(sweep.resolve()), "run": run, "onnx_fp32_manifest": manifest.read_text(),
            "onnxruntime": onnxruntime.__version__, "fusion": FUSION_VERSION, "per_token": PER_TOKEN_VERSION,
            "checked": True, "variants": list(variants)}


def served_cache_key(record: dict) -> str:
    """The folder name's hash of a ``served_cache_record``: these fields in this order, as the folders were named
    before they kept a record, so those folders keep their names."""
    r = record
    stamp = json.dumps([r["sweep"], r["run"], r["onnx_fp32_manifest"], r["onnxruntime"], r["fusion"], r["per_token"],
                        "checked"])
    return hashlib.sha256(stamp.encode()).hexdigest()[:12]


def served_sweep(sweep: Path, variants: tuple[str, ...], cache: Path) -> tuple[Path, str, Path]:
    """(the sweep folder the fracture servers serve, the run measured, its checkpoint in ``sweep``).

    ``sweep`` itself where one of its runs has every one of ``variants``, made by the current graph rewrites
    (an export from before they changed is not measured as it is). Else (a fresh ``make demo`` exports
    ``ort-int4``, not ``ort-int8``) a folder under ``cache`` for the first run with a published ``onnx-fp32``:
    that run's current published variants hard-linked, and each other one of ``variants`` that derives from
    ``onnx-fp32`` built by the registry's builder (seconds at the embedded base's size) and published with the
    manifest an export writes; from that run's ``onnx-fp32`` where the current rewrites made it, else from one
    built afresh there from the checkpoint. Each is checked as the export checks it (its graph, and parity
    against the checkpoint: ``export.pipeline.build_checked``). So every machine measures the same variant, and
    the sweep is left as it was: no variant and no accuracy row is added to it (its analysis would change)."""
    from common.files import atomic_write_json, atomic_write_text, folder_lock
    from common.manifest import verify
    from export.pipeline import CheckpointJob, ExportCheckFailed, build_checked, reference_of
    from export.registry import FP32, get_variant

    picked = _pick(sweep, variants)
    if picked:
        return sweep, picked[0], sweep / picked[0] / "checkpoints" / f"step-{picked[1]}"
    found = _pick(sweep, (FP32,), current=False)
    if found is None:
        raise FileNotFoundError(f"no run of {sweep} has {FP32}: run `python -m export --sweep {sweep}`")
    run, step = found
    job = CheckpointJob(run, step, step, sweep / run)  # the run's last checkpoint: its variants are the served ones
    checkpoint, published = job.checkpoint, job.run_dir / "variants"
    problem = verify(published / FP32, "variant")
    if problem:
        raise FileNotFoundError(f"{problem}: run `python -m export --sweep {sweep}`")
    missing = [v for v in variants if not _current(published / v, v)]
    for v in missing:  # said before anything is built
        spec = get_variant(v)
        if spec.needs != FP32 or spec.runner != "onnx":
            raise FileNotFoundError(f"{v} is not exported in {sweep}: run `python -m export --sweep {sweep} "
                                    f"--variants {v}`")
    record = served_cache_record(sweep, run, variants)
    root = cache / f"served-{served_cache_key(record)}"
    reference = functools.cache(lambda: reference_of(sweep, job))  # the checkpoint and its outputs, once

    def build(spec, dest: Path, fp32: Path | None) -> None:
        try:
            build_checked(reference(), job, spec, dest, fp32)
        except ExportCheckFailed as exc:
            raise RuntimeError(f"building {spec.name} into {root} for the serving benchmark failed the export's "
                               f"check: {exc}") from None

    with folder_lock(root, "the serving benchmark's build"):  # two benchmarks never build into one folder
        atomic_write_json(root / STAMP, record)
        fp32 = published / FP32
        if not _current(fp32, FP32):  # made by older rewrites: what derives from it would be older too
            fp32 = root / run / "variants" / FP32
            if verify(fp32, "variant") is not None:
                build(get_variant(FP32), fp32, None)
        for v in variants:
            dest = root / run / "variants" / v
            if verify(dest, "variant") is None:
                continue
            if v not in missing:  # exported by the current rewrites: the same files, with their manifest
                tmp = dest.with_name(f".{v}.tmp")
                for d in (tmp, dest):
                    shutil.rmtree(d, ignore_errors=True)
                tmp.mkdir(parents=True)
                _link_files(published / v, tmp)
                os.replace(tmp, dest)
                continue
            build(get_variant(v), dest, fp32)
        atomic_write_text(root / "sweep.yaml", (sweep / "sweep.yaml").read_text())
    return root, run, checkpoint


EDGE_RUN, EDGE_VARIANT = "pythia70m-random", "ort-int8"  # the pythia-70m-sized model served beside the demo's
EDGE_NAME = f"pythia70m-{EDGE_VARIANT}"  # its name in the results


def edge_sweep(sweep: Path, arch: dict, cache: Path) -> Path:
    """A sweep folder that ``python -m serve`` serves: ``bench.edge``'s ``EDGE_VARIANT`` of ``arch`` (built
    there and cached), its files hard-linked under ``<EDGE_RUN>/variants/`` with the manifest an export
    writes, and ``sweep``'s task (the shift labels requests carry). Random weights: what serving costs at
    that size, not what it answers."""
    import yaml

    from bench.edge import build_models
    from common.files import atomic_write_text
    from common.manifest import publish, verify

    checkpoint, folders = build_models(arch, root=cache)
    root = checkpoint.parent / "served"
    dest = root / EDGE_RUN / "variants" / EDGE_VARIANT
    if verify(dest, "variant") is not None:
        tmp = dest.with_name(f".{EDGE_VARIANT}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        _link_files(folders[EDGE_VARIANT], tmp)
        publish(tmp, dest, "variant", {"run": EDGE_RUN, "variant": EDGE_VARIANT, "step": 0, "weight_bits": 8,
                                       "backend": "onnxruntime", "runner": "onnx"})
    task = (yaml.safe_load((sweep / "sweep.yaml").read_text()) or {}).get("task", {})
    atomic_write_text(root / "sweep.yaml", yaml.safe_dump({"task": task}))
    return root


def bench_serving(sweep: Path, variants: tuple[str, ...] | None = None, concurrencies=(1, 8, 32),
                  seconds: float = 3.0, repeats: int = 5, baselines: bool = True, overheads: bool = True,
                  edge_arch: dict | None = PYTHIA_70M, edge_cache: Path = CACHE,
                  out_dir: Path | None = RESULTS) -> dict:
    """Every server on one half of the cores, the load generator on the other (``split_cores``), so
    that the client's work never preempts the server it measures. ``overheads``: also the three points that
    compare throughput over HTTP with and without metrics or guards (no target: the in-process shares are
    the measures held to one; ``make bench`` leaves them out to keep within ~5 minutes). ``edge_arch``: the
    architecture of the model also served at every concurrency (``edge_sweep``; default pythia-70m's, None
    for none) and the cache it is built in."""
    server_cores, client_cores = split_cores()
    start = functools.partial(server_process, cores=server_cores)
    cores = {"server": sorted(server_cores or []), "load_generator": sorted(client_cores or [])}
    with pinned(client_cores):
        edge = edge_sweep(sweep, edge_arch, edge_cache) if edge_arch else None
        variants = tuple(variants or (SERVED,))
        served = served_sweep(sweep, variants, edge_cache)
        return _bench_serving(start, cores, sweep, served, variants, concurrencies, seconds, repeats, baselines,
                              overheads, edge, out_dir)


def timed_rounds(points: dict[str, tuple], seconds: float, repeats: int) -> dict[str, dict]:
    """Each point (``(url, bodies, concurrency, headers, server pid)``) loaded for ``seconds``, in ``repeats``
    rounds that visit every point in turn, in the given order and then in reverse (ABC, CBA, ...):
    a point and the baseline next to it are measured seconds apart, and over two rounds a drift of
    the machine's speed falls on both alike; a ratio is paired round by round. Per point: req/s,
    p50 and p99 of every round (``samples``), their median and quartiles, and the requests counted;
    and, where Linux' /proc tells, the server's CPU seconds per request answered and the share of its
    cores' time that was (``server_cpu``: where the load generator, not the server, limits the req/s,
    1 / req/s overstates what a request costs the server)."""
    rounds: dict[str, list[dict]] = {name: [] for name in points}
    order = list(points)
    for r in range(repeats):
        for name in (order if r % 2 == 0 else order[::-1]):
            url, bodies, concurrency, headers, pid = points[name]
            done = load(url, bodies, concurrency, 10**9, seconds, headers, watch_pid=pid)
            if "watched_cpu_s" in done:  # the server's CPU over the timed requests (its warm-up left out)
                done |= {"cpu_per_request": done["watched_cpu_s"] / max(done["completed"], 1),
                         "cpu_busy": done["watched_cpu_s"] / done["seconds"]}
            rounds[name].append(done)
    out = {}
    for name, rs in rounds.items():
        out[name] = {"concurrency": rs[0]["concurrency"], "completed": sum(r["completed"] for r in rs),
                     "errors": sum(r["errors"] for r in rs), "seconds": round(sum(r["seconds"] for r in rs), 3),
                     **{key: {"samples": [r[key] for r in rs], **spread([r[key] for r in rs])}
                        for key in ("rps", "p50_ms", "p99_ms")}}
        if all("cpu_per_request" in r for r in rs):
            per_request = [r["cpu_per_request"] for r in rs]
            out[name]["server_cpu"] = {"samples": per_request, **spread(per_request),
                                       "cpu_busy": spread([r["cpu_busy"] for r in rs])}
    return out


def metrics_seconds_per_request(shifts: list[str], rounds: int = 15, calls: int = 10000) -> dict:
    """What recording one completion costs the server, in process: the metric calls a request makes
    (``CompletionService``: in flight up and down, the loaded-model count, the graded completion with its
    digits; ``Batcher``: a batch-size observation, counted here once per request, where a batch shares one)
    on ``serve.metrics.Metrics`` against the same calls on ``NullMetrics``, alternated over ``rounds`` (each
    first in every other round). A tight loop in this process, with warm caches: it leaves out what the
    server's other work does to those caches, so read it as the metrics' own cost.

    The served comparison (``metrics_overhead``: throughput with and without metrics) moves by ±10-15% from
    round to round on a 2-core machine, more than the 3% it is held to; this difference of two in-process
    timings resolves a microsecond."""
    from prometheus_client import CollectorRegistry

    from serve.metrics import Metrics, NullMetrics

    def per_call(metrics) -> float:
        metrics.declare_fleet([("r0", "ort-int4", 100)], shifts)
        completed, inflight, loaded, batch = (metrics.completed, metrics.inflight, metrics.models_loaded,
                                              metrics.batch)
        labels = [(shifts[i % len(shifts)], ("correct", "incorrect")[i % 2]) for i in range(64)]
        started = time.perf_counter()
        for i in range(calls):
            shift, result = labels[i % 64]
            inflight.inc()
            loaded.set(1)
            completed("r0", "ort-int4", shift, result, 0.05, 5, (3, 4))
            batch("ort-int4", 16)
            inflight.dec()
        return (time.perf_counter() - started) / calls

    return alternated_extra(lambda: per_call(Metrics(CollectorRegistry())),
                            lambda: per_call(NullMetrics(CollectorRegistry())), rounds)


def model_seconds_per_request(folder: Path, prompts: list[str], batch: int, max_tokens: int,
                              cores: set[int] | None, repeats: int = 5, min_seconds: float = 0.5) -> dict:
    """The model's own seconds per request, as the server runs it at its most efficient: ``batch`` requests
    (at most the server's ``max_batch_size``) decoded together, at concurrency ``batch`` no batch is larger
    and a row costs least in the largest; through the runner the fleet opens (``export.runtime.OnnxCausalLM``
    with the served intra-op threads), the prompts taken in turn as the load generator sends them and each
    answer finished (cut, detokenized) as the batcher does. Tokenizing is left out (done once, before the
    timing): it is part of the server's other work. In this process, pinned to the servers' ``cores`` once
    the servers have stopped, in ``repeats`` timed rounds.

    On a server with one core, its own work and its decode thread take turns, so the floor server's CPU
    seconds per request plus this is the least a served request can cost: ``server_vs_floor_c32_bound``."""
    from export.runtime import OnnxCausalLM
    from serve.config import ServeConfig
    from tasks.formatting import format_prompt

    served = ServeConfig()
    batch = min(batch, served.max_batch_size)
    with pinned(cores):  # the session's threads, where it starts any, inherit the servers' cores
        runner = OnnxCausalLM(folder, threads=served.threads, providers=["CPUExecutionProvider"])
        digit_format = json.loads((folder / "fracture.json").read_text()).get("digit_format", "compact")
        source = itertools.cycle([runner.encode_checked(format_prompt(p, digit_format))[0] for p in prompts])

        def decode_batch() -> None:
            chunk = list(itertools.islice(source, batch))
            for row, gen in zip(chunk, runner.generate_ids(chunk, max_tokens)):
                runner.finish(len(row), gen[:max_tokens])

        timed = interleaved({"model": decode_batch}, repeats=repeats, min_seconds=min_seconds)["model"]
    per_request = [s / batch for s in timed["samples"]]
    return {**spread(per_request), "samples": per_request, "batch": batch, "max_tokens": max_tokens}


def alternated_extra(measured, baseline, rounds: int) -> dict:
    """``measured()`` - ``baseline()`` (seconds each) over ``rounds``, the order alternating so that being first
    in a round favours neither: their median and quartiles, and the ``samples``."""
    extra = []
    for r in range(rounds):
        if r % 2:
            base = baseline()
            extra.append(measured() - base)
        else:
            extra.append(measured() - baseline())
    return {**spread(extra), "samples": extra}


class _Transport(asyncio.Transport):
    """The socket side of one connection, in process: what the server writes is dropped, its answers other
    than 200 counted."""

    def __init__(self):
        super().__init__()
        self.closing, self.not_ok = False, 0
        self.on_close = None  # called when the server closes the connection

    def get_extra_info(self, name, default=None):
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 40000)}.get(name, default)

    def write(self, data) -> None:
        if data[:9] == b"HTTP/1.1 " and data[9:12] != b"200":
            self.not_ok += 1

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True
        if self.on_close is not None:
            self.on_close()

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def _raw_request(token: str | None) -> bytes:
    """A completion request as the load generator (bench/loadgen.py) sends it, with the bearer token when
    given."""
    from bench.loadgen import encode

    body = {"model": "floor", "prompt": "123+456=", "max_tokens": MAX_TOKENS, "temperature": 0, "shift": "id",
            "expected": "579"}
    (raw,) = encode("http://127.0.0.1:8000", "/v1/completions", [body],
                    {"Authorization": f"Bearer {token}"} if token else None)
    return raw


async def _seconds_per_request(config, raw: bytes, requests: int) -> float:
    """``requests`` requests, one after another on one kept-alive connection, through ``config``'s HTTP
    protocol and app (as uvicorn runs them, on this loop), each answered in full before the next."""
    from uvicorn.server import ServerState

    loop = asyncio.get_running_loop()
    protocol = config.http_protocol_class(config=config, server_state=ServerState(), app_state={}, _loop=loop)
    transport = _Transport()
    protocol.connection_made(transport)
    answered, complete = None, protocol.on_response_complete

    def on_response_complete():
        complete()
        answered.set_result(None)

    def on_close():  # refused before an answer completed (a limit of the guarded protocol): fail, not hang
        if not answered.done():
            answered.set_exception(RuntimeError("the server closed the connection before answering"))

    protocol.on_response_complete = on_response_complete
    transport.on_close = on_close
    started = time.perf_counter()
    for _ in range(requests):
        answered = loop.create_future()
        protocol.data_received(raw)
        await answered
    seconds = (time.perf_counter() - started) / requests
    protocol.connection_lost(None)
    if transport.not_ok:  # a refusal is not what is being timed
        raise RuntimeError(f"{transport.not_ok} of {requests} requests were not answered 200")
    return seconds


def guards_seconds_per_request(rounds: int = 15, requests: int = 3000) -> dict:
    """What fracture's guards cost a request, in process: the fixed-answer app (``bench.servers.floor_app``)
    behind uvicorn's own HTTP protocol against the same app behind the guards exactly as the server runs
    them (``serve.http.uvicorn_config``'s header-limited protocol and settings, the body limit, bearer auth
    with the token sent, drain), alternated over ``rounds`` (each first in every other round), on uvloop as
    uvicorn runs. The bytes of every request go through the real parser and the real ASGI stack; only the
    socket is left out, which is the same on both sides.

    Over HTTP the same difference reads the same (server CPU time per request, floor and guarded floor,
    alternated: 29.7 µs median on 2026-11-29, against 28.6 here before the guards were made leaner), but
    the floor's req/s, which it was read from before, moved by ±15% between runs."""
    import uvicorn

    from bench.servers import BENCH_TOKEN, floor_app
    from serve.config import ServeConfig
    from serve.http import uvicorn_config

    plain = uvicorn.Config(floor_app(False), host="127.0.0.1", port=8000, access_log=False, log_level="warning")
    guarded = uvicorn_config(floor_app(True), ServeConfig(port=8000), log_level="warning")
    for config in (plain, guarded):
        config.load()
    sides = {"plain": (plain, _raw_request(None)), "guarded": (guarded, _raw_request(BENCH_TOKEN))}
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:  # uvicorn runs on asyncio's own loop then, and so does this
        loop = asyncio.new_event_loop()
    try:
        for config, raw in sides.values():  # warm-up
            loop.run_until_complete(_seconds_per_request(config, raw, requests // 8))

        def timed(side: str):
            return lambda: loop.run_until_complete(_seconds_per_request(*sides[side], requests))

        return alternated_extra(timed("guarded"), timed("plain"), rounds)
    finally:
        loop.close()


def _bench_serving(start, cores: dict, sweep: Path, served: tuple[Path, str, Path], variants: tuple[str, ...],
                   concurrencies, seconds: float, repeats: int, baselines: bool, overheads: bool,
                   edge: Path | None, out_dir: Path | None) -> dict:
    from bench.servers import BENCH_TOKEN
    from tasks.dataset import read_jsonl

    quantized = SERVED if SERVED in variants else variants[-1]
    served_root, run, checkpoint = served
    items = read_jsonl(sweep_data(sweep) / "dev.jsonl")[:256]
    top = f"c{max(concurrencies)}"

    def bodies(model: str) -> list[dict]:
        return [{"model": model, "prompt": it["prompt"], "max_tokens": MAX_TOKENS, "temperature": 0, "shift": "id",
                 "expected": it["answer"]} for it in items]

    # the one run measured: a fleet of every run would spend seconds opening sessions at each server start
    serve = ["-m", "serve", f"--sweep={served_root}", f"--variants={','.join(variants)}", f"--runs={run}"]
    servers = {"fracture": (serve, "/openapi.json", None, None)}  # name -> (argv without --port, readiness path,
    # model id, request headers)
    if overheads:  # the same server without its guards, and recording no metrics: their cost on the served path
        servers |= {"unguarded": (["-m", "bench.servers", "unguarded", *serve[2:]], "/openapi.json", None, None),
                    "no-metrics": ([*serve, "--record_metrics=false"], "/openapi.json", None, None)}
    if edge:  # the pythia-70m-sized int8 variant, served at every concurrency
        servers[EDGE_NAME] = (["-m", "serve", f"--sweep={edge}", f"--variants={EDGE_VARIANT}"], "/openapi.json",
                              f"{EDGE_RUN}/{EDGE_VARIANT}", None)
    if baselines:
        servers |= {
            "naive": (["-m", "bench.servers", "naive", f"--checkpoint={checkpoint}"], "/openapi.json", "naive", None),
            "floor": (["-m", "bench.servers", "floor"], "/openapi.json", "floor", None),
        }
    if baselines and overheads:  # the floor behind fracture's HTTP guards: their cost where nothing else costs
        servers["floor-guarded"] = (["-m", "bench.servers", "floor", "--guarded"], "/healthz", "floor",
                                    {"Authorization": f"Bearer {BENCH_TOKEN}"})
    with contextlib.ExitStack() as stack:
        urls, pids = {}, {}
        for name, (argv, ready, _, _) in servers.items():
            port = free_port()
            urls[name], pids[name] = stack.enter_context(start([*argv, f"--port={port}"], port, ready=ready))

        def point(server: str, concurrency: int, variant: str = quantized) -> tuple:
            _, _, model, headers = servers[server]
            return urls[server], bodies(model or f"{run}/{variant}"), concurrency, headers, pids[server]

        points = {(quantized, f"c{c}"): point("fracture", c) for c in sorted(concurrencies)}  # the table's order
        points |= {(name, top): point(name, max(concurrencies))
                   for name in servers if name not in ("fracture", EDGE_NAME)}
        points |= {(v, top): point("fracture", max(concurrencies), v) for v in variants if v != quantized}
        if edge:
            points |= {(EDGE_NAME, f"c{c}"): point(EDGE_NAME, c) for c in sorted(concurrencies)}
        # the order of the rounds puts the two sides of a ratio next to each other where it can: c1 beside the
        # top level (c32_vs_c1), the top level beside the floor (server_vs_floor_c32), the floor beside the
        # guarded floor; then the top level's other baselines (naive; unguarded and no-metrics), then the rest
        lead = [(quantized, "c1"), (quantized, top), ("floor", top), ("floor-guarded", top), ("naive", top),
                ("unguarded", top), ("no-metrics", top)]
        order = [k for k in dict.fromkeys(lead) if k in points] + [k for k in points if k not in lead]
        timed = timed_rounds({f"{n}@{c}": points[n, c] for n, c in order}, seconds, repeats)
    results: dict[str, dict] = {}
    for (name, level) in points:
        results.setdefault(name, {})[level] = timed[f"{name}@{level}"]
    failed = {f"{n}@{c}": r["errors"] for n, by in results.items() for c, r in by.items() if r["errors"]}
    if failed:
        raise RuntimeError(f"requests answered with an error: {failed}")

    def rps(name: str, level: str = top) -> list[float]:
        return results[name][level]["rps"]["samples"]

    ratios, ratio_spread = {}, {}
    record_ratio(ratios, ratio_spread, "c32_vs_c1", paired_ratio(rps(quantized), rps(quantized, "c1")))
    compared = [("metrics_overhead", rps(quantized), rps("no-metrics")),
                ("guards_overhead_served", rps(quantized), rps("unguarded"))] if overheads else []
    if baselines:
        record_ratio(ratios, ratio_spread, "quantized_vs_naive_c32", paired_ratio(rps(quantized), rps("naive")))
        record_ratio(ratios, ratio_spread, "server_vs_floor_c32", paired_ratio(rps(quantized), rps("floor")))
        if overheads:
            compared.append(("guards_overhead_floor", rps("floor-guarded"), rps("floor")))
    for name, num, den in compared:  # the share of throughput lost: 1 - ratio (its quartiles swap ends)
        r = paired_ratio(num, den)
        ratios[name], ratio_spread[name] = 1 - r["median"], {"q1": 1 - r["q3"], "q3": 1 - r["q1"]}
    # the metrics' and the guards' in-process seconds per request over the served request's seconds (1 / req/s of
    # the quantized variant at the top level; on a saturated one-core server that is its CPU per request, with
    # more cores the share comes out larger than it is)
    recorded = metrics_seconds_per_request(list(sweep_splits(sweep)))
    guards = guards_seconds_per_request()
    # the model's own time, after the servers stopped: its share of a served request, and (on a one-core server,
    # where the server's own work and its decoding take turns) the most it could reach against the floor if
    # everything else it does were free: a served request costs at least the floor server's CPU per request
    # plus the model's, against the floor's req/s as measured
    model = model_seconds_per_request(served_root / run / "variants" / quantized, [it["prompt"] for it in items],
                                      max(concurrencies), MAX_TOKENS, set(cores["server"]) or None)
    # (each spread takes in both parts' noise: the in-process cost's rounds and the served req/s' rounds)
    for name, cost in (("metrics_share_of_served", recorded), ("guards_share_of_served", guards),
                       ("model_share_of_served", model)):
        record_ratio(ratios, ratio_spread, name,
                     combined_spread(operator.mul, cost["samples"], rps(quantized)))
    # what a floor request costs its server (its CPU seconds over the requests it answered in its rounds): the load
    # generator may be what holds the floor's req/s
    floor_cpu = results["floor"][top].get("server_cpu") if baselines else None
    if floor_cpu and len(cores["server"]) == 1:
        floor_rounds = list(zip(rps("floor"), floor_cpu["samples"], strict=True))  # (req/s, CPU s a request)
        record_ratio(ratios, ratio_spread, "server_vs_floor_c32_bound",
                     combined_spread(lambda floor, model_s: (1 / floor[0]) / (floor[1] + model_s), floor_rounds,
                                     model["samples"]))
    payload = {"cores": cores, "run": run, "quantized": quantized, "served_sweep": str(served_root),
               "seconds_per_point": seconds, "repeats": repeats, "results": results, "ratios": ratios,
               "ratio_spread": ratio_spread,
               "metrics_seconds_per_request": recorded, "guards_seconds_per_request": guards,
               "model_seconds_per_request": model, "floor_cpu_seconds_per_request": floor_cpu}
    rows = [[name, level, f"{r['rps']['median']:.0f}", f"{r['rps']['q1']:.0f}-{r['rps']['q3']:.0f}",
             f"{r['p50_ms']['median']:.1f}", f"{r['p99_ms']['median']:.1f}", r["completed"],
             f"{1e6 * r['server_cpu']['median']:.0f}" if "server_cpu" in r else "—"]
            for name, by_level in results.items() for level, r in by_level.items()]
    publish("serving", payload, out_dir, [
        markdown_table(["server", "concurrency", "req/s (median)", "req/s IQR", "p50 ms", "p99 ms", "requests",
                        "server CPU µs/request"],
                       rows),
        ratio_table(ratios, ratio_spread)])
    return payload
