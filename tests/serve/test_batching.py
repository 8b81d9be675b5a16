"""Dynamic batching: batched answers equal single answers, batches form, overload is a 503."""

import asyncio

import httpx

from tests.serve.conftest import running, sample, serve_config

PROMPTS = ["12+345=", "b8|17+3=", "123+456=", "4+5=", "+457|068=", "999+999=", "1234+5678=", "7+0="] * 4


async def _concurrent(url, model, prompts, max_tokens=6):
    async with httpx.AsyncClient(base_url=url, timeout=60) as c:
        resps = await asyncio.gather(*(c.post("/v1/completions", json={"model": model, "prompt": p,
                                                                         "max_tokens": max_tokens})
                                       for p in prompts))
    return resps


def test_batched_answers_equal_single_request_answers(exported):
    with running(serve_config(exported["sweep"], max_wait_ms=50)) as (url, app, registry):
        model = next(iter(app.state.fleet.entries))
        variant = model.split("/")[1]
        with httpx.Client(base_url=url, timeout=60) as c:
            singles = [c.post("/v1/completions", json={"model": model, "prompt": p, "max_tokens": 6}).json()
                       for p in PROMPTS[:8]]
        batches_before = sample(registry, "fracture_batch_size_count", variant=variant)
        resps = asyncio.run(_concurrent(url, model, PROMPTS))
        assert all(r.status_code == 200 for r in resps)
        together = [r.json() for r in resps]
        for s, t in zip(singles * 4, together):
            assert t["choices"][0]["text"] == s["choices"][0]["text"]
            assert t["usage"] == s["usage"] and t["choices"][0]["finish_reason"] == s["choices"][0]["finish_reason"]
        batches = sample(registry, "fracture_batch_size_count", variant=variant) - batches_before
        summed = sample(registry, "fracture_batch_size_sum", variant=variant)
        assert batches < len(PROMPTS), "32 concurrent requests were decoded one by one"
        assert summed >= len(PROMPTS) + 8


def test_mixed_max_tokens_and_stops_in_one_batch_are_cut_per_request(exported):
    with running(serve_config(exported["sweep"], max_wait_ms=100)) as (url, app, _):
        model = next(iter(app.state.fleet.entries))
        with httpx.Client(base_url=url, timeout=60) as c:
            alone = [c.post("/v1/completions", json={"model": model, "prompt": "123+456=", "max_tokens": n}).json()
                     for n in (1, 3, 6)]

        async def mixed():
            async with httpx.AsyncClient(base_url=url, timeout=60) as c:
                return await asyncio.gather(*(c.post("/v1/completions", json={
                    "model": model, "prompt": "123+456=", "max_tokens": n}) for n in (1, 3, 6)))
        together = [r.json() for r in asyncio.run(mixed())]
        assert [t["choices"][0]["text"] for t in together] == [a["choices"][0]["text"] for a in alone]
        assert [t["usage"]["completion_tokens"] for t in together] == [a["usage"]["completion_tokens"]
                                                                      for a in alone]


def test_full_queue_answers_503_with_retry_after_and_keeps_serving(exported):
    cfg = serve_config(exported["sweep"], queue_size=2, max_batch_size=1, decode_workers=1, max_wait_ms=0)
    with running(cfg) as (url, app, registry):
        model = next(iter(app.state.fleet.entries))
        resps = asyncio.run(_concurrent(url, model, PROMPTS * 2, max_tokens=8))
        codes = [r.status_code for r in resps]
        assert set(codes) <= {200, 503} and 503 in codes and 200 in codes
        rejected = next(r for r in resps if r.status_code == 503)
        assert rejected.headers["retry-after"] == "1" and rejected.json()["error"]["type"] == "overloaded_error"
        assert sample(registry, "fracture_request_errors_total", reason="overloaded") == codes.count(503)
        with httpx.Client(base_url=url) as c:
            assert c.post("/v1/completions", json={"model": model, "prompt": "1+1="}).status_code == 200


def test_request_timeout_is_a_503(exported):
    cfg = serve_config(exported["sweep"], request_timeout_s=0.001, max_wait_ms=200)
    with running(cfg) as (url, app, registry), httpx.Client(base_url=url) as c:
        model = next(iter(app.state.fleet.entries))
        resp = c.post("/v1/completions", json={"model": model, "prompt": "1+1="})
        assert resp.status_code == 503 and "within" in resp.json()["error"]["message"]
        assert sample(registry, "fracture_request_errors_total", reason="timeout") == 1
