"""Fixtures shared across stages: a tiny sweep exported to every variant (export, serve, bench)."""

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.train.conftest import REPO, write_tiny_sweep

ALL_BUT_GPU = "onnx-fp32,ort-int8,ort-int8-all,ort-int4,ort-int4-all,ort-int2,sim-w3,bnb-int8,bnb-nf4,trt-fp16"


SESSION_MARK = "FRACTURE_TEST_SESSION"


def _marked_processes(mark: str) -> dict[int, str]:
    """{pid: command line} of the live processes whose environment carries this session's mark."""
    needle = f"{SESSION_MARK}={mark}".encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # gone meanwhile, or not ours to read
    return found


@pytest.fixture(scope="session", autouse=True)
def no_process_left_behind():
    """Every process the tests start (servers, sweeps and their worker pools, Prometheus, watchers) is gone
    when the suite ends. Each inherits a mark in its environment; any still alive 10 s after the last test
    is listed, killed, and fails the run (a killed sweep's Manager used to outlive `make test`)."""
    if not Path("/proc/self/environ").exists():
        yield  # no /proc to look in (not Linux)
        return
    mark = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    os.environ[SESSION_MARK] = mark
    yield
    deadline = time.monotonic() + 10
    left = _marked_processes(mark)
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = _marked_processes(mark)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not left, "processes left behind by the tests:\n" + "\n".join(f"{p}: {c}" for p, c in left.items())


def export_cli(sweep: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "export", f"--sweep={sweep}", "--workers=1", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=900)


def run_dirs(sweep: Path) -> list[Path]:
    return sorted(p for p in sweep.iterdir() if p.is_dir())


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """A tiny 2-run sweep on the embedded base, exported to every registered variant by the real CLI.

    trt-fp16 is asked for too: on a machine without TensorRT and a GPU it must be skipped
    with a message, not fail.
    """
    tmp = tmp_path_factory.mktemp("export")
    res = subprocess.run(write_tiny_sweep(tmp), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    sweep = tmp / "runs" / "tiny"
    res = export_cli(sweep, f"--variants={ALL_BUT_GPU}")
    assert res.returncode == 0, res.stdout + res.stderr
    return {"sweep": sweep, "stdout": res.stdout, "stderr": res.stderr, "data": tmp / "data"}


@pytest.fixture(scope="session")
def population(tmp_path_factory):
    """The small preset (6 drawn runs: the fewest the analysis accepts) exported to onnx-fp32 and ort-int8."""
    tmp = tmp_path_factory.mktemp("population")
    args = write_tiny_sweep(tmp, name="pop")
    args[args.index(str(REPO / "train/configs/tiny.yaml"))] = str(REPO / "train/configs/small.yaml")
    res = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr
    sweep = tmp / "runs" / "pop"
    res = subprocess.run([sys.executable, "-m", "export", f"--sweep={sweep}", "--variants=onnx-fp32,ort-int8",
                          "--workers=2"], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout + res.stderr
    return {"sweep": sweep, "data": next((tmp / "data").iterdir()), "tmp": tmp}
