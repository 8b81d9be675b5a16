"""The HTTP layer under the app: uvicorn, with the limits it does not set by itself.

uvicorn's httptools protocol accepts headers of any size and number and waits forever for a
client that opened a connection and never finished its headers (slowloris), so a few
connections could take hundreds of MB or hold every file descriptor. ``GuardedHttpTools``
adds, per connection:

- a cap on the header block (``max_header_bytes``) and on the number of headers
  (``max_headers``): 431 and the connection closed, before more is buffered;
- a deadline for the request line and headers (``header_timeout_s``), counted from the
  connection (or the first byte of the next request on a kept-alive one): 408 and closed.

The body has its own deadline in the app's body-limit middleware (``body_timeout_s``), idle
kept-alive connections close after ``keep_alive_s`` (uvicorn's), and beyond
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
    on_refused = staticmethod(lambda reason: None)  # counts a refusal (fracture_request_errors_total{reason})

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._refusal: tuple[int, str, str] | None = None
        self._header_timer = None
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._header_bytes = self._header_count = 0
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _disarm(self) -> None:
        if getattr(self, "_header_timer", None) is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self._refuse(408, f"request headers not received within {self.header_timeout_s:g} s", "header_timeout")

    def _refuse(self, status: int, message: str, reason: str) -> None:
        log.warning("refused a connection from %s: %s", self.client, message)
        self.on_refused(reason)
        self.transport.write(_error_bytes(status, message))
        self.transport.close()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._header_timer is None:  # the next request on a kept-alive connection
            self._arm()

    def on_url(self, url: bytes) -> None:
        self._count(len(url), 0)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value), 1)
        super().on_header(name, value)

    def _count(self, size: int, headers: int) -> None:
        self._header_bytes += size
        self._header_count += headers
        if self._header_bytes > self.max_header_bytes:
            self._refusal = (431, f"request line and headers larger than {self.max_header_bytes} bytes",
                             "headers_too_large")
        elif self._header_count > self.max_headers:
            self._refusal = (431, f"more than {self.max_headers} request headers", "headers_too_large")
        if self._refusal:
            raise _Refused

    def on_headers_complete(self) -> None:
        self._disarm()
        limit = self.limit_concurrency
        if limit is not None and (len(self.connections) >= limit or len(self.tasks) >= limit):
            self._refusal = (503, f"the server is at its limit of {limit} connections; retry later", "overloaded")
            raise _Refused  # before uvicorn's own check, which would answer in plain text
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a parser error: ours when a limit stopped the parser, JSON otherwise."""
        self._disarm()
        self._refuse(*(self._refusal or (400, "malformed HTTP request", "malformed_http")))


def protocol_class(cfg: ServeConfig, on_refused=None) -> type:
    """``GuardedHttpTools`` with this config's limits; ``on_refused(reason)`` counts each refusal."""
    limits = {"max_header_bytes": cfg.max_header_bytes, "max_headers": cfg.max_headers,
              "header_timeout_s": cfg.header_timeout_s}
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
