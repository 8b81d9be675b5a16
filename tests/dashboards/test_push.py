"""`python -m dashboards push` against a stand-in for Grafana's HTTP API.

No Grafana server can be installed here, so a local HTTP server implements the endpoints
grafana-client calls (datasource by uid, create/update datasource, create/update
dashboard) and records what it receives; the test asserts the exact payloads.
"""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from dashboards.build import DATASOURCE_UID, OUT
from dashboards.push import datasource_payload


class FakeGrafana(BaseHTTPRequestHandler):
    calls: list = []
    datasources: dict = {}

    def _reply(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _record(self) -> dict | None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        self.calls.append((self.command, self.path, self.headers.get("Authorization"), body))
        return body

    def do_GET(self):  # noqa: N802 - http.server's naming
        self._record()
        if self.path == "/api/health":
            return self._reply(200, {"commit": "test", "database": "ok", "version": "12.0.0"})
        if self.headers.get("Authorization") == "Bearer wrong":
            return self._reply(401, {"message": "invalid API key"})
        uid = self.path.rsplit("/", 1)[-1]
        if self.path.startswith("/api/datasources/uid/") and uid in self.datasources:
            return self._reply(200, self.datasources[uid])
        return self._reply(404, {"message": "Data source not found"})

    def do_POST(self):  # noqa: N802
        body = self._record()
        if self.path == "/api/datasources":
            self.datasources[body["uid"]] = body
            return self._reply(200, {"id": 1, "message": "Datasource added", "datasource": body})
        if self.path == "/api/dashboards/db":
            return self._reply(200, {"status": "success", "uid": body["dashboard"]["uid"], "version": 1})
        return self._reply(404, {"message": "not found"})

    def do_PUT(self):  # noqa: N802
        body = self._record()
        if self.path.startswith("/api/datasources/uid/"):
            self.datasources[body["uid"]] = body
            return self._reply(200, {"message": "Datasource updated"})
        return self._reply(404, {"message": "not found"})

    def log_message(self, *args):
        pass


@pytest.fixture()
def grafana():
    FakeGrafana.calls, FakeGrafana.datasources = [], {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeGrafana)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_push_creates_then_updates_with_exact_payloads(grafana):
    from dashboards.__main__ import main

    assert main(["push", "--url", grafana, "--token", "tok", "--prometheus", "http://127.0.0.1:9090"]) == 0
    calls = [(m, p, a, b) for m, p, a, b in FakeGrafana.calls if not p.startswith("/api/health")]
    expected_ds = datasource_payload("http://127.0.0.1:9090")
    assert calls[0][:2] == ("GET", f"/api/datasources/uid/{DATASOURCE_UID}")
    assert calls[1] == ("POST", "/api/datasources", "Bearer tok", expected_ds)
    dashboards = [json.loads(p.read_text()) for p in sorted(OUT.glob("*.json"))]
    assert [c[1:] for c in calls[2:]] == [
        ("/api/dashboards/db", "Bearer tok", {"dashboard": d, "overwrite": True,
                                              "message": "pushed by python -m dashboards push"})
        for d in dashboards]
    FakeGrafana.calls.clear()
    assert main(["push", "--url", grafana, "--token", "tok"]) == 0
    methods = [(m, p) for m, p, _, _ in FakeGrafana.calls if not p.startswith("/api/health")]
    assert methods[:2] == [("GET", f"/api/datasources/uid/{DATASOURCE_UID}"),
                           ("PUT", f"/api/datasources/uid/{DATASOURCE_UID}")]


def test_push_to_an_unreachable_grafana_is_a_clear_error(capsys):
    from dashboards.__main__ import main

    assert main(["push", "--url", "http://127.0.0.1:9", "--token", "t"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot reach http://127.0.0.1:9" in err and "is Grafana running there?" in err


class NotGrafana(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        body = b"404 page not found"
        self.send_response(404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_push_errors_are_one_line_each(grafana, capsys, monkeypatch):
    """No token, a URL that is not a Grafana, a token Grafana refuses: each a line saying what to do."""
    from dashboards.__main__ import main

    monkeypatch.delenv("GRAFANA_TOKEN", raising=False)
    assert main(["push", "--url", grafana]) == 1
    assert "no token: pass --token or set GRAFANA_TOKEN" in capsys.readouterr().err
    monkeypatch.setenv("GRAFANA_TOKEN", "tok")  # the token may come from the environment
    assert main(["push", "--url", grafana]) == 0
    capsys.readouterr()
    other = ThreadingHTTPServer(("127.0.0.1", 0), NotGrafana)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{other.server_address[1]}"
        assert main(["push", "--url", url, "--token", "t"]) == 1
        assert f"{url} does not look like Grafana: /api/health answered HTTP 404" in capsys.readouterr().err
    finally:
        other.shutdown()
    assert main(["push", "--url", grafana, "--token", "wrong"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "refused the token (HTTP 401)" in err
