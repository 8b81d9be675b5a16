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


def start_server(sweep, *flags) -> tuple[subprocess.Popen, str]:
    """`python -m serve` in a subprocess on a free loopback port, once /readyz answers 200."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "serve", f"--sweep={sweep}", f"--port={port}", *flags],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/readyz").status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise AssertionError("server did not start: " + proc.stdout.read())
        time.sleep(0.1)


def sigterm_during(proc, url, n: int = 16):
    """n completions in flight when SIGTERM arrives; their responses."""
    model = httpx.get(f"{url}/v1/models").json()["data"][0]["id"]

    async def in_flight():
        async with httpx.AsyncClient(base_url=url, timeout=30) as c:
            tasks = [asyncio.create_task(c.post("/v1/completions", json={"model": model, "prompt": f"{i}+1="}))
                     for i in range(n)]
            await asyncio.sleep(0.1)  # the requests are in the batcher's wait
            proc.send_signal(signal.SIGTERM)
            return await asyncio.gather(*tasks)

    return asyncio.run(in_flight())


def test_requests_cut_off_by_the_drain_timeout_get_a_json_503(exported):
    """--drain_timeout_s shorter than the requests: they used to get a plain-text 500 and a traceback each."""
    proc, url = start_server(exported["sweep"], "--variants=onnx-fp32", "--max_wait_ms=5000", "--drain_timeout_s=0.5")
    try:
        resps = sigterm_during(proc, url, n=8)
        assert [r.status_code for r in resps] == [503] * 8
        assert all(r.headers["retry-after"] == "1" and "shutting down" in r.json()["error"]["message"]
                   for r in resps)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        output = proc.stdout.read()
    assert "Traceback" not in output and "Internal Server Error" not in output


def test_sigterm_stops_accepting_drains_in_flight_requests_then_exits(exported):
    proc, url = start_server(exported["sweep"], "--variants=onnx-fp32", "--max_wait_ms=300", "--drain_timeout_s=20")
    try:
        resps = sigterm_during(proc, url)
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
