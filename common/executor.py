"""Where a population's jobs run: worker processes on this machine, or tasks on a Ray cluster.

Both executors take the same jobs and call back the same way, so the sweep, the export and
``export evaluate`` are written once (docs/design.md, "Executors"):

- ``local``: ``workers`` spawned processes that die with the sweep (``common.workers``); one
  worker means in this process. On CUDA each worker is pinned to one GPU, so
  ``runs_per_gpu × GPUs`` runs share the GPUs.
- ``ray``: one Ray task per job, with its resources declared (CPUs, and a fraction of a GPU
  so that several runs share one), retried when its worker dies. A retried run resumes from
  its last whole checkpoint (``train.finetune.resume_point``). ``ray_address`` (or
  ``$RAY_ADDRESS``) joins an existing cluster; without one a local Ray is started and stopped
  here. Every node must see the sweep folder at the same path (a shared filesystem): jobs
  write their results where the local executor would, and the driver reads them from there.

A job reports progress with ``report(...)``; whatever it reports reaches ``on_message`` in the
driver, whichever executor runs it.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from common import workers as local_workers

EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class Resources:
    """What one job holds while it runs (Ray's scheduling unit; the local executor runs ``workers`` at once)."""

    cpus: float = 1.0
    gpus: float = 0.0  # a fraction shares a GPU: 0.25 = four jobs per GPU


def report(*message: Any) -> None:
    """From inside a job: pass ``message`` to the driver's ``on_message`` (dropped where there is none)."""
    local_workers.report(*message)


class Executor:
    """Runs ``fn(*job)`` for every job (a tuple of arguments) and calls ``on_done(i, result)`` in the driver as
    each finishes. A job that raises stops the rest (the jobs not yet started are cancelled) and its error is
    raised here."""

    name = "local"

    def gpus(self) -> int:
        """GPUs the jobs can use (on this machine, or in the whole Ray cluster)."""
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0

    def map(self, fn: Callable, jobs: Sequence, on_done: Callable[[int, Any], None], *, workers: int = 1,
            resources: Resources = Resources(), on_message: Callable[..., None] | None = None) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class LocalExecutor(Executor):
    def map(self, fn, jobs, on_done, *, workers=1, resources=Resources(), on_message=None):
        if workers == 1:
            with local_workers.reporting_to((lambda m: on_message(*m)) if on_message else None):
                for i, job in enumerate(jobs):
                    on_done(i, fn(*job))
            return
        gpus = self.gpus() if resources.gpus > 0 else 0
        local_workers.run_in_workers(fn, jobs, workers, on_done, on_message=on_message, gpus=gpus)


def _ray_job(fn: Callable, job: tuple, inbox) -> Any:
    """A Ray task: ``fn(*job)``, with ``report`` sending to the driver's inbox. The send does not wait: a task
    blocked in ``ray.get`` lends its CPUs to another task (Ray's rule), which ran three runs on two cores."""
    with local_workers.reporting_to((lambda message: inbox.put.remote(message)) if inbox is not None else None):
        return fn(*job)


class _Inbox:
    """A Ray actor holding the messages tasks report until the driver collects them."""

    def __init__(self):
        self.messages: list = []

    def put(self, message) -> None:
        self.messages.append(message)

    def take(self) -> list:
        out, self.messages = self.messages, []
        return out


class RayExecutor(Executor):
    """One Ray task per job; joins ``address`` (or ``$RAY_ADDRESS``), else starts a local Ray for its own life."""

    name = "ray"

    def __init__(self, address: str = "", max_retries: int = 3, num_cpus: int | None = None):
        import ray

        self.max_retries = max_retries
        self.started_here = False
        if not ray.is_initialized():
            address = address or os.environ.get("RAY_ADDRESS") or None
            local = {} if address else {"num_cpus": num_cpus, "include_dashboard": False}
            ray.init(address=address, log_to_driver=True, **local)
            self.started_here = True

    def gpus(self) -> int:
        import ray

        return int(ray.cluster_resources().get("GPU", 0))

    def map(self, fn, jobs, on_done, *, workers=1, resources=Resources(), on_message=None):
        import ray

        inbox = ray.remote(num_cpus=0)(_Inbox).remote() if on_message else None
        task = ray.remote(_ray_job).options(num_cpus=resources.cpus, num_gpus=resources.gpus,
                                            max_retries=self.max_retries, retry_exceptions=False)
        pending = {task.remote(fn, job, inbox): i for i, job in enumerate(jobs)}
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
                for message in ray.get(inbox.take.remote()) if inbox is not None else ():
                    on_message(*message)
                for ref in ready:
                    on_done(pending.pop(ref), ray.get(ref))
            for message in ray.get(inbox.take.remote()) if inbox is not None else ():
                on_message(*message)  # what arrived with the last results
        except BaseException:
            for ref in pending:
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)
            raise
        finally:
            if inbox is not None:
                with contextlib.suppress(Exception):
                    ray.kill(inbox)

    def close(self) -> None:
        import ray

        if self.started_here:
            ray.shutdown()


def check_executor_settings(executor: str, max_retries: int) -> list[str]:
    """What is wrong with a config's executor fields (for its ``__post_init__``)."""
    bad = [] if executor in EXECUTORS else [f"executor={executor!r} ({' or '.join(EXECUTORS)})"]
    return bad + ([f"max_retries={max_retries}"] if max_retries < 0 else [])


def open_executor(kind: str, ray_address: str = "", max_retries: int = 3) -> Executor:
    """The executor named ``kind`` ("local" or "ray"); use it as a context manager."""
    if kind == "local":
        return LocalExecutor()
    if kind == "ray":
        return RayExecutor(ray_address, max_retries)
    raise ValueError(f"executor must be one of {', '.join(EXECUTORS)}, got {kind!r}")


class Throttle:
    """True at most every ``seconds`` (and always for ``force``): progress from a job without flooding the driver."""

    def __init__(self, seconds: float = 0.5):
        self.seconds, self.last = seconds, 0.0

    def __call__(self, force: bool = False) -> bool:
        now = time.monotonic()
        if force or now - self.last >= self.seconds:
            self.last = now
            return True
        return False
