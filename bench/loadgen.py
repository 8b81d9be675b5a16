"""The serving benchmark's load generator: keep-alive HTTP/1.1 connections on asyncio (uvloop's loop where it
is installed), every request encoded once up front, every response parsed by httptools (the C parser uvicorn
serves with).

Why not aiohttp's client (the replay client, serve/replay.py): the load generator has one core here, and
aiohttp's work per request was what limited the bare-HTTP floor. Against the floor server at 32 connections,
three alternated 3 s loads each: aiohttp 10,742-11,752 req/s with the server 67-81% busy (its CPU time from
/proc over the wall time), this client 15,141-15,778 req/s with the server 100% busy. So the floor, and every
ratio against it, measured the client as much as the server. (httpx's async pool was slower still.)
"""

from __future__ import annotations

import asyncio
import itertools
import json
import statistics
import time
from urllib.parse import urlsplit

import httptools

from bench.common import cpu_seconds

TIMEOUT = 60.0  # seconds a response may take before the load fails: a hung server, not a slow one


class _Connection(asyncio.Protocol):
    """One keep-alive connection: one request at a time, its status when the whole response has arrived."""

    def __init__(self):
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future | None = None
        self.closed = False

    # -- asyncio.Protocol
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionError(f"unparseable response: {exc}"))
            self.transport.close()

    def connection_lost(self, exc) -> None:
        self.closed = True
        self._fail(ConnectionError("the server closed the connection before its response ended"))

    # -- httptools callbacks
    def on_message_complete(self) -> None:
        if self.parser.get_status_code() < 200:  # an interim answer (100 Continue): the real one follows
            return
        if not self.parser.should_keep_alive():  # "Connection: close": the next request needs a new one
            self.closed = True
            self.transport.close()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(self.parser.get_status_code())

    def _fail(self, exc: Exception) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)

    async def send(self, raw: bytes, where: str) -> int:
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        try:
            return await asyncio.wait_for(self.waiter, TIMEOUT)
        except TimeoutError:
            raise TimeoutError(f"{where}: no complete response within {TIMEOUT:g} s") from None


def encode(url: str, path: str, bodies: list[dict], headers: dict | None = None) -> list[bytes]:
    """Each body as the bytes of a POST of it as JSON to ``path`` (keep-alive, HTTP/1.1)."""
    host = urlsplit(url).netloc
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    out = []
    for body in bodies:
        data = json.dumps(body).encode()
        head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(data)}\r\n{extra}\r\n")
        out.append(head.encode() + data)
    return out


async def run_load(url: str, bodies: list[dict], concurrency: int, max_requests: int, max_seconds: float,
                   warmup: int, headers: dict | None = None, path: str = "/v1/completions",
                   watch_pid: int | None = None) -> dict:
    """``concurrency`` connections, each sending its next request as soon as its last was answered, until
    ``max_requests`` were sent or ``max_seconds`` passed, after ``warmup`` untimed requests. A response other
    than 200 is an error. A connection the server ends with ``Connection: close`` is opened again for the
    next request; one it drops with a request unanswered (or half answered) costs that request, counted as
    an error, and is opened again. A response that takes over ``TIMEOUT`` (a hung server) or a connection
    that cannot be opened fails the load. ``watch_pid``: also the CPU seconds that process (the server) spent
    over the timed requests (``watched_cpu_s``, where Linux' /proc tells), its warm-up left out."""
    loop = asyncio.get_running_loop()
    parts = urlsplit(url)
    source = itertools.cycle(encode(url, path, bodies, headers))

    async def connect() -> _Connection:
        _, conn = await loop.create_connection(_Connection, parts.hostname, parts.port)
        return conn

    where = f"{url.rstrip('/')}{path}"
    conns: list[_Connection] = []
    latencies: list[float] = []
    errors = 0

    async def one(slot: int, raw: bytes, record: bool) -> None:
        nonlocal errors
        if conns[slot].closed:  # closed between requests (the server's keep-alive ended): not an error
            conns[slot] = await connect()
        t = time.perf_counter()
        try:
            status = await conns[slot].send(raw, where)
        except ConnectionError:
            errors += 1
            conns[slot].transport.close()
            conns[slot] = await connect()
            return
        if status != 200:
            errors += 1
        elif record:
            latencies.append(time.perf_counter() - t)

    async def together(coros) -> None:
        """Run ``coros`` as tasks; the first failure cancels the others before it is raised."""
        tasks = [asyncio.ensure_future(c) for c in coros]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    try:
        for _ in range(concurrency):
            conns.append(await connect())
        for start in range(0, warmup, concurrency):
            await together(one(slot, next(source), False) for slot in range(min(concurrency, warmup - start)))
        cpu_before, started = cpu_seconds(watch_pid) if watch_pid else None, time.perf_counter()
        deadline = started + max_seconds
        sent = 0

        async def worker(slot: int) -> None:
            nonlocal sent
            while sent < max_requests and time.perf_counter() < deadline:
                sent += 1
                await one(slot, next(source), True)

        await together(worker(slot) for slot in range(concurrency))
        wall = time.perf_counter() - started
        cpu_after = cpu_seconds(watch_pid) if watch_pid else None
    finally:
        for conn in conns:
            conn.transport.close()
    if not latencies:
        raise RuntimeError(f"no request to {where} succeeded ({errors} errors)")
    ordered = sorted(latencies)
    out = {"concurrency": concurrency, "completed": len(latencies), "errors": errors, "seconds": wall,
           "rps": len(latencies) / wall, "p50_ms": 1000 * statistics.median(ordered),
           "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]}
    if cpu_before is not None and cpu_after is not None:  # the watched process' CPU over the same timed span
        out["watched_cpu_s"] = cpu_after - cpu_before
    return out


def load(url: str, bodies: list[dict], concurrency: int, max_requests: int, max_seconds: float,
         headers: dict | None = None, watch_pid: int | None = None) -> dict:
    """One load (``run_load``, 2 x ``concurrency`` warm-up requests) on a fresh event loop: uvloop's where
    installed (what uvicorn's servers run on too), else asyncio's."""
    coro = run_load(url, bodies, concurrency, max_requests, max_seconds, 2 * concurrency, headers, watch_pid=watch_pid)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)
