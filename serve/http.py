"""The HTTP layer under the app: uvicorn, with the limits it does not set by itself.

uvicorn's httptools protocol accepts headers of any size and number and waits forever for a
client that opened a connection and never finished its headers (slowloris), so a few
connections could take hundreds of MB or hold every file descriptor. ``GuardedHttpTools``
adds, per connection:

- a cap on the header block (``max_header_bytes``) and on the number of headers
  (``max_headers``): 431 and the connection closed, before more is buffered (counted per
  header as the parser reports them, and per read while the headers are unfinished, so one
  endless header line is cut too);
- a deadline for the request line and headers (``header_timeout_s``), counted from the
  connection (or the first byte of the next request on a kept-alive one, a stray line end
  included), and one for the body (``body_timeout_s``), counted from the end of the headers,
  or for a pipelined request from the answer to the one before it: 408 and closed.

The deadlines are kept without a timer per request: each connection notes when its current
one falls due, and one sweep per server (every quarter of the shorter timeout, at most a
second) refuses the connections past theirs. A timer armed and cancelled for every request
(``loop.call_later``, or ``asyncio.timeout`` around the body) cost ~12 µs of the ~30 the
guards took per request, measured in process (``bench.serving.guards_seconds_per_request``).

Idle kept-alive connections close after ``keep_alive_s`` (uvicorn's), and beyond
``max_connections`` open connections (or requests in flight) a request gets 503 with
Retry-After at once, where uvicorn would answer a plain-text 503. Every refusal here is a
JSON error like the app's.
"""

from __future__ import annotations

import json
import logging
import resource

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from serve.config import ServeConfig
from serve.schema import ERROR_TYPES

log = logging.getLogger("fracture.serve")

REASONS = {400: "Bad Request", 408: "Request Timeout", 431: "Request Header Fields Too Large",
           503: "Service Unavailable"}


def _error_bytes(status: int, message: str) -> bytes:
    body = json.dumps({"error": {"type": ERROR_TYPES[status], "message": message}}).encode()  # the app's shape
    retry = "retry-after: 1\r\n" if status == 503 else ""
    head = (f"HTTP/1.1 {status} {REASONS[status]}\r\ncontent-type: application/json\r\n{retry}"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode()
    return head + body


class _Refused(Exception):
    """Raised inside a parser callback: httptools stops parsing and uvicorn's error path takes over."""


class GuardedHttpTools(HttpToolsProtocol):
    max_header_bytes = 16384
    max_headers = 100
    header_timeout_s = 10.0
    body_timeout_s = 10.0
    on_refused = staticmethod(lambda reason: None)  # counts a refusal (fracture_request_errors_total{reason})

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._refusal: tuple[int, str, str] | None = None
        self._next_message()  # the first request's headers are due from the connection
        _sweep_while_connected(self)

    def _next_message(self) -> None:
        """A new request begins: its headers are due ``header_timeout_s`` from now, counted afresh."""
        self._header_bytes = self._header_count = self._received = 0
        self._reading_body = False
        self._due: float | None = self.loop.time() + self.header_timeout_s

    def data_received(self, data: bytes) -> None:
        if self.timeout_keep_alive_task is not None:  # idle between requests: whatever comes starts the next
            self._next_message()                       # (a stray CRLF, which the parser skips, included)
        if self._reading_body:
            return HttpToolsProtocol.data_received(self, data)
        self._received += len(data)
        HttpToolsProtocol.data_received(self, data)
        # the headers still unfinished after this read: every byte of the request so far is header, counted
        # here too, as the parser keeps a header it has not seen the end of (one 8 MiB line) out of on_header
        if not self._reading_body and self._received > self.max_header_bytes and not self.transport.is_closing():
            self._refuse(*self._too_large_refusal())

    def check_deadline(self, now: float) -> None:
        """Refuse this connection if its headers or body are overdue (called by the server's sweep)."""
        if self._due is None or now < self._due or self.transport.is_closing():
            return
        if not self._reading_body:
            self._refuse(408, f"request headers not received within {self.header_timeout_s:g} s", "header_timeout")
        elif self.cycle is None or not self.cycle.more_body:
            self._due = None  # the body is in: the app has the request, and keep-alive handles what follows
        elif self.pipeline:  # queued behind a request in progress: uvicorn reads its body only after that one
            self._due = now + self.body_timeout_s
        elif self.cycle.response_started:  # the app answered without waiting for the body (a 401)
            self.transport.close()
        else:
            self._refuse(408, f"request body not received within {self.body_timeout_s:g} s", "body_timeout")

    def _refuse(self, status: int, message: str, reason: str) -> None:
        log.warning("refused a connection from %s: %s", self.client, message)
        self.on_refused(reason)
        self.transport.write(_error_bytes(status, message))
        self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._reading_body:  # the next request in the same read (pipelined)
            self._next_message()

    # the parser's callbacks count what the request line and headers take, before uvicorn keeps them; called
    # for every header of every request, so they stay lean: a frame of their own around the base's, no more
    def on_url(self, url: bytes) -> None:
        self._header_bytes += len(url)
        if self._header_bytes > self.max_header_bytes:
            self._too_large()
        HttpToolsProtocol.on_url(self, url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value)
        self._header_count += 1
        if self._header_bytes > self.max_header_bytes or self._header_count > self.max_headers:
            self._too_large()
        HttpToolsProtocol.on_header(self, name, value)

    def _too_large(self) -> None:
        self._refusal = self._too_large_refusal(count=self._header_bytes <= self.max_header_bytes)
        raise _Refused

    def _too_large_refusal(self, count: bool = False) -> tuple[int, str, str]:
        """The 431 for a header block over ``max_header_bytes`` (``count``: over ``max_headers``)."""
        if count:
            return 431, f"more than {self.max_headers} request headers", "headers_too_large"
        return 431, f"request line and headers larger than {self.max_header_bytes} bytes", "headers_too_large"

    def on_headers_complete(self) -> None:
        self._reading_body = True
        self._due = self.loop.time() + self.body_timeout_s
        limit = self.limit_concurrency
        if limit is not None and (len(self.connections) >= limit or len(self.tasks) >= limit):
            self._refusal = (503, f"the server is at its limit of {limit} connections; retry later", "overloaded")
            raise _Refused  # before uvicorn's own check, which would answer in plain text
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a parser error: ours when a limit stopped the parser, JSON otherwise."""
        self._refuse(*(self._refusal or (400, "malformed HTTP request", "malformed_http")))


def _sweep_while_connected(conn: GuardedHttpTools) -> None:
    """Start the sweep of ``conn``'s server unless it runs on this loop: every ``interval`` s, each open
    connection checks its deadline; the sweep stops when the last connection has closed (the next one starts
    it again). A failing check is logged and the sweep goes on: stopped, it would leave every deadline off."""
    state, loop = conn.server_state, conn.loop
    running = getattr(state, "deadline_sweep", None)
    if running is not None and running[0] is loop and not loop.is_closed():
        return
    interval = min(1.0, conn.header_timeout_s / 4, conn.body_timeout_s / 4)

    def sweep() -> None:
        now = loop.time()
        try:
            for other in list(state.connections):
                if isinstance(other, GuardedHttpTools):
                    try:
                        other.check_deadline(now)
                    except Exception:  # noqa: BLE001 - one connection's failure must not end the others' deadlines
                        log.exception("deadline check of a connection from %s failed", other.client)
        finally:
            state.deadline_sweep = (loop, loop.call_later(interval, sweep)) if state.connections else None

    state.deadline_sweep = (loop, loop.call_later(interval, sweep))


def protocol_class(cfg: ServeConfig, on_refused=None) -> type:
    """``GuardedHttpTools`` with this config's limits; ``on_refused(reason)`` counts each refusal."""
    limits = {"max_header_bytes": cfg.max_header_bytes, "max_headers": cfg.max_headers,
              "header_timeout_s": cfg.header_timeout_s, "body_timeout_s": cfg.body_timeout_s}
    if on_refused is not None:
        limits["on_refused"] = staticmethod(on_refused)
    return type("FractureHttp", (GuardedHttpTools,), limits)


def _metrics_error(app):
    """The app's ``Metrics.error``, so that what this layer refuses is counted with the app's refusals."""
    metrics = getattr(getattr(app, "state", None), "metrics", None)
    return metrics.error if metrics is not None else None


def raise_fd_limit() -> int:
    """Raise the soft open-file limit to the hard one (connections are file descriptors); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft


def uvicorn_config(app, cfg: ServeConfig, log_level: str = "info") -> uvicorn.Config:
    """The one uvicorn configuration the server (and its tests) run with. One worker: the batcher and
    the Prometheus registry live in this process."""
    return uvicorn.Config(app, host=cfg.host, port=cfg.port, workers=1, access_log=False, log_level=log_level,
                          http=protocol_class(cfg, _metrics_error(app)), timeout_keep_alive=cfg.keep_alive_s,
                          limit_concurrency=cfg.max_connections, timeout_graceful_shutdown=cfg.drain_timeout_s)
