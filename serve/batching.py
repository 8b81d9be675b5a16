"""Dynamic batching: concurrent requests for the same model are decoded together.

Each model has a queue and a worker task. The worker takes the first waiting request,
waits up to ``max_wait_ms`` for more (or until ``max_batch_size``), and decodes the
batch in a thread (ONNX Runtime releases the GIL), so the event loop keeps accepting
requests meanwhile. A batch decodes to the largest ``max_tokens`` among its requests;
each request's tokens are then cut to its own ``max_tokens`` and stop strings. Greedy
decoding is causal and rows are independent under left padding, so the answer is the
one the request would get alone (tests/serve/test_batching.py checks it).

Admission is bounded: beyond ``queue_size`` requests waiting or decoding, ``submit``
raises ``Overloaded`` at once (the app answers 503 with Retry-After). ``submit_many`` admits the
prompts of one request together (each counts as one request), all or none.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from export.runtime import Completion, OnnxCausalLM


class Overloaded(RuntimeError):
    pass


@dataclass
class Job:
    runner: OnnxCausalLM  # the model's session, fetched by the caller (who needed it to tokenize)
    prompt_ids: list[int]
    max_tokens: int
    stop: list[str]
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


class Batcher:
    def __init__(self, max_batch_size: int, max_wait_ms: float, queue_size: int, workers: int,
                 on_batch: Callable[[str, int], None] | None = None):
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000
        self.queue_size = queue_size
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode")
        self.on_batch = on_batch
        self.pending = 0  # requests admitted and not yet answered
        self._queues: dict[str, asyncio.Queue] = {}
        self._workers: dict[str, asyncio.Task] = {}

    async def submit(self, model_id: str, job: Job) -> Completion:
        return (await self.submit_many(model_id, [job]))[0]

    async def submit_many(self, model_id: str, jobs: list[Job]) -> list[Completion]:
        """The completions of ``jobs`` (one request's prompts), in order. Admitted all together or not at all:
        a batch that does not fit in the queue raises ``Overloaded`` before any of it is queued."""
        if self.pending + len(jobs) > self.queue_size:
            raise Overloaded(f"{self.pending} requests are waiting (queue_size {self.queue_size})")
        self.pending += len(jobs)
        try:
            queue = self._queues.get(model_id)
            if queue is None:
                queue = self._queues[model_id] = asyncio.Queue()
                self._workers[model_id] = asyncio.create_task(self._work(model_id, queue))
            for job in jobs:
                queue.put_nowait(job)
            if len(jobs) == 1:
                return [await jobs[0].future]
            try:
                return list(await asyncio.gather(*(j.future for j in jobs)))
            finally:  # after a failure the others are not waited for: those still queued are cancelled (the
                # worker skips them), the errors of those already answered are marked as seen
                for j in jobs:
                    if not j.future.cancel() and not j.future.cancelled():
                        j.future.exception()
        finally:
            self.pending -= len(jobs)

    async def _work(self, model_id: str, queue: asyncio.Queue) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await queue.get()]
            with contextlib.suppress(TimeoutError):
                # one deadline for the whole wait, not one per item (on Python 3.11, asyncio.wait_for makes a
                # task for each); a get() cancelled by the deadline leaves its item in the queue for the next batch
                async with asyncio.timeout_at(loop.time() + self.max_wait):
                    while len(batch) < self.max_batch_size:
                        batch.append(queue.get_nowait() if not queue.empty() else await queue.get())
            batch = [j for j in batch if not j.future.done()]  # timed out or cancelled while waiting
            if not batch:
                continue
            try:
                runner = batch[-1].runner  # the newest: after a reload, the live session
                ids = [j.prompt_ids for j in batch]
                longest = max(j.max_tokens for j in batch)
                stops = sorted({s for j in batch for s in j.stop})
                # stop strings end a row early only when every request of the batch shares them
                shared = stops if all(sorted(set(j.stop)) == stops for j in batch) else None
                generated = await loop.run_in_executor(self.executor, runner.generate_ids, ids, longest, shared)
                if self.on_batch:
                    self.on_batch(model_id, len(batch))
                for job, gen in zip(batch, generated):
                    if not job.future.done():
                        # each request's own max_tokens and stop strings
                        job.future.set_result(runner.finish(len(job.prompt_ids), gen[:job.max_tokens], job.stop))
            except Exception as exc:  # noqa: BLE001 - answer the batch with the error, keep serving
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(exc)

    async def close(self) -> None:
        for task in self._workers.values():
            task.cancel()
        for task in self._workers.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.executor.shutdown(wait=False, cancel_futures=True)
