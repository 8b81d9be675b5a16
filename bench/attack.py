"""Attack the server the way issue reports did, and watch its memory and a well-formed request.

    python -m bench.attack --sweep runs/demo

Starts ``python -m serve`` on a free loopback port (one variant), then runs, one after another:

- ``big-headers``: 4 connections each trying to send 100 MB of headers;
- ``slowloris``: 1,000 connections that send a header line every second and never finish;
- ``idle``: 500 connections that send nothing.

During each attack (after a few seconds) and after it ends, it sends one well-formed completion
and records its status and latency, and the server's resident memory (VmRSS). Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx

from common.net import free_port, wait_http


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def probe(url: str, model: str) -> dict:
    started = time.perf_counter()
    try:
        r = httpx.post(f"{url}/v1/completions", json={"model": model, "prompt": "12+34="}, timeout=10)
        status = r.status_code
    except httpx.HTTPError as exc:
        status = type(exc).__name__
    return {"status": status, "ms": round((time.perf_counter() - started) * 1000, 1)}


async def big_headers(port: int, stop: asyncio.Event) -> None:
    async def one():
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            chunk = b"X-Pad: " + b"a" * 65_000 + b"\r\n"
            for _ in range(100_000_000 // len(chunk)):
                if stop.is_set():
                    break
                writer.write(chunk)
                await writer.drain()
            writer.close()
        except OSError:
            pass  # the server closed the connection: what it should do

    await asyncio.gather(*(one() for _ in range(4)))


async def slow(port: int, stop: asyncio.Event, n: int, send_lines: bool) -> None:
    async def one():
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            if send_lines:
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            i = 0
            while not stop.is_set():
                if send_lines:
                    writer.write(b"X-%d: 1\r\n" % i)
                    await writer.drain()
                    i += 1
                await asyncio.sleep(1)
            writer.close()
        except OSError:
            pass

    await asyncio.gather(*(one() for _ in range(n)))


def attack(name: str, coro_factory, url: str, model: str, pid: int, seconds: float) -> dict:
    async def run():
        stop = asyncio.Event()
        task = asyncio.create_task(coro_factory(stop))
        await asyncio.sleep(seconds)
        during = {"rss_mb": round(rss_mb(pid), 1), **await asyncio.to_thread(probe, url, model)}
        stop.set()
        await asyncio.wait_for(task, 60)
        return during

    during = asyncio.run(run())
    time.sleep(2)
    after = {"rss_mb": round(rss_mb(pid), 1), **probe(url, model)}
    return {"attack": name, "during": during, "after": after}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.attack")
    p.add_argument("--sweep", default="runs/demo")
    p.add_argument("--variant", default="ort-int4")
    p.add_argument("--seconds", type=float, default=15.0, help="how long each attack runs before the probe")
    a = p.parse_args(argv)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "serve", f"--sweep={a.sweep}", f"--port={port}",
                               f"--variants={a.variant}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"{url}/readyz", proc=server)
        model = httpx.get(f"{url}/v1/models").json()["data"][0]["id"]
        results = [{"attack": "none (baseline)", "after": {"rss_mb": round(rss_mb(server.pid), 1),
                                                          **probe(url, model)}}]
        results.append(attack("big-headers: 4 x 100 MB", lambda stop: big_headers(port, stop), url, model,
                              server.pid, a.seconds))
        results.append(attack("slowloris: 1000 connections", lambda stop: slow(port, stop, 1000, True), url, model,
                              server.pid, a.seconds))
        results.append(attack("idle: 500 connections", lambda stop: slow(port, stop, 500, False), url, model,
                              server.pid, a.seconds))
    finally:
        server.terminate()
        server.wait(timeout=30)
    print("| attack | during: RSS MB, request | after: RSS MB, request |\n|---|---|---|")
    for r in results:
        d, f = r.get("during"), r["after"]
        during = f"{d['rss_mb']}, {d['status']} in {d['ms']} ms" if d else "—"
        print(f"| {r['attack']} | {during} | {f['rss_mb']}, {f['status']} in {f['ms']} ms |")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
