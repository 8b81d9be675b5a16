"""Executors: the local worker pool and Ray run the same population to the same table.

Ray is real here: a local cluster started by the fixture (``ray.init(num_cpus=2)``, plus one
*logical* GPU so that fractional GPU requests can be scheduled and read back on this
GPU-less machine; every sweep here sets ``device=cpu``), stopped when the module ends.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from common.config import load_config
from common.executor import Resources, open_executor
from tests.train.conftest import REPO, write_tiny_sweep
from train.config import SweepConfig
from train.sweep import run_sweep

ray = pytest.importorskip("ray")

LONGER = "{lr: [1.0e-3], steps: [60], mixture: {id: {id: 1.0}}}"  # one run, checkpoints at 20, 40, 60


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def tiny(tmp_path: Path, **overrides) -> SweepConfig:
    return load_config(SweepConfig, REPO / "train/configs/tiny.yaml", {
        "out_root": str(tmp_path / "runs"), "data_root": str(tmp_path / "data"),
        "task_config": str(REPO / "tasks/configs/default.yaml"), "device": "cpu", **overrides})


def checkpoint_digests(sweep: Path) -> dict[str, str]:
    """Every checkpoint's weights, by sha256 (from its manifest, re-verified by the sweep)."""
    return {f"{p.parents[1].name}/{p.name}":
            json.loads((p / "manifest.json").read_text())["files"]["model.safetensors"]["sha256"]
            for p in sorted(sweep.glob("*/checkpoints/step-*"))}


def cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@pytest.fixture(scope="module")
def local_and_ray(tmp_path_factory, ray_cluster):
    """The tiny sweep twice: by the local executor (2 worker processes, through the CLI) and through Ray."""
    root = tmp_path_factory.mktemp("executors")
    local = subprocess.run(write_tiny_sweep(root / "local", workers=2), cwd=REPO, capture_output=True,
                           text=True, timeout=600)
    assert local.returncode == 0, local.stderr
    run_sweep(tiny(root / "ray", executor="ray", workers=2))
    return root / "local/runs/tiny", root / "ray/runs/tiny"


def test_ray_executor_gives_the_local_executors_table(local_and_ray):
    sweep_local, sweep_ray = local_and_ray
    assert (sweep_ray / "accuracy.csv").read_bytes() == (sweep_local / "accuracy.csv").read_bytes()
    assert checkpoint_digests(sweep_ray) == checkpoint_digests(sweep_local)


def test_the_export_through_ray_gives_the_local_exports_rows(local_and_ray):
    """Each checkpoint's variants built and graded in a Ray task: the same rows as the local export's."""
    from export.config import ExportConfig
    from export.pipeline import export_sweep

    sweep_local, sweep_ray = local_and_ray
    variants = "onnx-fp32,ort-int4"
    local = subprocess.run([sys.executable, "-m", "export", f"--sweep={sweep_local}", f"--variants={variants}",
                            "--workers=2"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert local.returncode == 0, local.stderr
    summary = export_sweep(ExportConfig(sweep=str(sweep_ray), variants=tuple(variants.split(",")), workers=2,
                                        executor="ray"))
    assert not summary["failed"] and summary["built"] == 4
    assert (sweep_ray / "accuracy.csv").read_bytes() == (sweep_local / "accuracy.csv").read_bytes()


def test_a_ray_worker_killed_mid_run_is_retried_and_resumes_to_the_same_table(tmp_path, ray_cluster):
    """kill -9 of the Ray worker training the run once its first checkpoint (and Trainer state) is whole:
    Ray retries the task, the run goes on from that checkpoint, and the table and every checkpoint equal
    an undisturbed run's."""
    cfg = tiny(tmp_path / "ray", executor="ray", grid=LONGER, max_retries=2)
    run_dir = tmp_path / "ray/runs/tiny"
    killed = []

    def kill_when_resumable():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not killed:
            if list(run_dir.glob("*/.trainer/checkpoint-*/fracture-resume.json")):
                for pid in os.listdir("/proc"):
                    if pid.isdigit() and cmdline(pid).startswith("ray::_ray_job"):
                        os.kill(int(pid), signal.SIGKILL)
                        killed.append(int(pid))
            time.sleep(0.02)

    killer = threading.Thread(target=kill_when_resumable, daemon=True)
    killer.start()
    run_sweep(cfg)
    killer.join(timeout=5)
    assert killed, "the run finished before its worker could be killed"
    done = json.loads(next(run_dir.glob("*/done.json")).read_text())
    assert 0 < done["resumed_from_step"] < 60  # went on from a checkpoint, not from scratch
    assert done["evaluated_steps"] == [20, 40, 60]  # each checkpoint graded once, after the retry

    # one torch thread, as in the Ray task (workers=2 with one run to do: in this process, threads_per_worker)
    undisturbed = tiny(tmp_path / "ref", grid=LONGER, workers=2, threads_per_worker=1)
    run_sweep(undisturbed)
    ref_dir = tmp_path / "ref/runs/tiny"
    assert (run_dir / "accuracy.csv").read_bytes() == (ref_dir / "accuracy.csv").read_bytes()
    assert checkpoint_digests(run_dir) == checkpoint_digests(ref_dir)
    loss, ref_loss = (json.loads(next(d.glob("*/loss.json")).read_text()) for d in (run_dir, ref_dir))
    assert loss == ref_loss and loss["step"] == [10, 20, 30, 40, 50, 60]


def _assigned(_job):
    return ray.get_runtime_context().get_assigned_resources()


def test_ray_tasks_declare_a_fraction_of_a_gpu_when_runs_share_one(ray_cluster):
    """runs_per_gpu=4 makes each run's task ask for 0.25 GPU (read back from inside the task)."""
    from train.sweep import run_resources

    cfg = load_config(SweepConfig, overrides={"runs_per_gpu": "4", "executor": "ray"})
    resources = run_resources(cfg, "cuda")
    assert resources == Resources(cpus=1, gpus=0.25)
    got = []
    with open_executor("ray") as executor:
        executor.map(_assigned, [(i,) for i in range(4)], lambda i, r: got.append(r), resources=resources)
    assert got == [{"CPU": 1.0, "GPU": 0.25}] * 4
    assert run_resources(load_config(SweepConfig, overrides={"threads_per_worker": "2"}), "cpu") == Resources(cpus=2)


def _chatty(i):
    from common.executor import report

    started = time.time()
    for step in range(20):
        report(i, step)
        time.sleep(0.02)
    return started, time.time()


def test_ray_tasks_that_report_progress_never_exceed_their_cpus(ray_cluster):
    """Sending progress must not block a task: Ray lends a blocked task's CPUs to another one, which ran three
    runs at once on the two CPUs (and the demo 30% slower). Six reporting tasks of 1 CPU on 2 CPUs: never
    more than two at once, and every message arrives."""
    spans, messages = [], []
    with open_executor("ray") as executor:
        executor.map(_chatty, [(i,) for i in range(6)], lambda i, span: spans.append(span),
                     resources=Resources(cpus=1), on_message=lambda *m: messages.append(m))
    events = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
    running = [sum(k for _, k in events[:n + 1]) for n in range(len(events))]
    assert max(running) <= 2
    assert len(messages) >= 6 * 19  # a task's last messages may trail its result by a moment


def test_a_local_sweep_killed_mid_run_resumes_from_its_last_checkpoint(tmp_path):
    """The same resume without Ray: kill -9 the sweep (one run, in its process) after its first checkpoint."""
    args = write_tiny_sweep(tmp_path, grid=LONGER, workers=1)
    sweep = tmp_path / "runs" / "tiny"
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None and \
            not list(sweep.glob("*/.trainer/checkpoint-*/fracture-resume.json")):
        time.sleep(0.02)
    assert proc.poll() is None, "the sweep ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    res = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    done = json.loads(next(sweep.glob("*/done.json")).read_text())
    assert 0 < done["resumed_from_step"] < 60

    ref = tmp_path / "ref"
    assert subprocess.run(write_tiny_sweep(ref, grid=LONGER, workers=1), cwd=REPO, capture_output=True,
                          timeout=600).returncode == 0
    assert (sweep / "accuracy.csv").read_bytes() == (ref / "runs/tiny/accuracy.csv").read_bytes()
    assert checkpoint_digests(sweep) == checkpoint_digests(ref / "runs/tiny")


def visible_gpu(_job):
    time.sleep(0.5)  # every worker takes a job
    return os.environ.get("CUDA_VISIBLE_DEVICES")


PINNING = """
from common.workers import run_in_workers
from tests.train.test_executor import visible_gpu
got = []
run_in_workers(visible_gpu, [(i,) for i in range(4)], 4, lambda i, r: got.append(r), gpus=2)
print(sorted(got))
"""


def test_local_workers_are_spread_over_the_gpus():
    """With 2 GPUs and 4 workers, worker k is pinned to GPU k mod 2 before anything touches CUDA (no GPU is
    needed to check the pinning itself). In a process of its own: a worker pool starts multiprocessing's
    resource tracker, which would outlive the test in this one."""
    res = subprocess.run([sys.executable, "-c", PINNING], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "['0', '0', '1', '1']"


def test_several_runs_at_once_equal_one_at_a_time(tmp_path):
    """Two runs trained at once (2 worker processes, 1 thread each) and one after the other in this process
    (torch's own thread count): every checkpoint of each run is within 1e-3 of its one-at-a-time weights,
    the size of one optimizer step (lr 1e-3). Only the order in which torch's CPU kernels sum differs with
    the thread count (measured here: at most 7e-5); the same thread count gives the same bytes (the Ray
    tests above)."""
    from safetensors.torch import load_file

    run_sweep(tiny(tmp_path / "one", workers=1))
    res = subprocess.run(write_tiny_sweep(tmp_path / "two", workers=2), cwd=REPO, capture_output=True, text=True,
                         timeout=600)  # a process of its own: see test_local_workers_are_spread_over_the_gpus
    assert res.returncode == 0, res.stderr
    one, two = tmp_path / "one/runs/tiny", tmp_path / "two/runs/tiny"
    checkpoints = sorted(one.glob("*/checkpoints/step-*"))
    assert len(checkpoints) == 6
    for ckpt in checkpoints:
        a = load_file(ckpt / "model.safetensors")
        b = load_file(two / ckpt.relative_to(one) / "model.safetensors")
        assert a.keys() == b.keys()
        assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-3, ckpt


@pytest.mark.parametrize("override, message", [
    ("--executor=slurm", "executor='slurm' (local or ray)"),
    ("--runs_per_gpu=0", "runs_per_gpu=0"),
    ("--max_retries=-1", "max_retries=-1"),
])
def test_executor_settings_are_checked_before_anything_is_written(tmp_path, override, message):
    res = subprocess.run([*write_tiny_sweep(tmp_path), override], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 2 and message in res.stderr
    assert not (tmp_path / "runs").exists()


def test_the_gpu_path_needs_a_gpu():
    """What only a GPU can show (several runs sharing one) is measured by `make gpu-check`."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU here: runs_per_gpu on a real GPU is measured by `make gpu-check`")
    from train.sweep import resolve_hardware

    device, _, _ = resolve_hardware(load_config(SweepConfig), torch.cuda.device_count())
    assert device == "cuda"
