"""The sweep end to end on the embedded base: tables, signal check, resume, corruption."""

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tests.train.conftest import REPO, write_tiny_sweep


def read_csv(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux /proc)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            kids = [int(c) for c in (task / "children").read_text().split()] if (task / "children").exists() else []
            out += kids
            todo += kids
    return out


def alive(pid: int) -> bool:
    """Running (a zombie awaiting its reaper counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def run(args, **kw):
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600, **kw)


def test_tiny_sweep_end_to_end_then_rerun_is_a_no_op(tmp_path):
    res = run(write_tiny_sweep(tmp_path))
    assert res.returncode == 0, res.stderr
    sweep = tmp_path / "runs" / "tiny"
    rows = read_csv(sweep / "accuracy.csv")
    assert list(rows[0]) == ["run", "step", "variant", "split", "n", "correct", "digit_correct", "digit_total"]
    runs = {r["run"] for r in rows}
    assert len(runs) == 2 and {r["variant"] for r in rows} == {"torch-fp32"}
    assert {r["split"] for r in rows} == {"id", "length", "operator_order", "base", "base9"}
    assert {r["step"] for r in rows} == {"2", "4", "6"}
    assert len(rows) == 2 * 3 * 5 and all(r["n"] == "40" for r in rows)
    assert all(0 <= int(r["correct"]) <= 40 and int(r["digit_total"]) >= 40 for r in rows)

    signal_json = json.loads((sweep / "signal.json").read_text())
    assert set(signal_json["splits"]) == {"id", "length", "operator_order", "base", "base9"}
    for s in signal_json["splits"].values():
        assert {"mean", "sd_across_runs", "binomial_se", "share_at_0", "share_at_1", "has_signal"} <= set(s)
    assert "sd/SE" in res.stdout and "operator_order" in res.stdout  # the signal table is printed

    for run_id in runs:
        cfg = json.loads((sweep / run_id / "config.json").read_text())
        assert cfg["run_id"] == run_id and cfg["checkpoint_steps"] == [2, 4, 6]
        ckpt = sweep / run_id / "checkpoints" / "step-6"
        files = {p.name for p in ckpt.iterdir()}
        assert {"config.json", "model.safetensors", "tokenizer.json", "manifest.json"} <= files
    resolved = yaml.safe_load((sweep / "sweep.yaml").read_text())
    assert resolved["config"]["name"] == "tiny" and len(resolved["runs"]) == 2

    before = (sweep / "accuracy.csv").read_text()
    res = run(write_tiny_sweep(tmp_path))
    assert res.returncode == 0 and "(2 already done)" in res.stdout
    assert (sweep / "accuracy.csv").read_text() == before  # idempotent: no duplicated rows


def test_corrupt_checkpoint_is_detected_and_its_run_redone(tmp_path):
    assert run(write_tiny_sweep(tmp_path)).returncode == 0
    sweep = tmp_path / "runs" / "tiny"
    victim = sorted(p for p in sweep.iterdir() if p.is_dir())[0]
    weights = victim / "checkpoints" / "step-4" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10:] = b"\x00" * 10
    weights.write_bytes(bytes(data))
    res = run(write_tiny_sweep(tmp_path))
    assert res.returncode == 0, res.stderr
    assert f"redoing {victim.name}" in res.stderr and "sha256" in res.stderr
    assert "(1 already done)" in res.stdout
    assert len(read_csv(sweep / "accuracy.csv")) == 30


def test_killed_worker_pool_leaves_nothing_half_done(tmp_path):
    """SIGKILL the sweep while its two worker processes train: the orphans stop, the rerun completes."""
    args = write_tiny_sweep(tmp_path, workers=2)
    sweep = tmp_path / "runs" / "tiny"
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None and not list(sweep.glob("*/checkpoints/step-*")):
        time.sleep(0.05)
    assert proc.poll() is None, "the sweep ended before it could be killed"
    children = descendants(proc.pid)
    assert len(children) >= 2  # the two pool workers (and multiprocessing's resource tracker)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(alive(p) for p in children):
        time.sleep(0.1)
    assert not [p for p in children if alive(p)], "worker processes outlived the killed sweep"
    res = run(args)
    assert res.returncode == 0, res.stderr
    rows = read_csv(sweep / "accuracy.csv")
    assert len(rows) == 30 and len({(r["run"], r["step"], r["split"]) for r in rows}) == 30


def test_killed_sweep_resumes_and_redoes_only_unfinished_runs(tmp_path):
    args = write_tiny_sweep(tmp_path, workers=1)
    sweep = tmp_path / "runs" / "tiny"
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    # Kill it while the second run is in progress: the first is finished, the second is not.
    while time.monotonic() < deadline and proc.poll() is None:
        finished = list(sweep.glob("*/done.json"))
        second = [p for p in sweep.glob("r01-*/checkpoints/step-*") if p.is_dir()]
        if finished and second:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the sweep ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "runs" / "tiny" / "accuracy.csv").exists()

    res = run(args)
    assert res.returncode == 0, res.stderr
    assert "(1 already done)" in res.stdout
    rows = read_csv(sweep / "accuracy.csv")
    assert len(rows) == 30 and len({(r["run"], r["step"], r["split"]) for r in rows}) == 30
    assert not list(sweep.glob("*/checkpoints/.*"))  # no temporary checkpoint left behind


def test_a_changed_config_does_not_overwrite_an_existing_sweep(tmp_path):
    """The check is made before anything is trained or written: a sweep.yaml from another config is enough
    (training a whole sweep first made this a 34 s test)."""
    folder = tmp_path / "runs" / "tiny"
    folder.mkdir(parents=True)
    other = "config:\n  name: tiny\n  batch_size: 8\n"
    (folder / "sweep.yaml").write_text(other)
    res = run(write_tiny_sweep(tmp_path))
    assert res.returncode == 2 and "different sweep config" in res.stderr
    assert (folder / "sweep.yaml").read_text() == other and sorted(p.name for p in folder.iterdir()) == \
        [".lock", "sweep.yaml"]


def test_a_sweep_name_that_is_a_path_is_refused_before_anything_is_written(tmp_path):
    """`--name ../../somewhere` would put the sweep outside out_root."""
    res = run(write_tiny_sweep(tmp_path, name="../../somewhere"))
    assert res.returncode == 2 and "single folder name" in res.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path.parent / "somewhere").exists()


def test_a_second_sweep_on_a_busy_folder_stops_and_names_the_holder(tmp_path):
    """Two sweeps on one folder used to train everything twice and crash each other's run folders."""
    from common.files import folder_lock

    with folder_lock(tmp_path / "runs" / "tiny", "a sweep (the test's)"):
        res = run(write_tiny_sweep(tmp_path))
        assert res.returncode == 2, res.stderr
        assert "in use by a sweep (the test's) (pid" in res.stderr
        assert not (tmp_path / "runs" / "tiny" / "sweep.yaml").exists()
    with folder_lock(tmp_path / "runs" / "tiny", "a sweep"):
        pass  # released with its holder


def test_malformed_yaml_is_one_line_with_file_line_and_column(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: tiny\ngrid:\n  lr: [1e-3\n  steps: [4]\n")
    for cmd in (["train", "sweep", "--config"], ["export", "--sweep", str(tmp_path), "--config"],
                ["serve", "--config"]):
        res = run([sys.executable, "-m", *cmd, str(bad)])
        assert res.returncode == 2, (cmd, res.stderr)
        assert f"{bad}:4:" in res.stderr and "invalid YAML" in res.stderr and "Traceback" not in res.stderr, cmd


def test_bad_run_settings_are_refused_before_anything_is_written_and_the_fix_is_accepted(tmp_path):
    """grid.steps <= 0 ended in an IndexError; an unknown mixture split was found after sweep.yaml was written,
    so the corrected config was then refused as "made by a different sweep config"."""
    for override, message in (("--grid={lr: [1e-3], steps: [0]}", "steps must be >= 1"),
                              ("--grid={lr: [-1e-3], steps: [4]}", "lr must be > 0"),
                              ("--grid={lr: [1e-3], steps: [4], mixture: {m: {nope: 1.0}}}", "unknown split")):
        res = run([*write_tiny_sweep(tmp_path), override])
        assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr, res.stderr
        assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()
