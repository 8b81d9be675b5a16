"""Fixtures shared across stages: a tiny sweep exported to every variant (export, serve, bench)."""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.train.conftest import REPO, write_tiny_sweep

ALL_BUT_GPU = "onnx-fp32,ort-int8,ort-int8-all,ort-int4,ort-int2,sim-w3,bnb-int8,bnb-nf4,trt-fp16"


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
    """A 6-run tiny sweep (enough runs for a partial correlation) exported to onnx-fp32 and ort-int8."""
    tmp = tmp_path_factory.mktemp("population")
    grid = '{"lr": [5.0e-4, 1.0e-3, 2.0e-3], "steps": [6], "mixture": {"id": {"id": 1.0}}, "repeat": 2}'
    res = subprocess.run(write_tiny_sweep(tmp, name="pop", grid=grid, workers=2), cwd=REPO, capture_output=True,
                         text=True, timeout=900)
    assert res.returncode == 0, res.stderr
    sweep = tmp / "runs" / "pop"
    res = subprocess.run([sys.executable, "-m", "export", f"--sweep={sweep}", "--variants=onnx-fp32,ort-int8",
                          "--workers=2"], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout + res.stderr
    return {"sweep": sweep, "data": next((tmp / "data").iterdir()), "tmp": tmp}
