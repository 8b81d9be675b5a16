"""The HTTP contract: endpoints, response shapes, the OpenAPI document, errors, auth."""

import json

import httpx
import pytest

from serve.schema import CompletionResponse
from tasks.formatting import normalize
from tasks.grader import grade
from tests.serve.conftest import SERVED, running, sample, serve_config


def first_model(server) -> str:
    return server["client"].get("/v1/models").json()["data"][0]["id"]


def test_models_lists_every_run_times_variant(server):
    body = server["client"].get("/v1/models").json()
    assert body["object"] == "list" and body["refused"] == {}
    assert {m["variant"] for m in body["data"]} == set(SERVED)
    assert len(body["data"]) == 2 * len(SERVED)
    m = body["data"][0]
    assert m["id"] == f"{m['run']}/{m['variant']}" and m["step"] == 6 and m["loaded"] is True
    assert {"bits", "backend"} <= set(m)


def test_completion_is_openai_shaped_graded_and_counted(server):
    client, registry = server["client"], server["registry"]
    model = first_model(server)
    run, variant = model.split("/")
    before = {r: sample(registry, "fracture_requests_total", model=run, variant=variant, shift="base", result=r)
              for r in ("correct", "incorrect")}
    free = client.post("/v1/completions", json={"model": model, "prompt": "b8|17+3=", "max_tokens": 6}).json()
    answer = free["choices"][0]["text"]
    expected = answer if normalize(answer) else "22"  # an untrained model may answer nothing
    resp = client.post("/v1/completions", json={"model": model, "prompt": "b8|17+3=", "max_tokens": 6,
                                                 "temperature": 0, "shift": "base", "expected": expected})
    assert resp.status_code == 200
    body = resp.json()
    CompletionResponse.model_validate(body)  # what the OpenAPI document promises
    assert body["object"] == "text_completion" and body["model"] == model and body["variant"] == variant
    assert body["correct"] is grade(answer, expected).exact and body["shift"] == "base"
    assert body["choices"][0]["finish_reason"] in ("stop", "length")
    u = body["usage"]
    assert u["prompt_tokens"] == len("b8|17+3=") and u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    assert free["correct"] is None and free["shift"] == "none"
    result = "correct" if body["correct"] else "incorrect"
    after = sample(registry, "fracture_requests_total", model=run, variant=variant, shift="base", result=result)
    assert after == before[result] + 1
    wrong = client.post("/v1/completions", json={"model": model, "prompt": "b8|17+3=", "shift": "base",
                                                  "expected": normalize(answer) + "1"}).json()
    assert wrong["correct"] is False
    assert sample(registry, "fracture_requests_total", model=run, variant=variant, shift="base",
                  result="incorrect") >= 1
    assert sample(registry, "fracture_request_duration_seconds_count", variant=variant) >= 3
    assert sample(registry, "fracture_generated_tokens_total", variant=variant) >= 3


def test_metrics_endpoint_exposes_the_fleet_with_closed_labels(server):
    text = server["client"].get("/metrics").text
    assert 'fracture_model_info{model="' in text and "fracture_inflight_requests" in text
    assert "fracture_request_duration_seconds_bucket" in text and 'le="0.0001"' in text
    shifts = {line.split('shift="')[1].split('"')[0] for line in text.splitlines()
              if line.startswith("fracture_requests_total{")}
    assert shifts == {"id", "length", "operator_order", "base", "base9", "none"}


def test_health_and_readiness(server):
    assert server["client"].get("/healthz").json() == {"status": "ok"}
    ready = server["client"].get("/readyz").json()
    assert ready["status"] == "ready" and ready["models"] == 6


def test_openapi_documents_the_api_truthfully(server):
    spec = server["client"].get("/openapi.json").json()
    assert {"/v1/completions", "/v1/models", "/metrics", "/healthz", "/readyz"} <= set(spec["paths"])
    post = spec["paths"]["/v1/completions"]["post"]
    assert {"200", "400", "401", "404", "413", "503"} <= set(post["responses"])
    req = spec["components"]["schemas"]["CompletionRequest"]
    assert {"model", "prompt", "max_tokens", "temperature", "stop", "shift", "expected"} <= set(req["properties"])
    assert req["additionalProperties"] is False
    resp = spec["components"]["schemas"]["CompletionResponse"]
    assert {"variant", "correct", "usage", "choices"} <= set(resp["properties"])


def _bad_requests(model):
    ok = {"model": model, "prompt": "12+34=", "max_tokens": 4}
    return [
        ("malformed JSON", b'{"model": ', 400, "malformed_json"),
        ("not JSON at all", b"\xff\xfe garbage", 400, "malformed_json"),
        ("latin-1, not UTF-8", b'{"model": "caf\xe9"}', 400, "malformed_json"),
        ("an integer past Python's digit limit", b'{"max_tokens": ' + b"1" * 5000 + b"}", 400, "malformed_json"),
        ("JSON but not an object", b"[1, 2]", 400, "invalid_request"),
        ("missing prompt", {"model": model}, 400, "invalid_request"),
        ("prompt wrongly typed", {**ok, "prompt": 123}, 400, "invalid_request"),
        ("max_tokens as string", {**ok, "max_tokens": "4"}, 400, "invalid_request"),
        ("unknown field", {**ok, "top_k": 5}, 400, "invalid_request"),
        ("stream", {**ok, "stream": True}, 400, "invalid_request"),
        ("prompt too long", {**ok, "prompt": "1" * 300}, 400, "prompt_too_long"),
        ("empty prompt", {**ok, "prompt": ""}, 400, "prompt_too_long"),
        ("unencodable", {**ok, "prompt": "12+€="}, 400, "unencodable_prompt"),
        # JSON's escapes of a lone surrogate (sent as bytes: httpx cannot encode one), a 500 before
        ("lone surrogate", json.dumps({**ok, "prompt": "12+\ud800="}).encode(), 400, "unencodable_prompt"),
        ("lone surrogate in a batch", json.dumps({**ok, "prompt": ["1+2=", "\udfff"]}).encode(), 400,
         "unencodable_prompt"),
        ("max_tokens 0", {**ok, "max_tokens": 0}, 400, "max_tokens_out_of_range"),
        ("max_tokens huge", {**ok, "max_tokens": 10**9}, 400, "max_tokens_out_of_range"),
        ("temperature", {**ok, "temperature": 0.7}, 400, "temperature"),
        ("unknown model", {**ok, "model": "r99/onnx-fp32"}, 404, "unknown_model"),
        ("unknown shift", {**ok, "shift": "sideways"}, 400, "unknown_shift"),
        ("empty stop", {**ok, "stop": [""]}, 400, "invalid_request"),
        ("empty expected", {**ok, "expected": " "}, 400, "invalid_request"),
    ]


def test_bad_input_gets_a_json_4xx_counted_by_reason(server):
    client, registry = server["client"], server["registry"]
    model = first_model(server)
    for what, body, status, reason in _bad_requests(model):
        before = sample(registry, "fracture_request_errors_total", reason=reason)
        if isinstance(body, bytes):
            resp = client.post("/v1/completions", content=body, headers={"content-type": "application/json"})
        else:
            resp = client.post("/v1/completions", json=body)
        assert resp.status_code == status, (what, resp.text)
        assert set(resp.json()["error"]) == {"type", "message"}, what
        assert sample(registry, "fracture_request_errors_total", reason=reason) == before + 1, what
    text = client.get("/metrics").text
    assert "sideways" not in text and "r99" not in text  # never a new label value


def _answer(resp: httpx.Response) -> tuple[int, dict]:
    body = resp.json()
    return resp.status_code, {k: v for k, v in body.items() if k not in ("id", "created")}


def test_the_fast_path_answers_word_for_word_as_fastapis_route(server):
    """POST /v1/completions with an ``application/json`` body is answered by serve.app.FastRoute; the same bytes as
    ``application/<x>+json`` go through FastAPI's route (which parses them as JSON all the same). Answers and
    refusals must agree."""
    client, registry = server["client"], server["registry"]
    model = first_model(server)
    run, variant = model.split("/")

    def graded() -> float:
        return sum(sample(registry, "fracture_requests_total", model=run, variant=variant, shift="id", result=r)
                   for r in ("correct", "incorrect"))

    answers = [{"model": model, "prompt": p, "max_tokens": 6, "shift": "id", "expected": "46"}
               for p in ("12+34=", "999+1=")] + [{"model": model, "prompt": ["1+2=", "3+4="], "echo": True}]
    for body in answers + [body for _, body, _, _ in _bad_requests(model)]:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        before = graded()
        fast = client.post("/v1/completions", content=raw, headers={"content-type": "application/json; charset=utf-8"})
        routed = client.post("/v1/completions", content=raw, headers={"content-type": "application/x-test+json"})
        assert _answer(fast) == _answer(routed), raw
        assert graded() - before == (2 if body in answers[:2] else 0)  # once per request, whichever path


def test_the_fast_path_serves_without_fastapis_route(exported):
    """With FastAPI's completions route taken out, a JSON request is still answered (by FastRoute), and one
    it hands on (another JSON content type) finds no route: the fast path is really what serves."""
    with running(serve_config(exported["sweep"])) as (url, app, _), httpx.Client(base_url=url, timeout=30) as c:
        app.router.routes = [r for r in app.router.routes if getattr(r, "path", "") != "/v1/completions"]
        model = c.get("/v1/models").json()["data"][0]["id"]
        body = {"model": model, "prompt": "12+34=", "max_tokens": 4}
        assert c.post("/v1/completions", json=body).status_code == 200
        assert c.post("/v1/completions", content=json.dumps(body).encode(),
                      headers={"content-type": "application/x-test+json"}).status_code == 404
        assert c.post("/v1/completions", json={"model": model}).status_code == 404  # declined, handed on


def test_oversized_body_gets_413(server):
    model = first_model(server)
    resp = server["client"].post("/v1/completions", json={"model": model, "prompt": "1+1=", "user": "x" * 20000})
    assert resp.status_code == 413 and "larger than" in resp.json()["error"]["message"]
    with httpx.Client(base_url=server["url"]) as c:  # streamed, no content-length
        resp = c.post("/v1/completions", content=iter([b"{" + b" " * 10000, b" " * 10000 + b"}"]),
                      headers={"content-type": "application/json"})
    assert resp.status_code == 413


def test_unknown_route_and_method(server):
    assert server["client"].get("/v2/nothing").status_code == 404
    assert server["client"].get("/v1/completions").status_code == 405
    assert server["client"].get("/v2/nothing").json()["error"]["type"] == "not_found_error"


def test_bearer_auth_guards_the_api_and_metrics_but_not_health(exported, monkeypatch):
    monkeypatch.setenv("FRACTURE_API_TOKEN", "s3cret")
    with running(serve_config(exported["sweep"])) as (url, _, registry), httpx.Client(base_url=url) as c:
        assert c.get("/v1/models").status_code == 401
        resp = c.post("/v1/completions", json={"model": "x/y", "prompt": "1+1="},
                      headers={"Authorization": "Bearer wrong"})
        assert resp.status_code == 401 and resp.headers["www-authenticate"] == "Bearer"
        assert c.get("/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/metrics").status_code == 401 and c.get("/healthz").status_code == 200
        assert sample(registry, "fracture_request_errors_total", reason="unauthorized") == 3


@pytest.mark.parametrize("field, value", [("max_batch_size", 0), ("provider", "tpu"), ("request_timeout_s", 0),
                                          ("decode_workers", -1)])
def test_invalid_config_is_refused(field, value):
    from serve.config import ServeConfig

    with pytest.raises(ValueError, match=field):
        ServeConfig(**{field: value})


def test_decode_workers_default_to_the_cores_the_process_may_use():
    import os

    from serve.config import ServeConfig

    assert ServeConfig().workers == len(os.sched_getaffinity(0))
    assert ServeConfig(decode_workers=3).workers == 3


def test_served_prompt_is_written_in_the_models_digit_format(server):
    """The canonical prompt is formatted as the model was trained (compact here): usage counts
    one token per character."""
    model = first_model(server)
    body = server["client"].post("/v1/completions", json={"model": model, "prompt": "123+456="}).json()
    assert body["usage"]["prompt_tokens"] == 8


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_api_docs_load_without_the_internet(server, page):
    """/docs and /redoc name only assets the server itself serves (fastapi-offline ships Swagger UI and
    ReDoc): an offline edge box shows them. Every script, style and icon they reference answers 200."""
    import re

    client = server["client"]
    html = client.get(page)
    assert html.status_code == 200 and "text/html" in html.headers["content-type"]
    refs = re.findall(r"""(?:src|href)\s*=\s*['"]([^'"]+)['"]""", html.text)
    assert refs and all(ref.startswith("/") and not ref.startswith("//") for ref in refs), refs
    assert "cdn" not in html.text and "fonts.googleapis" not in html.text
    for ref in refs:
        asset = client.get(ref)
        assert asset.status_code == 200 and len(asset.content) > 1000, ref
