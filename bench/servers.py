"""The two baseline servers of the serving benchmark, on the same HTTP stack as fracture's.

- naive: FastAPI + uvicorn with transformers ``generate`` on the torch checkpoint, one
  request at a time, no batching: what a plain transformers server does.
- floor: the same stack answering a fixed completion without any model: the most this
  stack can do on this machine. Its completions route has fracture's fast path too
  (``serve.app.FastRoute``: the body parsed and validated, the answer sent, without FastAPI's
  per-request layers), as the server's has.
- guarded floor (``floor --guarded``): the floor behind fracture's own guards, exactly as
  the server runs them: the header-limited HTTP protocol and uvicorn settings of
  ``serve.http.uvicorn_config``, the body limit and deadline, bearer auth (a token set) and
  the drain middleware. Floor vs guarded floor is the guards' whole cost per request, with
  no model time to hide it.

    python -m bench.servers naive --checkpoint runs/demo/<run>/checkpoints/step-150 --port 8101
    python -m bench.servers floor --port 8102 [--guarded]
    python -m bench.servers unguarded --sweep runs/demo --variants ort-int4 --port 8103

- unguarded: fracture's own server (build_app, the same fleet and metrics) without the guards
  the floor comparison measures (body limit, auth, drain; stock uvicorn protocol): against
  ``python -m serve`` it is the guards' cost on the served path itself.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid

import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError


class Req(BaseModel):
    model: str
    prompt: str
    max_tokens: int = 16
    temperature: float = 0.0
    shift: str | None = None
    expected: str | None = None


def _response(req: Req, text: str) -> dict:
    return {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion", "created": int(time.time()),
            "model": req.model, "choices": [{"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}],
            "correct": None if req.expected is None else text.strip() == req.expected}


BENCH_TOKEN = "bench-token"  # the guarded floor's bearer token (the load generator sends it)


def floor_app(guarded: bool = False) -> FastAPI:
    from serve.app import FastRoute

    app = FastAPI()

    @app.post("/v1/completions")
    async def completions(req: Req) -> dict:
        return _response(req, "42")

    async def fast_completions(payload) -> JSONResponse | None:  # as serve.app's: declined when invalid
        try:
            return JSONResponse(_response(Req.model_validate(payload), "42"))
        except ValidationError:
            return None

    app.add_middleware(FastRoute, path="/v1/completions", handle=fast_completions)

    @app.get("/healthz")
    async def healthz() -> dict:  # public, as fracture's: what the benchmark waits on
        return {"status": "ok"}

    if guarded:  # the middlewares of serve.app.build_app, in its order, with its default limits
        from serve.app import BearerAuth, BodyLimit, Drain
        from serve.config import ServeConfig

        cfg = ServeConfig()
        app.add_middleware(BodyLimit, limit=cfg.max_body_bytes, on_reject=lambda reason: None)
        app.add_middleware(BearerAuth, token=BENCH_TOKEN, public_paths=cfg.public_paths, on_reject=lambda: None)
        app.add_middleware(Drain, on_reject=lambda: None)
    return app


def naive_app(checkpoint: str, threads: int) -> FastAPI:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    tok = AutoTokenizer.from_pretrained(checkpoint)
    lock = asyncio.Lock()
    app = FastAPI()

    def generate(prompt: str, max_tokens: int) -> str:
        enc = tok(prompt, return_tensors="pt", add_special_tokens=False, return_token_type_ids=False)
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=max_tokens, do_sample=False, pad_token_id=tok.pad_token_id,
                                 eos_token_id=tok.eos_token_id)
        return tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)

    @app.post("/v1/completions")
    async def completions(req: Req) -> dict:
        async with lock:  # one request at a time
            text = await asyncio.get_running_loop().run_in_executor(None, generate, req.prompt, req.max_tokens)
        return _response(req, text)

    return app


def unguarded_app(sweep: str, variants: str, port: int, runs: str = ""):
    """fracture's app with the guard middlewares taken out before its middleware stack is built."""
    from prometheus_client import CollectorRegistry

    from serve.app import BearerAuth, BodyLimit, Drain, build_app
    from serve.config import ServeConfig

    cfg = ServeConfig(sweep=sweep, variants=tuple(variants.split(",")), runs=tuple(filter(None, runs.split(","))),
                      port=port)
    app = build_app(cfg, CollectorRegistry())
    app.user_middleware = [m for m in app.user_middleware if m.cls not in (BodyLimit, BearerAuth, Drain)]
    return app


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.servers")
    p.add_argument("kind", choices=["naive", "floor", "unguarded"])
    p.add_argument("--sweep")
    p.add_argument("--variants")
    p.add_argument("--runs", default="", help="unguarded only: the runs to serve (default all)")
    p.add_argument("--checkpoint")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--guarded", action="store_true", help="floor only: behind fracture's HTTP guards")
    a = p.parse_args(argv)
    if a.kind == "unguarded":
        app = unguarded_app(a.sweep, a.variants, a.port, a.runs)
    else:
        app = floor_app(a.guarded) if a.kind == "floor" else naive_app(a.checkpoint, a.threads)
    if a.guarded:
        from serve.config import ServeConfig
        from serve.http import uvicorn_config

        uvicorn.Server(uvicorn_config(app, ServeConfig(port=a.port), log_level="warning")).run()
    else:
        uvicorn.run(app, host="127.0.0.1", port=a.port, workers=1, access_log=False, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
