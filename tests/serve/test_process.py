"""The serving process: never imports torch or transformers, and drains on SIGTERM."""

import asyncio
import signal
import subprocess
import sys
import time

import httpx

from tests.serve.conftest import free_port
from tests.train.conftest import REPO

CHECK = """
import sys
from prometheus_client import CollectorRegistry
import serve.__main__, serve.replay
from serve.app import build_app
from serve.config import ServeConfig
app = build_app(ServeConfig(sweep=sys.argv[1]), CollectorRegistry())
app.state.fleet.load_all()
hit = [m for m in ("torch", "transformers", "optimum") if m in sys.modules]
sys.exit(f"imported {hit}" if hit else 0)
"""


def test_serving_process_never_imports_torch_or_transformers(exported):
    res = subprocess.run([sys.executable, "-c", CHECK, str(exported["sweep"])], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr or res.stdout


def test_sigterm_stops_accepting_drains_in_flight_requests_then_exits(exported):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "serve", f"--sweep={exported['sweep']}", f"--port={port}",
                             "--variants=onnx-fp32", "--max_wait_ms=300", "--drain_timeout_s=20"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, "server did not start"
            time.sleep(0.1)
        model = httpx.get(f"{url}/v1/models").json()["data"][0]["id"]

        async def in_flight():
            async with httpx.AsyncClient(base_url=url, timeout=30) as c:
                tasks = [asyncio.create_task(c.post("/v1/completions", json={"model": model, "prompt": f"{i}+1="}))
                         for i in range(16)]
                await asyncio.sleep(0.1)  # the requests are in the batcher's 300 ms wait
                proc.send_signal(signal.SIGTERM)
                return await asyncio.gather(*tasks)

        resps = asyncio.run(in_flight())
        assert [r.status_code for r in resps] == [200] * 16
        # uvicorn re-raises the signal once it has drained, so the exit status says "ended by SIGTERM"
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
        try:
            httpx.get(f"{url}/healthz", timeout=2)
            raise AssertionError("still accepting connections after SIGTERM")
        except httpx.TransportError:
            pass
    finally:
        if proc.poll() is None:
            proc.kill()
        output = proc.stdout.read()
    assert "Shutting down" in output or "shutdown" in output.lower()
