"""A real server on 127.0.0.1 (uvicorn in a thread) over the tiny exported sweep."""

import threading
import time
from contextlib import contextmanager

import httpx
import pytest
import uvicorn
from prometheus_client import CollectorRegistry

from common.net import free_port  # noqa: F401 - the tests import it from here
from serve.app import build_app
from serve.config import ServeConfig
from serve.http import uvicorn_config

SERVED = ("onnx-fp32", "ort-int8", "ort-int4")


@contextmanager
def running(cfg: ServeConfig, registry: CollectorRegistry | None = None):
    """Serve ``build_app(cfg, registry)`` on loopback until the block ends; yields (url, app, registry)."""
    registry = registry or CollectorRegistry()
    app = build_app(cfg, registry)
    server = uvicorn.Server(uvicorn_config(app, cfg, log_level="warning"))  # the server's own settings
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{cfg.port}"
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("server did not start")
        time.sleep(0.05)
    try:
        yield url, app, registry
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def serve_config(sweep, **kw) -> ServeConfig:
    return ServeConfig(sweep=str(sweep), variants=SERVED, port=free_port(), **kw)


@pytest.fixture(scope="module")
def server(exported):
    with running(serve_config(exported["sweep"])) as (url, app, registry), \
            httpx.Client(base_url=url, timeout=30) as client:
        yield {"url": url, "app": app, "registry": registry, "client": client, **exported}


def sample(registry, name, **labels) -> float:
    return registry.get_sample_value(name, labels) or 0.0
