"""The serve stage's config: what to serve, where, and the limits that keep it alive."""

from __future__ import annotations

import os
from dataclasses import dataclass

TOKEN_ENV = "FRACTURE_API_TOKEN"


@dataclass(frozen=True)
class ServeConfig:
    sweep: str = "runs/demo"  # serve every (run, variant) exported under this sweep
    variants: tuple[str, ...] = ()  # only these variants (default: every servable one found)
    host: str = "127.0.0.1"  # listen address (loopback by default)
    port: int = 8000  # listen port
    provider: str = "auto"  # ONNX Runtime execution provider: "auto" (CUDA if usable, else CPU), "cpu", "cuda"
    threads: int = 1  # ONNX Runtime intra-op threads per session
    decode_workers: int = 2  # batches decoded at the same time (one thread each)
    max_batch_size: int = 64  # requests decoded together for one model
    max_wait_ms: float = 0.0  # extra wait for more requests before a batch starts (requests that arrive
    # while a batch decodes already form the next one, so 0 costs a lone request nothing)
    queue_size: int = 1024  # waiting requests across the fleet; beyond it, 503 with Retry-After
    request_timeout_s: float = 30.0  # a request not answered by then gets 503 (reason "timeout")
    max_body_bytes: int = 16384  # larger request bodies get 413
    max_prompt_chars: int = 256  # longer prompts get 400
    max_tokens_limit: int = 32  # max_tokens must lie in 1..max_tokens_limit
    memory_budget_mb: float = 0.0  # > 0: load models lazily, release the least recently used beyond it
    drain_timeout_s: float = 10.0  # on SIGTERM, how long in-flight requests may take to finish
    api_token: str = ""  # bearer token required on /v1/* (default: $FRACTURE_API_TOKEN; empty = no auth)
    record_metrics: bool = True  # False: metrics go to objects that record nothing (the benchmark's baseline)

    def __post_init__(self) -> None:
        positive = ("port", "threads", "decode_workers", "max_batch_size", "queue_size", "max_body_bytes",
                    "max_prompt_chars", "max_tokens_limit")
        bad = [f"{k}={getattr(self, k)}" for k in positive if getattr(self, k) < 1]
        bad += [f"{k}={getattr(self, k)}" for k in ("max_wait_ms", "memory_budget_mb") if getattr(self, k) < 0]
        bad += [f"{k}={getattr(self, k)}" for k in ("request_timeout_s", "drain_timeout_s") if getattr(self, k) <= 0]
        if self.provider not in ("auto", "cpu", "cuda"):
            bad.append(f"provider={self.provider!r} (auto, cpu or cuda)")
        if bad:
            raise ValueError("invalid serve config: " + ", ".join(bad))

    @property
    def token(self) -> str:
        return self.api_token or os.environ.get(TOKEN_ENV, "")
