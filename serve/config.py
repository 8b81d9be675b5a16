"""The serve stage's config: what to serve, where, and the limits that keep it alive."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

TOKEN_ENV = "FRACTURE_API_TOKEN"


@dataclass(frozen=True)
class ServeConfig:
    sweep: str = "runs/demo"  # serve every (run, variant) exported under this sweep
    variants: tuple[str, ...] = ()  # only these variants (default: every servable one found)
    runs: tuple[str, ...] = ()  # only these runs of the sweep (default: all)
    # a task preset whose shifts requests may also be labelled with (beside the sweep's own and those
    # `python -m export evaluate` added to it): new shifts counted in the metrics without retraining
    task_config: str = ""
    host: str = "127.0.0.1"  # listen address (loopback by default)
    port: int = 8000  # listen port
    provider: str = "auto"  # ONNX Runtime execution provider: "auto" (CUDA if usable, else CPU), "cpu", "cuda"
    threads: int = 1  # ONNX Runtime intra-op threads per session
    row_graph: bool = True  # int8 variants' batch-1 steps on model.row.onnx (same bits, faster; weights held twice)
    # batches decoded at the same time (one thread each); 0 = one per core this process may run on: more
    # workers than cores only split the requests into smaller batches (c32 on one core: 583 -> 689 req/s)
    decode_workers: int = 0
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
    max_header_bytes: int = 16384  # request line + headers beyond this get 431 and the connection closed
    max_headers: int = 100  # more request headers get 431
    header_timeout_s: float = 10.0  # request line + headers not complete by then: 408, connection closed
    body_timeout_s: float = 10.0  # a body not complete this long after its headers: 408
    keep_alive_s: float = 5.0  # an idle kept-alive connection is closed after this
    max_connections: int = 1000  # beyond this many connections (or requests in flight), 503
    api_token: str = ""  # bearer token (default: $FRACTURE_API_TOKEN or api_token_file; empty = no auth); a flag
    # shows in `ps`: prefer the environment variable or the file
    api_token_file: str = ""  # a file holding the token (its first line)
    # with a token set, every other path (the API, /metrics, /docs, /openapi.json) needs it
    public_paths: tuple[str, ...] = ("/healthz", "/readyz")
    record_metrics: bool = True  # False: metrics go to objects that record nothing (the benchmark's baseline)

    def __post_init__(self) -> None:
        positive = ("port", "threads", "max_batch_size", "queue_size", "max_body_bytes",
                    "max_prompt_chars", "max_tokens_limit", "max_header_bytes", "max_headers", "max_connections")
        bad = [f"{k}={getattr(self, k)}" for k in positive if getattr(self, k) < 1]
        bad += [f"{k}={getattr(self, k)}" for k in ("max_wait_ms", "memory_budget_mb", "decode_workers")
                if getattr(self, k) < 0]
        bad += [f"{k}={getattr(self, k)}" for k in ("request_timeout_s", "drain_timeout_s", "header_timeout_s",
                                                    "body_timeout_s", "keep_alive_s") if getattr(self, k) <= 0]
        if self.provider not in ("auto", "cpu", "cuda"):
            bad.append(f"provider={self.provider!r} (auto, cpu or cuda)")
        if bad:
            raise ValueError("invalid serve config: " + ", ".join(bad))

    @property
    def workers(self) -> int:
        """Decode worker threads: ``decode_workers``, or one per core available to this process."""
        if self.decode_workers:
            return self.decode_workers
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

    @property
    def token(self) -> str:
        if self.api_token:
            return self.api_token
        if self.api_token_file:
            try:
                lines = Path(self.api_token_file).read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                raise ValueError(f"api_token_file: cannot read {self.api_token_file} ({exc.strerror})") from None
            if not lines or not lines[0].strip():
                raise ValueError(f"api_token_file: {self.api_token_file} is empty")
            return lines[0].strip()
        return os.environ.get(TOKEN_ENV, "")
