"""Real clients of the OpenAI-shaped API over HTTP on 127.0.0.1: the official ``openai`` client, the request
forms the completions API defines (a batch of prompts, token ids), and lm-evaluation-harness's
``local-completions`` model, whose accuracy on a split must be exactly the one in accuracy.csv."""

from pathlib import Path

import httpx
import pytest
import yaml

from common.accuracy_table import read_table
from serve.schema import CompletionResponse
from tasks.formatting import normalize
from tasks.grader import grade
from tests.serve.conftest import SERVED, sample

openai = pytest.importorskip("openai", reason="the dev extra installs it: make setup-dev")

TASK_TEMPLATE = Path(__file__).with_name("lm_eval_task.yaml")
PROMPTS = ["123+456=", "b8|17+3=", "9*9=", "1+1="]


def _models(server) -> list[str]:
    return [m["id"] for m in server["client"].get("/v1/models").json()["data"]]


def _complete(server, **body) -> httpx.Response:
    return server["client"].post("/v1/completions", json=body)


def _alone(server, model: str, prompt: str, max_tokens: int = 6) -> dict:
    """The answer to ``prompt`` sent on its own, as a string: what every other form must reproduce."""
    resp = _complete(server, model=model, prompt=prompt, max_tokens=max_tokens)
    assert resp.status_code == 200, resp.text
    return resp.json()


@pytest.fixture(scope="module")
def client(server):
    with openai.OpenAI(base_url=f"{server['url']}/v1", api_key="unused", max_retries=0, timeout=30) as c:
        yield c


def test_openai_client_lists_models_and_completes_with_the_extra_fields(server, client):
    assert sorted(m.id for m in client.models.list()) == sorted(_models(server))
    model = _models(server)[0]
    run, variant = model.split("/")
    free = client.completions.create(model=model, prompt="b8|17+3=", max_tokens=6, seed=7, user="someone",
                                     top_p=1, n=1, echo=False, stream=False, temperature=0)
    answer = free.choices[0].text
    assert answer == _alone(server, model, "b8|17+3=")["choices"][0]["text"]
    assert free.model_extra["correct"] is None and free.model_extra["shift"] == "none"
    expected = answer if normalize(answer) else "22"  # an untrained model may answer nothing
    before = sample(server["registry"], "fracture_requests_total", model=run, variant=variant, shift="base",
                    result="correct" if grade(answer, expected).exact else "incorrect")
    graded = client.completions.create(model=model, prompt="b8|17+3=", max_tokens=6,
                                       extra_body={"shift": "base", "expected": expected})
    assert graded.correct is grade(answer, expected).exact  # the extra fields are readable as attributes
    assert graded.variant == variant and graded.shift == "base"
    assert graded.choices[0].finish_reason in ("stop", "length") and graded.usage.prompt_tokens == 8
    assert sample(server["registry"], "fracture_requests_total", model=run, variant=variant, shift="base",
                  result="correct" if graded.correct else "incorrect") == before + 1
    wrong = client.completions.create(model=model, prompt="b8|17+3=", max_tokens=6,
                                      extra_body={"shift": "base", "expected": normalize(answer) + "1"})
    assert wrong.correct is False


def test_openai_client_sees_refusals_as_its_own_errors(server, client):
    model = _models(server)[0]
    with pytest.raises(openai.NotFoundError, match="unknown model"):
        client.completions.create(model="r99/onnx-fp32", prompt="1+1=")
    refused = [({"temperature": 0.7}, "temperature must be 0"), ({"top_p": 0.5}, "top_p must be 1"),
               ({"n": 2}, "n must be 1"), ({"best_of": 3}, "best_of must be 1"),
               ({"logprobs": 1}, "logprobs are not served"), ({"presence_penalty": 0.5}, "presence_penalty"),
               ({"frequency_penalty": -1}, "frequency_penalty"), ({"logit_bias": {"4": 50}}, "logit_bias"),
               ({"suffix": "=2"}, "suffix is not served"), ({"max_tokens": 0}, "max_tokens must be in")]
    for kwargs, reason in refused:
        with pytest.raises(openai.BadRequestError, match=reason):
            client.completions.create(model=model, prompt="1+1=", **kwargs)
    with pytest.raises(openai.BadRequestError, match="stream is not served"):
        client.completions.create(model=model, prompt="1+1=", stream=True)
    with pytest.raises(openai.BadRequestError, match="top_k: Extra inputs"):  # not a field of the OpenAI API
        client.completions.create(model=model, prompt="1+1=", extra_body={"top_k": 1})
    # the neutral values of those fields change nothing: accepted
    neutral = client.completions.create(model=model, prompt="1+1=", max_tokens=6, temperature=0, top_p=1, n=1,
                                        best_of=1, presence_penalty=0, frequency_penalty=0, logit_bias={"4": 0},
                                        suffix="", stream=False, extra_body={"stream_options": None})
    assert neutral.choices[0].text == _alone(server, model, "1+1=")["choices"][0]["text"]


def test_a_list_of_prompts_is_a_batch_answered_and_graded_per_prompt(server):
    model = _models(server)[0]
    run, variant = model.split("/")
    alone = [_alone(server, model, p)["choices"][0]["text"] for p in PROMPTS]
    expected = [a if normalize(a) else "7" for a in alone[:2]] + ["80", normalize(alone[3]) + "1"]
    grades = [grade(a, e).exact for a, e in zip(alone, expected)]

    def counted(result):
        return sample(server["registry"], "fracture_requests_total", model=run, variant=variant, shift="id",
                      result=result)

    before = {r: counted(r) for r in ("correct", "incorrect")}
    resp = _complete(server, model=model, prompt=PROMPTS, max_tokens=6, shift="id", expected=expected)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    CompletionResponse.model_validate(body)
    assert [c["index"] for c in body["choices"]] == list(range(len(PROMPTS)))
    assert [c["text"] for c in body["choices"]] == alone
    assert [c["correct"] for c in body["choices"]] == grades and body["correct"] is None
    assert body["usage"]["prompt_tokens"] == sum(len(p) for p in PROMPTS)  # one token per character here
    assert counted("correct") == before["correct"] + sum(grades)  # each prompt is one sample
    assert counted("incorrect") == before["incorrect"] + len(grades) - sum(grades)
    echoed = _complete(server, model=model, prompt=PROMPTS[:2], max_tokens=6, echo=True).json()
    assert [c["text"] for c in echoed["choices"]] == [p + a for p, a in zip(PROMPTS[:2], alone)]
    one = _complete(server, model=model, prompt=PROMPTS[:1], max_tokens=6, expected=expected[:1]).json()
    assert one["correct"] is grades[0] and one["choices"][0]["correct"] is grades[0]
    for bad, reason in [({"expected": expected[:2]}, "one answer per prompt: 2 for 4"),
                        ({"expected": "7"}, "one answer per prompt: 1 for 4"),
                        ({"prompt": []}, "at least one prompt"),
                        ({"prompt": [*PROMPTS[:2], "1" * 300]}, "prompt 2: prompt must have"),
                        ({"prompt": [PROMPTS[0], "12+€="]}, "prompt 1: the tokenizer cannot encode"),
                        ({"prompt": ["1+1="] * 1100}, "prompts per request")]:  # more than the queue holds
        resp = _complete(server, **{"model": model, "prompt": PROMPTS, **bad})
        assert resp.status_code == 400 and reason in resp.json()["error"]["message"], (bad, resp.text)
    assert server["app"].state.batcher.pending == 0


def test_token_id_prompts_are_served_as_the_text_they_stand_for(server):
    from tokenizers import Tokenizer

    model = _models(server)[0]
    run, variant = model.split("/")
    tokenizer = Tokenizer.from_file(str(server["sweep"] / run / "variants" / variant / "tokenizer.json"))
    ids = [tokenizer.encode(p, add_special_tokens=False).ids for p in PROMPTS]
    assert all(len(i) == len(p) for i, p in zip(ids, PROMPTS))  # genuinely tokens, not characters sent as text
    alone = [_alone(server, model, p) for p in PROMPTS]
    single = _complete(server, model=model, prompt=ids[0], max_tokens=6).json()
    assert single["choices"][0]["text"] == alone[0]["choices"][0]["text"]
    assert single["usage"] == alone[0]["usage"]
    batch = _complete(server, model=model, prompt=ids, max_tokens=6, expected=["1", "2", "3", "4"]).json()
    assert [c["text"] for c in batch["choices"]] == [a["choices"][0]["text"] for a in alone]
    assert [c["correct"] for c in batch["choices"]] == [grade(a["choices"][0]["text"], e).exact
                                                        for a, e in zip(alone, "1234")]
    echoed = _complete(server, model=model, prompt=ids[:1], echo=True, max_tokens=6).json()
    assert echoed["choices"][0]["text"] == PROMPTS[0] + alone[0]["choices"][0]["text"]
    vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    for bad, reason in [([5, vocab], f"token id {vocab} is not in the model's vocabulary"),
                        ([ids[0], []], "prompt 1: prompt must have"),
                        ([5, -1], "must be a string, a list of strings, a list of token ids"),
                        ([[5], "1+1="], "must be a string, a list of strings, a list of token ids"),
                        ([5, True], "must be a string")]:
        resp = _complete(server, model=model, prompt=bad)
        assert resp.status_code == 400 and reason in resp.json()["error"]["message"], (bad, resp.text)


def test_token_ids_that_do_not_round_trip_are_refused():
    """With a BPE tokenizer, ids can spell a text the tokenizer would encode differently ("1", "2" for the
    merged "12"): served as text, the model would see other tokens than sent, so the request is refused."""
    from types import SimpleNamespace

    from tokenizers import Tokenizer, decoders, models

    from serve.completions import _text_of_ids
    from serve.schema import APIError

    bpe = Tokenizer(models.BPE({"1": 0, "2": 1, "12": 2, "+": 3}, [("1", "2")]))
    bpe.decoder = decoders.Fuse()
    runner = SimpleNamespace(tokenizer=bpe)
    assert _text_of_ids(runner, [2, 3, 0], "") == "12+1"
    with pytest.raises(APIError, match="not the model tokenizer's encoding of their text '12'") as err:
        _text_of_ids(runner, [0, 1], "prompt 3: ")
    assert err.value.status == 400 and err.value.message.startswith("prompt 3: ")


def test_openapi_documents_every_completions_field(server):
    spec = server["client"].get("/openapi.json").json()
    req = spec["components"]["schemas"]["CompletionRequest"]
    assert {"model", "prompt", "max_tokens", "temperature", "top_p", "n", "best_of", "stop", "echo", "logprobs",
            "presence_penalty", "frequency_penalty", "logit_bias", "seed", "suffix", "stream", "stream_options",
            "user", "shift", "expected"} == set(req["properties"])
    assert req["additionalProperties"] is False
    forms = req["properties"]["prompt"]["anyOf"]
    assert {"type": "string"} in forms and len(forms) == 4


def _lm_eval_task(folder: Path, split: str, data: Path, max_gen_toks: int, cache: Path) -> str:
    from tasks.dataset import split_file

    task = yaml.safe_load(TASK_TEMPLATE.read_text())
    task["task"] = f"fracture_{split}"
    task["dataset_kwargs"]["data_files"]["test"] = str((data / f"{split_file(split)}.jsonl").resolve())
    task["dataset_kwargs"]["cache_dir"] = str(cache)
    task["generation_kwargs"]["max_gen_toks"] = max_gen_toks
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"fracture_{split}.yaml").write_text(yaml.safe_dump(task, sort_keys=False))
    return task["task"]


def test_lm_eval_local_completions_gets_exactly_the_offline_accuracy(server, tmp_path):
    """lm-evaluation-harness evaluates a served variant on one split (token-id prompts in batches, its own
    stop strings and seed, its own exact-match grading; no shift or expected sent) and gets accuracy.csv's
    n and correct for that row. Few items are right after 6 training steps, so the answers are also checked
    digit by digit: graded with fracture's grader, lm-eval's answers give the row's per-digit counts."""
    lm_eval = pytest.importorskip("lm_eval", reason="the eval extra installs it: make setup-dev")
    from lm_eval.tasks import TaskManager

    from serve.replay import load_splits
    from tasks.dataset import sweep_data
    from train.evaluate import max_answer_tokens

    sweep = server["sweep"]
    rows = [r for r in read_table(sweep / "accuracy.csv") if r["variant"] in SERVED and f"{r['run']}/{r['variant']}"
            in _models(server)]
    row = max(rows, key=lambda r: (r["correct"], r["digit_correct"], r["variant"] != "onnx-fp32"))
    n, model = int(row["n"]), f"{row['run']}/{row['variant']}"
    data = sweep_data(sweep)
    # offline evaluation's budget: the longest answer of the evaluated items of every split, + 2
    max_gen_toks = max_answer_tokens(load_splits(data, eval_items=n))
    task = _lm_eval_task(tmp_path / "tasks", row["split"], data, max_gen_toks, tmp_path / "hf-datasets")
    run, variant = model.split("/")
    ungraded = sample(server["registry"], "fracture_requests_total", model=run, variant=variant, shift="none",
                      result="ungraded")
    args = {"base_url": f"{server['url']}/v1/completions", "model": model, "tokenizer_backend": "huggingface",
            "tokenizer": str(sweep / run / "variants" / variant), "batch_size": 8, "max_retries": 1}
    results = lm_eval.simple_evaluate(
        model="local-completions", model_args=",".join(f"{k}={v}" for k, v in args.items()), tasks=[task],
        task_manager=TaskManager(include_path=str(tmp_path / "tasks"), include_defaults=False), limit=n,
        log_samples=True, bootstrap_iters=0)
    samples = results["samples"][task]
    correct = sum(s["exact_match"] for s in samples)
    assert (len(samples), correct) == (n, row["correct"]), (model, row["split"])
    assert results["results"][task]["exact_match,none"] == pytest.approx(row["correct"] / n, abs=1e-12)
    grades = [grade(s["filtered_resps"][0], s["target"]) for s in samples]
    assert sum(g.exact for g in grades) == correct  # lm-eval's normalisation is fracture's
    assert (sum(g.digit_correct for g in grades), sum(g.digit_total for g in grades)) == (
        row["digit_correct"], row["digit_total"])
    assert all(s["arguments"][0][1]["max_gen_toks"] == max_gen_toks for s in samples)
    # every answer came from this server, one request per prompt counted (lm-eval sends no label)
    assert sample(server["registry"], "fracture_requests_total", model=run, variant=variant, shift="none",
                  result="ungraded") == ungraded + n
