"""bench/loadgen.py, the serving benchmark's HTTP client, against small servers on 127.0.0.1: what it sends,
what it counts as an error, and how it survives a server that closes connections."""

from __future__ import annotations

import asyncio
import json
import os

import pytest

from bench.loadgen import load, run_load


def _serve(handler):
    """Run ``handler(reader, writer)`` as a loopback server around ``run_load``'s coroutine; the result of
    the load and every request the server read."""

    async def main(load_args: dict):
        seen: list[dict] = []

        async def client(reader, writer):
            try:
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    lines = head.decode().split("\r\n")
                    fields = {k.lower(): v.strip() for k, v in (x.split(":", 1) for x in lines[1:] if ":" in x)}
                    body = json.loads(await reader.readexactly(int(fields["content-length"])))
                    seen.append({"line": lines[0], "headers": fields, "body": body})
                    if not await handler(body, writer, len(seen)):
                        break
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            writer.close()

        server = await asyncio.start_server(client, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            result = await run_load(f"http://127.0.0.1:{port}", **load_args)
        return result, seen

    return lambda **load_args: asyncio.run(main(load_args))


def _answer(writer, status: int = 200, close: bool = False, body: bytes = b'{"ok": true}') -> None:
    extra = "Connection: close\r\n" if close else ""
    writer.write(f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                 f"{extra}\r\n".encode() + body)


def test_each_body_is_posted_as_json_with_the_headers_and_every_answer_counted():
    async def ok(body, writer, n):
        _answer(writer)
        return True

    bodies = [{"prompt": "1+1=", "max_tokens": 3}, {"prompt": "2+2=", "max_tokens": 3}]
    result, seen = _serve(ok)(bodies=bodies, concurrency=3, max_requests=20, max_seconds=10, warmup=4,
                              headers={"Authorization": "Bearer t"})
    assert result["completed"] == 20 and result["errors"] == 0 and result["concurrency"] == 3
    assert result["p50_ms"] <= result["p99_ms"] and result["rps"] > 0
    assert len(seen) == 24  # the warm-up's 4, untimed, and the 20
    assert {s["line"] for s in seen} == {"POST /v1/completions HTTP/1.1"}
    assert all(s["headers"]["authorization"] == "Bearer t" for s in seen)
    assert [s["body"] for s in seen[:4]] == bodies * 2  # in turn


def test_an_answer_other_than_200_is_an_error_not_a_latency():
    async def every_third_fails(body, writer, n):
        _answer(writer, 503 if n % 3 == 0 else 200)
        return True

    result, _ = _serve(every_third_fails)(bodies=[{"p": 1}], concurrency=1, max_requests=30, max_seconds=10,
                                          warmup=0)
    assert result["errors"] == 10 and result["completed"] == 20


def test_a_connection_the_server_ends_is_opened_again():
    """Ended with ``Connection: close`` after a complete answer: nothing lost. Dropped mid-answer: that
    request is an error, and the load goes on over a new connection."""
    async def close_after_each(body, writer, n):
        _answer(writer, close=True)
        return False

    result, seen = _serve(close_after_each)(bodies=[{"p": 1}], concurrency=2, max_requests=10, max_seconds=10,
                                            warmup=0)
    assert result["completed"] == 10 and result["errors"] == 0

    async def cut_every_fourth(body, writer, n):
        if n % 4 == 0:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{")  # and the connection ends
            return False
        _answer(writer)
        return True

    result, _ = _serve(cut_every_fourth)(bodies=[{"p": 1}], concurrency=1, max_requests=12, max_seconds=10,
                                         warmup=0)
    assert result["errors"] == 3 and result["completed"] == 9


def test_a_load_where_nothing_succeeds_fails_loudly():
    async def refuse(body, writer, n):
        _answer(writer, 401)
        return True

    with pytest.raises(RuntimeError, match="no request .* succeeded"):
        _serve(refuse)(bodies=[{"p": 1}], concurrency=1, max_requests=5, max_seconds=10, warmup=0)


def test_load_runs_its_own_event_loop_against_a_real_server():
    """``load`` (what the benchmark calls) against uvicorn's floor server in its own process."""
    from bench.serving import server_process
    from common.net import free_port

    port = free_port()
    with server_process(["-m", "bench.servers", "floor", f"--port={port}"], port, 60, "/healthz") as (url, pid):
        result = load(url, [{"model": "floor", "prompt": "1+1=", "max_tokens": 2}], 4, 50, 10)
        busy = load(url, [{"model": "floor", "prompt": "1+1=", "max_tokens": 2}], 4, 10**9, 0.5, watch_pid=pid)
        unknown_pid = load(url, [{"model": "floor", "prompt": "1+1=", "max_tokens": 2}], 1, 1, 10, watch_pid=1 << 30)
    assert result["completed"] == 50 and result["errors"] == 0
    # the server's CPU over the timed half second: it was busy, and used at most every core for that long
    assert 0 < busy["watched_cpu_s"] <= busy["seconds"] * os.cpu_count() + 0.02
    assert "watched_cpu_s" not in unknown_pid  # a process /proc does not know: no figure rather than a wrong one


def test_a_connection_dropped_without_notice_costs_the_request_sent_on_it():
    """A server that drops a kept-alive connection after a complete answer, without ``Connection: close``:
    the next request sent on it is lost (an error, as documented), the load goes on over a new one."""
    async def drop_after_each(body, writer, n):
        _answer(writer)
        await writer.drain()
        return False

    result, seen = _serve(drop_after_each)(bodies=[{"p": 1}], concurrency=1, max_requests=10, max_seconds=10,
                                           warmup=0)
    assert result["completed"] + result["errors"] == 10 and result["completed"] >= 5 and len(seen) >= 5


def test_an_interim_answer_is_not_the_answer():
    async def continue_first(body, writer, n):
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        _answer(writer, 200 if n % 2 else 503)
        return True

    result, _ = _serve(continue_first)(bodies=[{"p": 1}], concurrency=1, max_requests=10, max_seconds=10,
                                       warmup=0)
    assert result["completed"] == 5 and result["errors"] == 5


def test_a_hung_server_fails_the_load_and_names_it(monkeypatch):
    import bench.loadgen

    monkeypatch.setattr(bench.loadgen, "TIMEOUT", 0.2)

    async def never(body, writer, n):
        await asyncio.sleep(5)
        return False

    with pytest.raises(TimeoutError, match=r"127\.0\.0\.1:\d+/v1/completions: no complete response within 0.2 s"):
        _serve(never)(bodies=[{"p": 1}], concurrency=2, max_requests=10, max_seconds=10, warmup=0)
