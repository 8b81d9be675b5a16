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
Grading uses ``tasks.grader.grade``, the function offline evaluation uses.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import json
import logging
import secrets
import time
from contextlib import asynccontextmanager
from typing import Annotated, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve.batching import Batcher, Job, Overloaded
from serve.config import ServeConfig
from serve.fleet import Fleet, ModelUnavailable
from serve.metrics import UNLABELLED, Metrics, NullMetrics
from tasks.dataset import sweep_splits
from tasks.formatting import format_prompt, normalize
from tasks.grader import grade

log = logging.getLogger("fracture.serve")


# -- the API's types (they are the OpenAPI document) ----------------------------------

TokenIds = list[Annotated[int, Field(ge=0)]]
PROMPT_FORMS = "a string, a list of strings, a list of token ids (integers >= 0) or a list of lists of token ids"


class CompletionRequest(BaseModel):
    """The OpenAI completions request (every field of the API is declared: anything else is refused), plus
    fracture's ``shift`` and ``expected``. Decoding is greedy: a field that would change a greedy answer is
    accepted only at its neutral value (the check is in the route, so the 400 can say why)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    model: str = Field(description='"<run>/<variant>", as listed by GET /v1/models')
    prompt: str | list[str] | TokenIds | list[TokenIds] = Field(
        description='the task prompt in canonical form, e.g. "123+456="; or a list of prompts (a batch: one '
                    "choice per prompt, in order); or token ids of the model's tokenizer (one prompt as a list "
                    "of ids, a batch as a list of lists), decoded to text and then served as text (refused "
                    "unless re-encoding that text gives the same ids)")
    max_tokens: int | None = Field(16, description="tokens to generate at most (1..max_tokens_limit; null: 16)")
    temperature: float | None = Field(0.0, description="greedy decoding only: must be 0 (null: 0)")
    top_p: float | None = Field(1.0, description="must be 1 (null: 1): no nucleus sampling")
    n: int | None = Field(1, description="must be 1 (null: 1): one greedy answer per prompt")
    best_of: int | None = Field(None, description="must be 1 or null")
    stop: str | list[str] | None = Field(None, description="stop string(s): the text ends before the first one")
    echo: bool = Field(False, description="true: each choice's text starts with its prompt (as text)")
    logprobs: int | None = Field(None, description="not served: must be null")
    presence_penalty: float | None = Field(0.0, description="must be 0 (null: 0)")
    frequency_penalty: float | None = Field(0.0, description="must be 0 (null: 0)")
    logit_bias: dict[str, float] | None = Field(None, description="must be empty or all zero")
    seed: int | None = Field(None, description="accepted and ignored: greedy decoding is deterministic")
    suffix: str | None = Field(None, description="not served: must be null or empty")
    stream: bool = Field(False, description="not served: must be false (the whole answer comes at once)")
    stream_options: dict | None = Field(None, description="accepted and ignored (stream is false)")
    user: str | None = Field(None, description="accepted and ignored")
    shift: str | None = Field(None, description='"id" or a shift of the sweep\'s task; labels the metrics '
                                                "(of every prompt of a batch)")
    expected: str | list[str] | None = Field(
        None, description="the correct answer (a list: one per prompt of a batch); when given, the response "
                          "says if it was")

    @field_validator("prompt", mode="wrap")
    @classmethod
    def _one_prompt_form(cls, value, handler):
        try:  # one readable error instead of one per member of the union
            return handler(value)
        except ValidationError:
            raise PydanticCustomError("prompt_form", f"must be {PROMPT_FORMS}") from None


class Choice(BaseModel):
    index: int
    text: str
    finish_reason: Literal["stop", "length"]
    logprobs: None = None
    correct: bool | None = Field(None, description="this choice's grade (null when its prompt had no expected)")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    variant: str
    shift: str
    correct: bool | None = Field(description="the grade of the answer when the request has one prompt (null "
                                             "without expected); null for several: each choice has its own")


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    owned_by: str = "fracture"
    run: str
    variant: str
    step: int
    bits: int
    backend: str
    loaded: bool


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
    refused: dict[str, str]


class ErrorBody(BaseModel):
    type: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


class APIError(Exception):
    def __init__(self, status: int, reason: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.reason, self.message, self.headers = status, reason, message, headers


ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
               405: "invalid_request_error", 408: "invalid_request_error", 413: "invalid_request_error",
               431: "invalid_request_error", 503: "overloaded_error", 500: "server_error"}


def error_response(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"type": ERROR_TYPES.get(status, "invalid_request_error"), "message": message}},
                        status_code=status, headers=headers)


def _responses(*codes: int) -> dict:
    return {c: {"model": ErrorResponse, "description": ERROR_TYPES[c]} for c in codes}


# -- body size limit (before any parsing) ---------------------------------------------

class BodyLimit:
    """Pure ASGI middleware: 413 for a declared or streamed body over ``limit`` bytes, 408 for one not
    complete ``timeout_s`` after the headers.

    The body is read (at most ``limit`` + 1 bytes) before the app sees it, then replayed:
    requests are small, and this way no framework layer can turn the refusal into a 400.
    """

    def __init__(self, app, limit: int, on_reject, timeout_s: float = 10.0):
        self.app, self.limit, self.on_reject, self.timeout_s = app, limit, on_reject, timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            return await self._reject(scope, receive, send)
        chunks, size, more = [], 0, True
        try:  # a client that sends its body slowly, or never, holds nothing beyond the deadline (one timer for
            # the whole body: asyncio.wait_for per message made a task each, a measurable share of a request)
            async with asyncio.timeout(self.timeout_s):
                while more and size <= self.limit:
                    message = await receive()
                    if message["type"] != "http.request":  # the client went away
                        return
                    chunks.append(message.get("body", b""))
                    size += len(chunks[-1])
                    more = message.get("more_body", False)
        except TimeoutError:
            self.on_reject("body_timeout")
            return await error_response(408, f"request body not received within {self.timeout_s:g} s",
                                        {"Connection": "close"})(scope, receive, send)
        if size > self.limit:
            return await self._reject(scope, receive, send)
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, scope, receive, send):
        self.on_reject("body_too_large")
        await error_response(413, f"request body larger than {self.limit} bytes")(scope, receive, send)


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


# -- the completions request, field by field ------------------------------------------------

def _check_greedy(req: CompletionRequest) -> None:
    """400, saying why, for a field whose value would change a greedy answer or asks for what is not served.
    ``seed``, ``user`` and ``stream_options`` cannot change a greedy answer: accepted and ignored."""
    if req.temperature not in (None, 0):
        raise APIError(400, "temperature", "only greedy decoding is served: temperature must be 0")
    why = None
    if req.top_p not in (None, 1):
        why = f"top_p={req.top_p}: only greedy decoding is served; top_p must be 1"
    elif req.n not in (None, 1):
        why = f"n={req.n}: greedy decoding has one answer per prompt; n must be 1 (send a list of prompts " \
              "for several answers)"
    elif req.best_of not in (None, 1):
        why = f"best_of={req.best_of}: greedy decoding has one answer per prompt; best_of must be 1 or null"
    elif req.presence_penalty not in (None, 0):
        why = "presence_penalty would change the greedy answer: it must be 0"
    elif req.frequency_penalty not in (None, 0):
        why = "frequency_penalty would change the greedy answer: it must be 0"
    elif req.logit_bias and any(v != 0 for v in req.logit_bias.values()):
        why = "logit_bias would change the greedy answer: it must be empty (or all zero)"
    elif req.logprobs is not None:
        why = ("logprobs are not served (the decode loop keeps token ids, not their probabilities): leave "
               "logprobs out or null; generation works, scoring (loglikelihood) does not")
    elif req.suffix:
        why = "suffix is not served (no text insertion): leave it out"
    elif req.stream:
        why = "stream is not served: the answer (a few tokens) comes in one response; send stream=false"
    if why:
        raise APIError(400, "invalid_request", why)


def _prompts(prompt) -> tuple[list, bool]:
    """(the prompts, each a string or a list of token ids; whether the request is a batch: a list of prompts)."""
    if isinstance(prompt, str):
        return [prompt], False
    if prompt and all(isinstance(t, int) for t in prompt):  # one prompt as token ids
        return [prompt], False
    return list(prompt), True


def _text_of_ids(runner, ids: list[int], where: str) -> str:
    """The text a token-id prompt stands for, in the model's tokenizer. It is then served as text (formatted and
    tokenized again), so it is accepted only when encoding that text gives back the very same ids."""
    tokenizer = runner.tokenizer
    vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    outside = [t for t in ids if t >= vocab]
    if outside:
        raise APIError(400, "invalid_request",
                       f"{where}token id {outside[0]} is not in the model's vocabulary (0..{vocab - 1})")
    text = tokenizer.decode(ids, skip_special_tokens=False)
    if tokenizer.encode(text, add_special_tokens=False).ids != ids:
        raise APIError(400, "unencodable_prompt",
                       f"{where}the token ids are not the model tokenizer's encoding of their text "
                       f"{text[:64]!r}: send the prompt as text")
    return text


# -- the app ----------------------------------------------------------------------------

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
                      on_batch=lambda model_id, n: metrics.batch(model_id.rsplit("/", 1)[1], n))
    state = {"ready": False}
    # completion ids: a random prefix per server and a counter (uuid4 per request cost ~3% of a served request)
    id_prefix, id_counter = secrets.token_hex(6), itertools.count()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if not fleet.lazy:
            await asyncio.get_running_loop().run_in_executor(None, fleet.load_all)
        metrics.models_loaded.set(len(fleet.loaded_ids()))
        state["ready"] = bool(fleet.entries)
        log.info("serving %d model(s), %d refused", len(fleet.entries), len(fleet.refused))
        yield
        state["ready"] = False
        await batcher.close()

    # /docs and /redoc with their scripts and styles served from the package, not a CDN: they work offline
    app = FastAPIOffline(title="fracture", version="0.1.0", lifespan=lifespan,
                  description="Greedy completions from a fleet of exported variants, graded per shift. "
                              "Errors are {\"error\": {\"type\", \"message\"}}.")
    app.state.fleet, app.state.metrics, app.state.batcher = fleet, metrics, batcher
    app.add_middleware(BodyLimit, limit=config.max_body_bytes, on_reject=metrics.error,
                       timeout_s=config.body_timeout_s)
    # a request without the token is refused before its body is read or parsed
    app.add_middleware(BearerAuth, token=config.token, public_paths=config.public_paths,
                       on_reject=lambda: metrics.error("unauthorized"))
    app.add_middleware(Drain, on_reject=lambda: metrics.error("overloaded"))  # outermost

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        metrics.error(exc.reason)
        return error_response(exc.status, exc.message, exc.headers)

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
        reason = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "invalid_request")
        metrics.error(reason)
        return error_response(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        log.exception("internal error")
        metrics.error("internal")
        return error_response(500, f"internal error ({type(exc).__name__})")

    @app.post("/v1/completions", response_model=CompletionResponse,
              responses=_responses(400, 401, 404, 413, 503))
    async def completions(req: CompletionRequest) -> JSONResponse:
        metrics.inflight.inc()
        started = time.perf_counter()
        try:
            return await _complete(req, started)
        finally:
            metrics.inflight.dec()

    async def _complete(req: CompletionRequest, started: float) -> JSONResponse:
        _check_greedy(req)
        max_tokens = 16 if req.max_tokens is None else req.max_tokens
        if not 1 <= max_tokens <= config.max_tokens_limit:
            raise APIError(400, "max_tokens_out_of_range", f"max_tokens must be in 1..{config.max_tokens_limit}")
        prompts, batch = _prompts(req.prompt)
        where = (lambda i: f"prompt {i}: ") if batch else (lambda i: "")
        if not prompts:
            raise APIError(400, "prompt_too_long", "prompt must hold at least one prompt")
        if len(prompts) > config.queue_size:
            raise APIError(400, "invalid_request", f"at most {config.queue_size} prompts per request")
        for i, p in enumerate(prompts):
            if isinstance(p, str) and (not p or len(p) > config.max_prompt_chars):
                raise APIError(400, "prompt_too_long",
                               f"{where(i)}prompt must have 1..{config.max_prompt_chars} characters")
        shift = req.shift if req.shift is not None else UNLABELLED
        if req.shift is not None and req.shift not in shifts:
            raise APIError(400, "unknown_shift", f"unknown shift {req.shift!r}; known: {', '.join(shifts)}")
        entry = fleet.entries.get(req.model)
        if entry is None:
            why = fleet.refused.get(req.model)
            raise APIError(404, "unknown_model", f"model {req.model!r} is refused: {why}" if why
                           else f"unknown model {req.model!r}; GET /v1/models lists them")
        expected = [req.expected] if isinstance(req.expected, str) else req.expected
        if expected is not None and len(expected) != len(prompts):
            raise APIError(400, "invalid_request", f"expected must hold one answer per prompt: {len(expected)} "
                                                   f"for {len(prompts)} prompt(s)")
        if expected is not None and not all(normalize(e) for e in expected):
            raise APIError(400, "invalid_request", "expected must hold an answer (or be left out)")
        stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        if any(not s for s in stops) or len(stops) > 4:
            raise APIError(400, "invalid_request", "stop must be at most 4 non-empty strings")
        loop = asyncio.get_running_loop()
        try:
            runner = fleet.loaded(req.model) or await loop.run_in_executor(None, fleet.runner, req.model)
        except ModelUnavailable as exc:
            raise APIError(404, "model_unavailable", f"model {req.model!r} is refused: {exc}") from None
        metrics.models_loaded.set(len(fleet.loaded_ids()))
        texts, jobs = [], []
        for i, p in enumerate(prompts):
            if not isinstance(p, str):  # token ids: served as the text they decode to
                p = _text_of_ids(runner, p, where(i))
                if not p or len(p) > config.max_prompt_chars:
                    raise APIError(400, "prompt_too_long",
                                   f"{where(i)}prompt must have 1..{config.max_prompt_chars} characters")
            ids, bad = runner.encode_checked(format_prompt(p, entry.digit_format))
            if bad:
                raise APIError(400, "unencodable_prompt", f"{where(i)}the tokenizer cannot encode {bad!r}")
            texts.append(p)
            jobs.append(Job(runner, ids, max_tokens, stops, loop.create_future()))
        try:
            finished = await asyncio.wait_for(batcher.submit_many(req.model, jobs), config.request_timeout_s)
        except Overloaded as exc:
            raise APIError(503, "overloaded", f"server overloaded: {exc}", {"Retry-After": "1"}) from None
        except TimeoutError:
            raise APIError(503, "timeout", f"no answer within {config.request_timeout_s}s",
                           {"Retry-After": "1"}) from None
        except ModelUnavailable as exc:
            raise APIError(404, "model_unavailable", f"model {req.model!r} is refused: {exc}") from None
        elapsed = time.perf_counter() - started
        choices, grades = [], []
        for i, done in enumerate(finished):
            graded = None if expected is None else grade(done.text, expected[i])
            correct = None if graded is None else graded.exact
            result = "ungraded" if correct is None else "correct" if correct else "incorrect"
            # each prompt of a batch is one sample of the metrics
            metrics.completed(entry.run, entry.variant, shift, result, elapsed, len(done.token_ids),
                              None if graded is None else (graded.digit_correct, graded.digit_total))
            choices.append({"index": i, "text": texts[i] + done.text if req.echo else done.text,
                            "finish_reason": done.finish_reason, "logprobs": None, "correct": correct})
            grades.append(correct)
        prompt_tokens = sum(d.prompt_tokens for d in finished)
        completion_tokens = sum(len(d.token_ids) for d in finished)
        # a plain dict in the CompletionResponse shape (the tests validate it against the model):
        # FastAPI would otherwise validate and serialize a pydantic object on every request
        return JSONResponse({
            "id": f"cmpl-{id_prefix}{next(id_counter):012x}", "object": "text_completion", "created": int(time.time()),
            "model": req.model, "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
            "variant": entry.variant, "shift": shift, "correct": grades[0] if len(grades) == 1 else None})

    @app.get("/v1/models", response_model=ModelList,
             responses=_responses(401))
    async def models() -> ModelList:
        loaded = set(fleet.loaded_ids())
        return ModelList(data=[ModelCard(id=e.id, run=e.run, variant=e.variant, step=e.step, bits=e.bits,
                                         backend=e.backend, loaded=e.id in loaded)
                               for e in fleet.entries.values()], refused=fleet.refused)

    @app.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
    async def prometheus_metrics() -> Response:
        metrics.queue_depth.set(batcher.pending)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", responses=_responses(503))
    async def readyz():
        if not state["ready"]:
            return error_response(503, "not ready: no servable model, still loading, or shutting down")
        return {"status": "ready", "models": len(fleet.entries), "refused": len(fleet.refused)}

    return app
