"""Limits of the HTTP layer and the auth rules, over real HTTP on loopback (serve/http.py, serve/app.py).

Raw sockets where a well-behaved client cannot misbehave the way an attacker does (oversized or
endless headers, a body that never comes).
"""

import contextlib
import json
import socket
import time

import httpx
import pytest

from tests.serve.conftest import running, serve_config


def raw(url: str, payload: bytes, wait_s: float = 5.0) -> tuple[bytes, float]:
    """Send ``payload`` on a fresh connection; (everything the server sent until it closed, seconds taken)."""
    host, port = url.removeprefix("http://").split(":")
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=wait_s) as sock:
        if payload:
            sock.sendall(payload)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (TimeoutError, ConnectionResetError):
            pass
    return b"".join(chunks), time.monotonic() - started


def after_requests(url: str, requests: int, pause_s: float, then: bytes) -> tuple[bytes, float]:
    """On one connection: ``requests`` whole requests, each answered 200, ``pause_s`` apart; then ``then``.
    (What the server sent after ``then`` until it closed, seconds from ``then`` to the close.)"""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        for _ in range(requests):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
            time.sleep(pause_s)
        started = time.monotonic()
        sock.sendall(then)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks), time.monotonic() - started


def status_and_body(response: bytes) -> tuple[int, dict]:
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


@pytest.fixture(scope="module")
def guarded(exported):
    cfg = serve_config(exported["sweep"], header_timeout_s=1.0, body_timeout_s=1.0, max_header_bytes=4096,
                       max_headers=20)
    with running(cfg) as (url, _, registry), httpx.Client(base_url=url) as client:
        yield url, client, registry


def well_formed(client) -> int:
    model = client.get("/v1/models").json()["data"][0]["id"]
    return client.post("/v1/completions", json={"model": model, "prompt": "1+1="}).status_code


def errors(registry, reason: str) -> float:
    return registry.get_sample_value("fracture_request_errors_total", {"reason": reason})


def test_oversized_or_too_many_headers_get_431_and_the_server_keeps_answering(guarded):
    url, client, registry = guarded
    before = errors(registry, "headers_too_large")
    big = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 10_000 + b"\r\n\r\n"
    status, body = status_and_body(raw(url, big)[0])
    assert status == 431 and "larger than 4096 bytes" in body["error"]["message"]
    many = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(50)) + b"\r\n"
    status, body = status_and_body(raw(url, many)[0])
    assert status == 431 and "more than 20 request headers" in body["error"]["message"]
    assert errors(registry, "headers_too_large") == before + 2  # counted like the app's own refusals
    assert well_formed(client) == 200


def test_headers_never_finished_or_an_idle_connection_get_408_at_the_deadline(guarded):
    url, client, registry = guarded
    before = errors(registry, "header_timeout")
    response, took = raw(url, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # slowloris: never ends
    status, body = status_and_body(response)
    assert status == 408 and "not received within 1 s" in body["error"]["message"] and took < 4
    response, took = raw(url, b"")  # connects and says nothing
    assert status_and_body(response)[0] == 408 and took < 4
    assert errors(registry, "header_timeout") == before + 2
    assert well_formed(client) == 200


def test_a_kept_alive_connection_gets_a_fresh_deadline_for_its_next_request(guarded):
    """The deadlines are swept, not timed per request (serve/http.py): a connection that answered one
    request in full and then stalls in the headers of the next is refused at that request's deadline, and
    one that keeps sending whole requests is never refused."""
    url, _, registry = guarded
    before = errors(registry, "header_timeout")
    # whole requests 0.6 s apart: 1.8 s in all, past a 1 s deadline counted once
    response, took = after_requests(url, 3, 0.6, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    assert status_and_body(response)[0] == 408 and took < 3
    assert errors(registry, "header_timeout") == before + 1


def test_a_stray_line_end_after_a_request_does_not_hold_the_connection(guarded):
    """The parser skips an empty line without starting a request, and reading it stops uvicorn's keep-alive
    timer: the line starts the next request's header deadline instead (found in review)."""
    response, took = after_requests(guarded[0], 1, 0.0, b"\r\n")
    assert status_and_body(response)[0] == 408 and took < 3


def test_one_endless_header_line_is_refused_before_its_end(guarded):
    """A header the parser has not seen the end of never reaches on_header: the bytes of an unfinished
    header block are counted as they arrive."""
    url, _, registry = guarded
    before = errors(registry, "headers_too_large")
    response, _ = raw(url, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000)
    assert status_and_body(response)[0] == 431
    assert errors(registry, "headers_too_large") == before + 1


async def _slow_app(scope, receive, send):
    """A small ASGI app: /slow answers after 2.5 s, every path answers its own name once the body is in."""
    import asyncio

    if scope["type"] != "http":
        return
    if scope["path"] == "/slow":
        await asyncio.sleep(2.5)
    while (await receive()).get("more_body"):
        pass
    body = scope["path"].encode()
    length = str(len(body)).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", length)]})
    await send({"type": "http.response.body", "body": body})


@contextlib.contextmanager
def _behind_the_protocol(app, on_refused=None):
    """``app`` served behind the server's own HTTP protocol with 1 s deadlines, on loopback; yields the port."""
    import threading

    import uvicorn

    from common.net import free_port
    from serve.config import ServeConfig
    from serve.http import protocol_class

    cfg = ServeConfig(port=free_port(), header_timeout_s=1.0, body_timeout_s=1.0)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=cfg.port, log_level="critical",
                                           http=protocol_class(cfg, on_refused)))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield cfg.port
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_a_pipelined_request_behind_a_slow_one_is_not_timed_out():
    """uvicorn reads a queued request's body only once the request before it is answered: its body deadline
    waits (found in review: a 408 replaced the slow request's answer)."""
    with _behind_the_protocol(_slow_app) as port, socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"POST /next HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n")
        time.sleep(0.05)
        sock.sendall(b"{}")
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    assert response.count(b"HTTP/1.1 200") == 2 and response.endswith(b"/next") and b"408" not in response


def test_the_deadline_sweep_outlives_a_failing_check():
    """One connection's refusal raising (here the counter) is logged, and the next connection still gets its
    deadline: a sweep that stopped would leave every connection without one."""
    failures = []

    def count(reason):
        if not failures:
            failures.append(reason)
            raise RuntimeError("counter failed")

    with _behind_the_protocol(_slow_app, on_refused=count) as port:
        for _ in range(2):
            response, took = raw(f"http://127.0.0.1:{port}", b"GET /a HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            assert took < 4
    assert failures == ["header_timeout"] and status_and_body(response)[0] == 408


def test_a_body_that_never_arrives_gets_408(guarded):
    url, client, registry = guarded
    head = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{\"model\": ")
    response, took = raw(url, head)
    status, body = status_and_body(response)
    assert status == 408 and "body not received" in body["error"]["message"] and took < 4
    assert registry.get_sample_value("fracture_request_errors_total", {"reason": "body_timeout"}) >= 1
    assert well_formed(client) == 200


def test_malformed_http_is_a_json_400(guarded):
    url, _, registry = guarded
    before = errors(registry, "malformed_http")
    status, body = status_and_body(raw(url, b"NOT HTTP AT ALL\r\n\r\n")[0])
    assert status == 400 and body["error"]["type"] == "invalid_request_error"
    assert errors(registry, "malformed_http") == before + 1


def test_token_guards_everything_but_health_and_is_checked_before_the_body(exported, monkeypatch, tmp_path):
    token = "s3cret-é"  # non-ASCII: compared as UTF-8
    (tmp_path / "token").write_text(token + "\n", encoding="utf-8")
    monkeypatch.delenv("FRACTURE_API_TOKEN", raising=False)
    cfg = serve_config(exported["sweep"], api_token_file=str(tmp_path / "token"))
    with running(cfg) as (url, _, registry), httpx.Client(base_url=url) as c:
        for path in ("/v1/models", "/metrics", "/docs", "/openapi.json", "/redoc"):
            resp = c.get(path)
            assert resp.status_code == 401 and resp.headers["www-authenticate"] == "Bearer", path
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200
        # malformed JSON without the token: 401, not 400 (the body is never parsed)
        resp = c.post("/v1/completions", content=b"{not json", headers={"Content-Type": "application/json"})
        assert resp.status_code == 401
        good = {"Authorization": b"bearer " + token.encode("utf-8")}  # the scheme is case-insensitive
        assert c.get("/v1/models", headers=good).status_code == 200
        assert c.get("/metrics", headers=good).status_code == 200
        assert c.get("/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 401
        assert registry.get_sample_value("fracture_request_errors_total", {"reason": "unauthorized"}) == 7


def test_public_paths_is_a_stated_choice(exported, monkeypatch):
    monkeypatch.setenv("FRACTURE_API_TOKEN", "s3cret")
    cfg = serve_config(exported["sweep"], public_paths=("/healthz", "/metrics"))
    with running(cfg) as (url, _, _), httpx.Client(base_url=url) as c:
        assert c.get("/metrics").status_code == 200 and c.get("/readyz").status_code == 401


def test_beyond_max_connections_a_request_gets_a_json_503_with_retry_after_at_once(exported):
    """Idle connections up to the cap: the next request is refused at once (not left hanging), in the
    app's JSON shape; once they close, the server answers again."""
    cfg = serve_config(exported["sweep"], max_connections=3, header_timeout_s=5.0)
    with running(cfg) as (url, _, registry):
        host, port = url.removeprefix("http://").split(":")
        idle = [socket.create_connection((host, int(port))) for _ in range(3)]
        before = errors(registry, "overloaded")
        try:
            time.sleep(0.3)  # the server has accepted them
            response, took = raw(url, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            status, body = status_and_body(response)
            assert status == 503 and body["error"]["type"] == "overloaded_error" and took < 2
            assert "limit of 3 connections" in body["error"]["message"]
            assert b"retry-after: 1" in response.lower()
            assert errors(registry, "overloaded") == before + 1
        finally:
            for sock in idle:
                sock.close()
        time.sleep(0.3)
        with httpx.Client(base_url=url) as client:
            assert client.get("/healthz").status_code == 200
