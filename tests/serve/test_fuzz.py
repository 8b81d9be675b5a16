"""No crash under hostile input: a bounded schemathesis fuzz of the OpenAPI document (valid and
invalid cases) plus a hand-written list of nasty requests yield no 5xx but 503, the process
stays up, and a well-formed request sent in between keeps getting the same answer."""

import json
import socket

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.generation.modes import GenerationMode

from tests.serve.conftest import running, serve_config

NASTY = [
    ("POST", "/v1/completions", b"", {"content-type": "application/json"}),
    ("POST", "/v1/completions", b"null", {"content-type": "application/json"}),
    ("POST", "/v1/completions", b'{"model": null, "prompt": null}', {"content-type": "application/json"}),
    ("POST", "/v1/completions", b'{"model": "a/b", "prompt": "1+1=", "max_tokens": 1e308}', {}),
    ("POST", "/v1/completions", b'{"model": "a/b", "prompt": "1+1=", "max_tokens": -1}', {}),
    ("POST", "/v1/completions", '{"model": "x", "prompt": "\u0000\ud7ff\uffff"}'.encode(), {}),
    ("POST", "/v1/completions", b'{"prompt": "' + b"9" * 5000 + b'"}', {}),
    ("POST", "/v1/completions", b"{" * 5000, {}),
    ("POST", "/v1/completions", b'[' * 3000 + b']' * 3000, {}),
    ("POST", "/v1/completions", b'{"model": "a/b", "prompt": "1+1=", "stop": [[[]]]}', {}),
    ("POST", "/v1/completions", b'{"model": "a/b", "prompt": "1+1=", "temperature": NaN}', {}),
    ("POST", "/v1/completions", b'{"model": "a/b", "prompt": "1+1=", "shift": {"$ne": 1}}', {}),
    ("POST", "/v1/completions", b"\x00\x01\x02", {"content-type": "application/octet-stream"}),
    ("POST", "/v1/completions", b'{"model": "a/b", "prompt": "1+1="}', {"content-type": "text/plain"}),
    ("PUT", "/v1/completions", b"{}", {}),
    ("GET", "/v1/models/../../etc/passwd", b"", {}),
    ("GET", "/metrics?name[]=x", b"", {}),
    ("DELETE", "/v1/models", b"", {}),
]


def _send(client: httpx.Client, kw: dict) -> httpx.Response:
    """Send a schemathesis case over real HTTP with httpx. (``case.call`` uses requests, whose
    pool internals grafana-client's urllib3-future replaces in the dev environment.)"""
    body = {}
    if kw.get("json") is not None:
        body["json"] = kw["json"]
    elif kw.get("data") is not None:
        data = kw["data"]
        body["content"] = data if isinstance(data, (bytes, str)) else json.dumps(data)
    headers = dict(kw.get("headers") or {})
    if kw.get("cookies"):
        headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in kw["cookies"].items())
    return client.request(kw["method"], kw["url"], headers=headers, params=kw.get("params"), **body)


def _raw(url: str, data: bytes) -> bytes:
    """Bytes no HTTP client library would send (a lying Content-Length, a garbage request line)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(data)
        return sock.recv(4096)


def _well_formed(client, model):
    r = client.post("/v1/completions", json={"model": model, "prompt": "123+456=", "max_tokens": 6})
    assert r.status_code == 200
    return r.json()["choices"][0]["text"]


def test_nasty_requests_and_a_schema_fuzz_never_crash_the_server(exported):
    with running(serve_config(exported["sweep"])) as (url, app, _), httpx.Client(base_url=url, timeout=30) as c:
        model = next(iter(app.state.fleet.entries))
        reference = _well_formed(c, model)
        for method, path, body, headers in NASTY:
            resp = c.request(method, path, content=body, headers=headers)
            assert resp.status_code < 500 or resp.status_code == 503, (path, body[:60], resp.text)
            if resp.status_code >= 400:
                assert set(resp.json()["error"]) == {"type", "message"}, (path, resp.text)
        assert _raw(url, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n{}"
                    ).startswith(b"HTTP/1.1 413")
        assert _raw(url, b"GARBAGE\r\n\r\n").startswith(b"HTTP/1.1 400")
        assert _well_formed(c, model) == reference

        schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
        operations = [r.ok() for r in schema.get_all_operations()]
        assert {op.path for op in operations} >= {"/v1/completions", "/v1/models"}
        strategy = st.one_of([op.as_strategy(generation_mode=mode) for op in operations
                              for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)])
        seen = []

        @settings(max_examples=150, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(case=strategy)
        def fuzz(case):
            resp = _send(c, case.as_transport_kwargs(base_url=url))
            seen.append(resp.status_code)
            assert resp.status_code < 500 or resp.status_code == 503, (case.path, case.body, resp.text)

        fuzz()
        assert len(seen) >= 100 and any(400 <= s < 500 for s in seen)
        assert c.get("/healthz").status_code == 200
        assert _well_formed(c, model) == reference


@pytest.mark.parametrize("shift", ["../../x", "id\n", "ID", "sideways", ""])
def test_shift_labels_stay_closed(exported, shift):
    with running(serve_config(exported["sweep"])) as (url, app, registry), httpx.Client(base_url=url) as c:
        model = next(iter(app.state.fleet.entries))
        resp = c.post("/v1/completions", json={"model": model, "prompt": "1+1=", "shift": shift})
        assert resp.status_code == 400
        assert f'shift="{shift}"' not in c.get("/metrics").text
