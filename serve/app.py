"""The ASGI app: ``build_app(config, registry)`` (docs/design.md, HTTP API).

- ``POST /v1/completions``: the OpenAI completions request (model, prompt, max_tokens, stop, ...)
  plus ``shift`` and ``expected``; greedy only. ``prompt`` is a string, a list of strings, a
  list of token ids or a list of such lists (a batch: one choice per prompt, each graded).
  Every field of the OpenAI API is accepted; a value that would change a greedy answer
  (temperature, top_p, n, best_of, penalties, logit_bias, suffix), or that asks for what is
  not served (logprobs, stream), is refused with a 400 saying why. The response adds
  ``variant``, ``correct`` (true / false / null, per choice too) and ``usage``. Prompts are
  the task's canonical text ("123+456="); the server writes digits the way the model was trained.
- ``GET /v1/models``, ``GET /metrics``, ``GET /healthz`` (alive), ``GET /readyz`` (serving).

Every error is ``{"error": {"type", "message"}}`` with its 4xx (503 + Retry-After for
overload and timeouts) and is counted in ``fracture_request_errors_total{reason}``.

This module is the HTTP side: the guard middlewares (body limit, bearer auth, drain), the routes and
the error handlers, and the completions route's fast path (``FastRoute``: the same model, service and
errors without FastAPI's per-request layers; whatever it declines, FastAPI's route answers). What a
completion goes through (checks, tokenizing, batching, grading, metrics) is
``serve.completions.CompletionService``; the API's types and errors are ``serve.schema``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve.batching import Batcher
from serve.completions import CompletionService
from serve.config import ServeConfig
from serve.fleet import Fleet
from serve.metrics import Metrics, NullMetrics
from serve.schema import (
    APIError,
    CompletionRequest,
    CompletionResponse,
    ModelCard,
    ModelList,
    error_response,
    error_responses,
)
from tasks.dataset import sweep_splits

log = logging.getLogger("fracture.serve")


# -- body size limit (before any parsing) ---------------------------------------------

class BodyLimit:
    """Pure ASGI middleware: 413 for a declared or streamed body over ``limit`` bytes.

    The body is read (at most ``limit`` + 1 bytes) before the app sees it, then replayed:
    requests are small, and this way no framework layer can turn the refusal into a 400. A body
    that never comes is the HTTP layer's to time out (``serve.http``: 408 and the connection
    closed, which ends the wait here).
    """

    def __init__(self, app, limit: int, on_reject):
        self.app, self.limit, self.on_reject = app, limit, on_reject

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            return await self._reject(scope, receive, send)
        body = await read_body(receive, self.limit)
        if body is None:  # the client went away, or the HTTP layer timed it out
            return
        if len(body) > self.limit:
            return await self._reject(scope, receive, send)
        await self.app(scope, replaying(body, receive), send)

    async def _reject(self, scope, receive, send):
        self.on_reject("body_too_large")
        await error_response(413, f"request body larger than {self.limit} bytes")(scope, receive, send)


async def read_body(receive, limit: int | None = None) -> bytes | None:
    """The request's body, read to its end or until it is past ``limit`` bytes (then what was read: over
    ``limit``); None when the client went away first."""
    chunks, size, more = [], 0, True
    while more and (limit is None or size <= limit):
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        more = message.get("more_body", False)
    return b"".join(chunks)


def replaying(body: bytes, receive):
    """A ``receive`` that gives ``body`` (already read) as the request's one message, then defers to ``receive``."""
    replayed = False

    async def replay():
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


# -- the hot route, without the framework's layers -------------------------------------

def _json_content(scope) -> bool:
    """The request says its body is ``application/json`` (parameters such as charset aside)."""
    for name, value in scope.get("headers") or ():
        if name == b"content-type":
            return value.split(b";", 1)[0].strip().lower() == b"application/json"
    return False


class FastRoute:
    """Pure ASGI middleware: ``POST <path>`` with a JSON body answered by ``handle(payload)`` without FastAPI's
    router, dependency solving and exception middlewares, which cost ~95 µs a request here in process (a
    quarter of what the event loop spends on a served completion at 32 connections). ``handle`` gets the
    body parsed as FastAPI parses it (``json.loads``) and returns the response to send, or ``None`` to hand
    the request on. Anything else goes on to the app, the body replayed: another path or method, another
    content type, a body that is not JSON or that ``handle`` declines (e.g. fails validation), so that every
    refusal is FastAPI's own, word for word. The app still routes and documents the path (OpenAPI). What it
    answers is counted by fracture's metrics, but not seen by FastAPI's own OpenTelemetry spans, were a tracer
    configured. It reads the whole body, as FastAPI's route would: ``BodyLimit`` outside it bounds that."""

    def __init__(self, app, path: str, handle):
        self.app, self.path, self.handle = app, path, handle

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != self.path or scope["method"] != "POST" \
                or not _json_content(scope):
            return await self.app(scope, receive, send)
        body = await read_body(receive)  # bounded by BodyLimit outside
        if body is None:  # the client went away
            return
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError):  # not JSON: FastAPI's route says so in its own words
            return await self.app(scope, replaying(body, receive), send)
        response = await self.handle(payload)
        if response is None:  # declined
            return await self.app(scope, replaying(body, receive), send)
        await response(scope, receive, send)


# -- requests cut off by a shutdown ------------------------------------------------------

class Drain:
    """Pure ASGI middleware: on SIGTERM uvicorn lets in-flight requests finish for ``drain_timeout_s``, then
    cancels the rest, which would answer a plain-text 500 with a traceback each. A request cancelled before
    its response started gets the JSON 503 + Retry-After that an overloaded server gives instead."""

    def __init__(self, app, on_reject):
        self.app, self.on_reject = app, on_reject

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracked(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except asyncio.CancelledError:
            if started:
                raise
            self.on_reject()
            await error_response(503, "the server is shutting down; retry against another instance or later",
                                 {"Retry-After": "1", "Connection": "close"})(scope, receive, send)


# -- bearer auth (before anything else) -------------------------------------------------

class BearerAuth:
    """Pure ASGI middleware: with a token set, every path but ``public_paths`` needs
    ``Authorization: Bearer <token>`` (the scheme case-insensitive, RFC 7235; the token compared as UTF-8
    bytes in constant time); 401 otherwise, before the body is read. Without a token, nothing is checked."""

    def __init__(self, app, token: str, public_paths: tuple[str, ...], on_reject):
        self.app, self.on_reject = app, on_reject
        self.token = token.encode("utf-8") if token else b""
        self.public = frozenset(public_paths)

    async def __call__(self, scope, receive, send):
        if not self.token or scope["type"] != "http" or scope["path"] in self.public:
            return await self.app(scope, receive, send)
        given = dict(scope.get("headers") or []).get(b"authorization", b"")
        scheme, _, credentials = given.partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(credentials.strip(), self.token):
            return await self.app(scope, receive, send)
        self.on_reject()
        await error_response(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})(
            scope, receive, send)


# -- the app: the router ------------------------------------------------------------------

@dataclass
class Readiness:
    """Whether /readyz answers ready: every model loaded (or the fleet lazy) and not shutting down."""

    ready: bool = False


def _is_json(body: bytes) -> bool:
    try:
        json.loads(body)
    except (ValueError, RecursionError):  # deep nesting is hostile input, not a server fault
        return False
    return True


def build_app(config: ServeConfig, registry: CollectorRegistry, fleet: Fleet | None = None) -> FastAPI:
    fleet = fleet or Fleet.from_config(config)
    metrics = Metrics(registry) if config.record_metrics else NullMetrics(registry)
    shifts = sweep_splits(config.sweep, config.task_config)  # the labels a request may carry
    metrics.declare_fleet([(e.run, e.variant, e.step) for e in fleet.entries.values()], shifts)
    batcher = Batcher(config.max_batch_size, config.max_wait_ms, config.queue_size, config.workers,
                      on_batch=lambda model_id, n: metrics.batch(fleet.entries[model_id].variant, n))
    service = CompletionService(config, fleet, metrics, batcher, shifts)
    readiness = Readiness()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if not fleet.lazy:
            await asyncio.get_running_loop().run_in_executor(None, fleet.load_all)
        metrics.models_loaded.set(len(fleet.loaded_ids()))
        readiness.ready = bool(fleet.entries)
        log.info("serving %d model(s), %d refused", len(fleet.entries), len(fleet.refused))
        yield
        readiness.ready = False
        await batcher.close()

    # /docs and /redoc with their scripts and styles served from the package, not a CDN: they work offline
    app = FastAPIOffline(title="fracture", version="0.1.0", lifespan=lifespan,
                  description="Greedy completions from a fleet of exported variants, graded per shift. "
                              "Errors are {\"error\": {\"type\", \"message\"}}.")
    app.state.fleet, app.state.metrics, app.state.batcher = fleet, metrics, batcher

    def api_error(exc: APIError) -> JSONResponse:
        metrics.error(exc.reason)
        return error_response(exc.status, exc.message, exc.headers)

    async def fast_completions(payload) -> JSONResponse | None:
        """The completions route as FastRoute runs it: the same model, service and errors; a request that
        fails validation is declined, for FastAPI's route to refuse as it always has."""
        try:
            req = CompletionRequest.model_validate(payload)
        except ValidationError:
            return None
        try:
            return JSONResponse(await service.complete(req))
        except APIError as exc:
            return api_error(exc)

    app.add_middleware(FastRoute, path="/v1/completions", handle=fast_completions)  # innermost: after the guards
    app.add_middleware(BodyLimit, limit=config.max_body_bytes, on_reject=metrics.error)
    # a request without the token is refused before its body is read or parsed
    app.add_middleware(BearerAuth, token=config.token, public_paths=config.public_paths,
                       on_reject=lambda: metrics.error("unauthorized"))
    app.add_middleware(Drain, on_reject=lambda: metrics.error("overloaded"))  # outermost

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return api_error(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors) or not _is_json(await request.body()):
            metrics.error("malformed_json")
            return error_response(400, "request body is not valid JSON")
        metrics.error("invalid_request")
        detail = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'body'}: {e.get('msg')}"
                           for e in errors[:5])
        return error_response(400, detail)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 400 and not _is_json(await request.body()):
            # FastAPI's "There was an error parsing the body": bytes json.loads cannot decode (not UTF-8/16/32)
            # or an integer past Python's digit limit
            metrics.error("malformed_json")
            return error_response(400, "request body is not valid JSON")
        reason = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "invalid_request")
        metrics.error(reason)
        return error_response(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        log.exception("internal error")
        metrics.error("internal")
        return error_response(500, f"internal error ({type(exc).__name__})")

    @app.post("/v1/completions", response_model=CompletionResponse,
              responses=error_responses(400, 401, 404, 413, 503))
    async def completions(req: CompletionRequest) -> JSONResponse:
        # what the fast path does too (fast_completions, above): a dependency or other change here must go there
        return JSONResponse(await service.complete(req))

    @app.get("/v1/models", response_model=ModelList,
             responses=error_responses(401))
    async def models() -> ModelList:
        loaded = set(fleet.loaded_ids())
        return ModelList(data=[ModelCard(**e.info.model_dump(), loaded=e.id in loaded) for e in fleet.entries.values()],
                         refused=fleet.refused)

    @app.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
    async def prometheus_metrics() -> Response:
        metrics.queue_depth.set(batcher.pending)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", responses=error_responses(503))
    async def readyz():
        if not readiness.ready:
            return error_response(503, "not ready: no servable model, still loading, or shutting down")
        return {"status": "ready", "models": len(fleet.entries), "refused": len(fleet.refused)}

    return app
