"""`python -m export evaluate`: a trained, exported sweep graded on a shift added afterwards."""

import shutil
import subprocess
import sys

import pytest
import yaml

from common.accuracy_table import read_table
from tasks.dataset import sweep_splits
from tests.conftest import REPO

ADDED = "base9"  # dropped from a copy of the tiny sweep, then added back by `export evaluate`


def _evaluate(sweep, task_config, *args):
    return subprocess.run([sys.executable, "-m", "export", "evaluate", f"--sweep={sweep}",
                           f"--task_config={task_config}", "--workers=1", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def evaluated(exported, tmp_path_factory):
    """A copy of the exported tiny sweep as if its task had never had ``ADDED`` (no split file, no rows, not
    in sweep.yaml), then given it back by `python -m export evaluate`."""
    tmp = tmp_path_factory.mktemp("evaluate")
    sweep, data = tmp / "runs" / "tiny", tmp / "data"
    shutil.copytree(exported["sweep"], sweep)
    meta = yaml.safe_load((sweep / "sweep.yaml").read_text())
    shutil.copytree(meta["data"], data)
    (data / f"{ADDED}.jsonl").unlink()
    meta["data"] = str(data)
    del meta["task"]["shifts"][ADDED]
    (sweep / "sweep.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    table = (sweep / "accuracy.csv").read_text().splitlines(keepends=True)
    (sweep / "accuracy.csv").write_text("".join(line for line in table if f",{ADDED}," not in line))
    assert ADDED not in sweep_splits(sweep)
    res = _evaluate(sweep, REPO / "tasks/configs/default.yaml")
    assert res.returncode == 0, res.stdout + res.stderr
    return sweep


def _rows(path, split):
    return {(r["run"], r["step"], r["variant"]): r for r in read_table(path) if r["split"] == split}


def test_an_added_shift_gets_the_rows_a_sweep_with_it_from_the_start_has(exported, evaluated):
    """Every (run, step, variant) of the table, torch-fp32 at each checkpoint and every exported variant,
    graded on the added split: exactly the rows the original sweep (which had the shift all along) holds,
    and a second run adds nothing."""
    sweep = evaluated
    assert ADDED in sweep_splits(sweep)  # what the server, replay and the telemetry now accept
    want = _rows(exported["sweep"] / "accuracy.csv", ADDED)
    got = _rows(sweep / "accuracy.csv", ADDED)
    assert len(want) > 10 and got == want
    items = (sweep / "extra-splits" / f"{ADDED}.jsonl").read_text()
    assert items == (next(exported["data"].iterdir()) / f"{ADDED}.jsonl").read_text()

    table = (sweep / "accuracy.csv").read_text()
    res = _evaluate(sweep, REPO / "tasks/configs/default.yaml")
    assert res.returncode == 0 and "0 row(s) written" in res.stdout, res.stdout + res.stderr
    assert (sweep / "accuracy.csv").read_text() == table


def test_replay_of_the_sweep_sends_the_added_split_and_served_equals_offline(evaluated, tmp_path):
    """`serve replay --sweep` sends the added split too; what the server graded equals the offline rows."""
    from tests.serve.conftest import running, serve_config

    out = tmp_path / "served.csv"
    with running(serve_config(evaluated)) as (url, _, _):
        res = subprocess.run([sys.executable, "-m", "serve", "replay", f"--url={url}", f"--sweep={evaluated}",
                              "--eval-items=40", f"--out={out}"], cwd=REPO, capture_output=True, text=True,
                             timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    served = _rows(out, ADDED)
    offline = _rows(evaluated / "accuracy.csv", ADDED)
    assert served and all(served[k]["n"] == offline[k]["n"] == 40 and served[k]["correct"] == offline[k]["correct"]
                          and served[k]["digit_correct"] == offline[k]["digit_correct"] for k in served)


def test_a_preset_that_changes_the_in_domain_task_or_a_shift_is_refused(exported, tmp_path):
    sweep = tmp_path / "runs" / "tiny"
    shutil.copytree(exported["sweep"], sweep)
    table = (sweep / "accuracy.csv").read_text()
    other_seed = tmp_path / "seed.yaml"
    other_seed.write_text("seed: 1\nshifts:\n  base7: {base: 7}\n")
    res = _evaluate(sweep, other_seed)
    assert res.returncode == 2 and "differs from the sweep's task in seed (1 vs the sweep's 0)" in res.stderr
    redefined = tmp_path / "length.yaml"
    redefined.write_text("shifts:\n  length: {digits: [5, 5]}\n")
    res = _evaluate(sweep, redefined)
    assert res.returncode == 2 and "split 'length' is already in the sweep with other generator parameters" \
        in res.stderr, res.stderr
    assert (sweep / "accuracy.csv").read_text() == table and not (sweep / "extra-splits.json").exists()


def test_the_server_takes_new_shift_labels_from_a_task_preset(exported, tmp_path):
    """`python -m serve --task_config`: a shift the sweep never had is a label a request may carry, graded
    and counted like the sweep's own; without the preset it is refused."""
    import httpx

    from tests.serve.conftest import running, sample, serve_config

    preset = tmp_path / "more.yaml"
    preset.write_text("shifts:\n  base7: {base: 7, description: base 7}\n")
    run = sorted(p.name for p in exported["sweep"].iterdir() if p.is_dir())[0]
    body = {"model": f"{run}/onnx-fp32", "prompt": "b7|012+034=", "max_tokens": 6, "shift": "base7",
            "expected": "6400"}
    with running(serve_config(exported["sweep"])) as (url, _, _):
        res = httpx.post(f"{url}/v1/completions", json=body, timeout=30)
        assert res.status_code == 400 and "unknown shift 'base7'" in res.json()["error"]["message"]
    with running(serve_config(exported["sweep"], task_config=str(preset))) as (url, _, registry):
        res = httpx.post(f"{url}/v1/completions", json=body, timeout=30)
        assert res.status_code == 200 and res.json()["shift"] == "base7", res.text
        result = "correct" if res.json()["correct"] else "incorrect"
        assert sample(registry, "fracture_requests_total", model=run, variant="onnx-fp32", shift="base7",
                      result=result) == 1
