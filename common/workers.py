"""Worker processes that never outlive the job that started them.

The sweep and the export run their work in ``ProcessPoolExecutor`` pools. When the parent is
killed (kill -9, an OOM kill, a closed terminal), a pool worker would otherwise go on: an
export worker kept publishing variants that a resumed export was rebuilding, then hung on
its dead parent forever. Every pool worker therefore starts with ``die_with_parent``: on
Linux the kernel sends it SIGKILL when its parent dies (``PR_SET_PDEATHSIG``); elsewhere the
stage's own checks between steps (``train.finetune.OrphanGuard``) stop it.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import queue as queue_module
import signal
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int | None = None) -> None:
    """Ask the kernel to SIGKILL this process when its parent exits (Linux; a no-op elsewhere). With
    ``parent_pid``, exit at once if that parent is already gone (it died before the request was made)."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # no prctl: the stage's own orphan checks remain
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)


_sink: Callable[..., None] | None = None  # where report() sends: a queue's put, or the driver's callback


def init_worker(parent_pid: int, queue=None, slots=None, gpu_ids: tuple[str, ...] = ()) -> None:
    """``ProcessPoolExecutor`` initializer: die with the parent, keep the progress queue (a queue can reach a
    worker only when it starts, so it is passed here rather than with each task), and with ``gpu_ids`` take
    the next worker slot's GPU (worker k uses GPU k mod len(gpu_ids), before anything initialises CUDA)."""
    global _sink
    die_with_parent(parent_pid)
    _sink = queue.put if queue is not None else None
    if gpu_ids:
        with slots.get_lock():
            slot = slots.value
            slots.value += 1
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu_ids[slot % len(gpu_ids)]


def report(*message: Any) -> None:
    """Send ``message`` to whoever runs this job (a worker's queue, or the driver's callback); else drop it."""
    if _sink is not None:
        _sink(message)


@contextlib.contextmanager
def reporting_to(sink: Callable | None):
    """Within the block, ``report(*m)`` calls ``sink(m)`` (in-process jobs, Ray tasks)."""
    global _sink
    before, _sink = _sink, sink
    try:
        yield
    finally:
        _sink = before


def run_in_workers(fn: Callable, jobs: Sequence[tuple], workers: int, on_done: Callable[[int, Any], None],
                   on_message: Callable[..., None] | None = None, gpus: int = 0) -> None:
    """``fn(*jobs[i])`` in ``workers`` spawned processes that die with this one; ``on_done(i, result)`` here,
    as each finishes.

    ``on_message``, where given, receives what jobs ``report()`` (through a plain queue handed to
    each worker as it starts: no Manager process to outlive a killed parent). With ``gpus``, the
    workers are spread over that many GPUs (of those this process may see). A
    job that raises stops the pool: the jobs not yet started are cancelled, and its error is raised
    here; finished jobs have been passed to ``on_done`` already.
    """
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue() if on_message else None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    gpu_ids = tuple(visible.split(",") if visible else map(str, range(gpus)))[:gpus] if gpus else ()
    initargs = (os.getpid(), queue, ctx.Value("i", 0), gpu_ids)
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=init_worker, initargs=initargs) as pool:
        pending = {pool.submit(fn, *job): i for i, job in enumerate(jobs)}
        try:
            while pending:
                finished, _ = wait(pending, timeout=0.5 if queue else None, return_when=FIRST_COMPLETED)
                with contextlib.suppress(queue_module.Empty):
                    while queue is not None:
                        on_message(*queue.get_nowait())
                for fut in finished:
                    on_done(pending.pop(fut), fut.result())
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise
