"""What a completion request goes through, apart from HTTP: ``CompletionService.complete``.

The fields are checked (greedy only, limits, the shift label, the model), the prompts tokenized in the
model's own tokenizer and digit format, the rows decoded by the batcher together with other requests
for the same model, each answer graded with ``tasks.grader.grade`` (the function offline evaluation
uses) and counted in the metrics, and the response body built in the ``CompletionResponse`` shape.
A refusal is raised as ``APIError``; the router (``serve.app``) turns it into the JSON error.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
from dataclasses import dataclass

from serve.batching import Batcher, Job, Overloaded
from serve.config import ServeConfig
from serve.fleet import Fleet, ModelEntry, ModelUnavailable
from serve.metrics import UNLABELLED, Metrics
from serve.schema import APIError, CompletionRequest
from tasks.formatting import format_prompt, normalize
from tasks.grader import grade


def _check_greedy(req: CompletionRequest) -> None:
    """400, saying why, for a field whose value would change a greedy answer or asks for what is not served.
    ``seed``, ``user`` and ``stream_options`` cannot change a greedy answer: accepted and ignored."""
    if req.temperature not in (None, 0):
        raise APIError(400, "temperature", "only greedy decoding is served: temperature must be 0")
    why = None
    if req.top_p not in (None, 1):
        why = f"top_p={req.top_p}: only greedy decoding is served; top_p must be 1"
    elif req.n not in (None, 1):
        why = f"n={req.n}: greedy decoding has one answer per prompt; n must be 1 (send a list of prompts " \
              "for several answers)"
    elif req.best_of not in (None, 1):
        why = f"best_of={req.best_of}: greedy decoding has one answer per prompt; best_of must be 1 or null"
    elif req.presence_penalty not in (None, 0):
        why = "presence_penalty would change the greedy answer: it must be 0"
    elif req.frequency_penalty not in (None, 0):
        why = "frequency_penalty would change the greedy answer: it must be 0"
    elif req.logit_bias and any(v != 0 for v in req.logit_bias.values()):
        why = "logit_bias would change the greedy answer: it must be empty (or all zero)"
    elif req.logprobs is not None:
        why = ("logprobs are not served (the decode loop keeps token ids, not their probabilities): leave "
               "logprobs out or null; generation works, scoring (loglikelihood) does not")
    elif req.suffix:
        why = "suffix is not served (no text insertion): leave it out"
    elif req.stream:
        why = "stream is not served: the answer (a few tokens) comes in one response; send stream=false"
    if why:
        raise APIError(400, "invalid_request", why)


def _prompts(prompt) -> tuple[list, bool]:
    """(the prompts, each a string or a list of token ids; whether the request is a batch: a list of prompts)."""
    if isinstance(prompt, str):
        return [prompt], False
    if prompt and all(isinstance(t, int) for t in prompt):  # one prompt as token ids
        return [prompt], False
    return list(prompt), True


def _is_unicode(text: str) -> bool:
    """No lone surrogate: JSON may escape one (\\ud800), Python keeps it, and neither UTF-8 nor a tokenizer takes it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _where(batch: bool, i: int) -> str:
    """Where in the request a refusal is about: "prompt <i>: " in a batch, nothing for a single prompt."""
    return f"prompt {i}: " if batch else ""


def _text_of_ids(runner, ids: list[int], where: str) -> str:
    """The text a token-id prompt stands for, in the model's tokenizer. It is then served as text (formatted and
    tokenized again), so it is accepted only when encoding that text gives back the very same ids."""
    tokenizer = runner.tokenizer
    vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    outside = [t for t in ids if t >= vocab]
    if outside:
        raise APIError(400, "invalid_request",
                       f"{where}token id {outside[0]} is not in the model's vocabulary (0..{vocab - 1})")
    text = tokenizer.decode(ids, skip_special_tokens=False)
    if tokenizer.encode(text, add_special_tokens=False).ids != ids:
        raise APIError(400, "unencodable_prompt",
                       f"{where}the token ids are not the model tokenizer's encoding of their text "
                       f"{text[:64]!r}: send the prompt as text")
    return text


@dataclass(frozen=True)
class _Checked:
    """A request whose fields passed every check that needs no model loaded."""

    prompts: list  # each a string or a list of token ids
    batch: bool  # the request held a list of prompts
    max_tokens: int
    shift: str  # the metrics' label (UNLABELLED when the request had none)
    entry: ModelEntry
    expected: list[str] | None  # one per prompt
    stops: list[str]

    def where(self, i: int) -> str:
        return _where(self.batch, i)


class CompletionService:
    """Completions of one fleet: the route calls ``complete`` with the parsed request and sends the dict."""

    def __init__(self, config: ServeConfig, fleet: Fleet, metrics: Metrics, batcher: Batcher,
                 shifts: tuple[str, ...]):
        self.config, self.fleet, self.metrics, self.batcher, self.shifts = config, fleet, metrics, batcher, shifts
        # completion ids: a random prefix per server and a counter (uuid4 per request cost ~3% of a request)
        self._id_prefix, self._ids = secrets.token_hex(6), itertools.count()

    async def complete(self, req: CompletionRequest) -> dict:
        self.metrics.inflight.inc()
        started = time.perf_counter()
        try:
            checked = self._check(req)
            runner = await self._runner(req.model)
            texts, jobs = self._jobs(req, checked, runner)
            finished = await self._decode(req.model, jobs)
            return self._respond(req, checked, texts, finished, time.perf_counter() - started)
        finally:
            self.metrics.inflight.dec()

    def _check(self, req: CompletionRequest) -> _Checked:
        config = self.config
        _check_greedy(req)
        max_tokens = 16 if req.max_tokens is None else req.max_tokens
        if not 1 <= max_tokens <= config.max_tokens_limit:
            raise APIError(400, "max_tokens_out_of_range", f"max_tokens must be in 1..{config.max_tokens_limit}")
        prompts, batch = _prompts(req.prompt)
        if not prompts:
            raise APIError(400, "prompt_too_long", "prompt must hold at least one prompt")
        if len(prompts) > config.queue_size:
            raise APIError(400, "invalid_request", f"at most {config.queue_size} prompts per request")
        for i, p in enumerate(prompts):
            if isinstance(p, str) and (not p or len(p) > config.max_prompt_chars):
                raise APIError(400, "prompt_too_long",
                               f"{_where(batch, i)}prompt must have 1..{config.max_prompt_chars} characters")
            if isinstance(p, str) and not _is_unicode(p):  # JSON's \ud800 escapes: no tokenizer takes them
                raise APIError(400, "unencodable_prompt", f"{_where(batch, i)}the prompt holds a lone surrogate "
                                                          "(an unpaired \\ud800-\\udfff escape): not valid Unicode")
        shift = req.shift if req.shift is not None else UNLABELLED
        if req.shift is not None and req.shift not in self.shifts:
            raise APIError(400, "unknown_shift", f"unknown shift {req.shift!r}; known: {', '.join(self.shifts)}")
        entry = self.fleet.entries.get(req.model)
        if entry is None:
            why = self.fleet.refused.get(req.model)
            raise APIError(404, "unknown_model", f"model {req.model!r} is refused: {why}" if why
                           else f"unknown model {req.model!r}; GET /v1/models lists them")
        expected = [req.expected] if isinstance(req.expected, str) else req.expected
        if expected is not None and len(expected) != len(prompts):
            raise APIError(400, "invalid_request", f"expected must hold one answer per prompt: {len(expected)} "
                                                   f"for {len(prompts)} prompt(s)")
        if expected is not None and not all(normalize(e) for e in expected):
            raise APIError(400, "invalid_request", "expected must hold an answer (or be left out)")
        stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        if any(not s for s in stops) or len(stops) > 4:
            raise APIError(400, "invalid_request", "stop must be at most 4 non-empty strings")
        return _Checked(prompts, batch, max_tokens, shift, entry, expected, stops)

    async def _runner(self, model: str):
        """The model's runner, loaded first if the fleet loads lazily."""
        try:
            runner = self.fleet.loaded(model) or await asyncio.get_running_loop().run_in_executor(
                None, self.fleet.runner, model)
        except ModelUnavailable as exc:
            raise APIError(404, "model_unavailable", f"model {model!r} is refused: {exc}") from None
        self.metrics.models_loaded.set(len(self.fleet.loaded_ids()))
        return runner

    def _jobs(self, req: CompletionRequest, checked: _Checked, runner) -> tuple[list[str], list[Job]]:
        """(each prompt as text, one decode job per prompt), tokenized as the model was trained."""
        limit = self.config.max_prompt_chars
        loop = asyncio.get_running_loop()
        texts, jobs = [], []
        for i, p in enumerate(checked.prompts):
            if not isinstance(p, str):  # token ids: served as the text they decode to
                p = _text_of_ids(runner, p, checked.where(i))
                if not p or len(p) > limit:
                    raise APIError(400, "prompt_too_long", f"{checked.where(i)}prompt must have 1..{limit} characters")
            ids, bad = runner.encode_checked(format_prompt(p, checked.entry.digit_format))
            if bad:
                raise APIError(400, "unencodable_prompt", f"{checked.where(i)}the tokenizer cannot encode {bad!r}")
            texts.append(p)
            jobs.append(Job(runner, ids, checked.max_tokens, checked.stops, loop.create_future()))
        return texts, jobs

    async def _decode(self, model: str, jobs: list[Job]) -> list:
        timeout = self.config.request_timeout_s
        try:
            async with asyncio.timeout(timeout):  # no task of its own (asyncio.wait_for makes one on 3.11)
                return await self.batcher.submit_many(model, jobs)
        except Overloaded as exc:
            raise APIError(503, "overloaded", f"server overloaded: {exc}", {"Retry-After": "1"}) from None
        except TimeoutError:
            raise APIError(503, "timeout", f"no answer within {timeout}s", {"Retry-After": "1"}) from None
        except ModelUnavailable as exc:
            raise APIError(404, "model_unavailable", f"model {model!r} is refused: {exc}") from None

    def _respond(self, req: CompletionRequest, checked: _Checked, texts: list[str], finished: list,
                 elapsed: float) -> dict:
        """Grade each answer, count it, and build the body: a plain dict in the CompletionResponse shape (the
        tests validate it against the model), as validating and serializing a pydantic object costs per request."""
        entry, expected = checked.entry, checked.expected
        choices, grades = [], []
        for i, done in enumerate(finished):
            graded = None if expected is None else grade(done.text, expected[i])
            correct = None if graded is None else graded.exact
            result = "ungraded" if correct is None else "correct" if correct else "incorrect"
            # each prompt of a batch is one sample of the metrics
            self.metrics.completed(entry.run, entry.variant, checked.shift, result, elapsed, len(done.token_ids),
                                   None if graded is None else (graded.digit_correct, graded.digit_total))
            choices.append({"index": i, "text": texts[i] + done.text if req.echo else done.text,
                            "finish_reason": done.finish_reason, "logprobs": None, "correct": correct})
            grades.append(correct)
        prompt_tokens = sum(d.prompt_tokens for d in finished)
        completion_tokens = sum(len(d.token_ids) for d in finished)
        return {
            "id": f"cmpl-{self._id_prefix}{next(self._ids):012x}", "object": "text_completion",
            "created": int(time.time()), "model": req.model, "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
            "variant": entry.variant, "shift": checked.shift, "correct": grades[0] if len(grades) == 1 else None}
