"""`make gpu-check`'s runs-per-GPU section: its figures from done.json / loss.json, and its dry run."""

import json

import pytest


def _write_run(sweep, index, start, end, losses, steps=100, items=6400, every=10):
    run = sweep / f"r{index:02d}-lr0.0003-s{steps}-id"
    run.mkdir(parents=True)
    config = {"index": index, "seed": index, "steps": steps, "batch_size": 64, "train_items": items}
    (run / "done.json").write_text(json.dumps({"config": config, "train_seconds": end - start,
                                               "train_started_at": start, "train_ended_at": end}))
    (run / "loss.json").write_text(json.dumps({"step": [every * (k + 1) for k in range(len(losses))],
                                               "loss": losses}))


def test_runs_per_gpu_figures_from_the_run_files(tmp_path):
    """Aggregate tokens/s over the span of the runs, its ratio to the solo run, the best N, and a loss curve
    compared with its solo curve against the noise between two solo repeats."""
    from bench.gpu_check import format_runs_per_gpu, read_runs, summarize

    curve = [4.0, 3.0, 2.0]
    _write_run(tmp_path / "solo", 0, 100.0, 110.0, curve)
    _write_run(tmp_path / "again", 0, 200.0, 210.0, [4.0, 3.0, 2.002])  # noise floor 1e-3
    _write_run(tmp_path / "again", 1, 210.0, 220.0, [4.1, 3.1, 2.1])
    _write_run(tmp_path / "n4", 0, 300.0, 320.0, [4.0, 3.0, 2.0])
    _write_run(tmp_path / "n4", 1, 301.0, 321.0, [4.1, 3.1, 2.3])  # 0.2 / 2.1 off its solo curve
    for i in (2, 3):
        _write_run(tmp_path / "n4", i, 300.5, 320.0, curve)
    (solo,), again = read_runs(tmp_path / "solo"), read_runs(tmp_path / "again")
    assert [r["config"]["index"] for r in again] == [0, 1]
    summary = summarize({4: read_runs(tmp_path / "n4")}, {0: solo, 1: again[1]}, again[0], per_item=10.0, gpus=1,
                        loss_every=10)
    one, four = summary["by_n"][1], summary["by_n"][4]
    assert one["tokens_per_s_per_gpu"] == pytest.approx(6400)  # 64000 tokens in 10 s
    assert four["span_s"] == pytest.approx(21) and four["tokens_per_s_per_gpu"] == pytest.approx(256000 / 21)
    assert four["x_single_run"] == pytest.approx(256000 / 21 / 6400) and four["ms_per_step"]["max"] == 200
    assert four["start_spread_s"] == pytest.approx(1)
    assert summary["best_n"] == 4 and summary["target_met"] is False  # 1.9x
    curves = summary["loss_curves"]
    assert curves["noise_floor"] == pytest.approx(1e-3) and curves["tolerance"] == pytest.approx(1e-2)
    assert set(curves["by_n"][4]) == {0, 1}  # only the runs that were trained alone too
    assert curves["by_n"][4][0]["max_rel"] == 0 and curves["by_n"][4][0]["within"]
    assert curves["by_n"][4][1]["max_rel"] == pytest.approx(0.2 / 2.1) and not curves["by_n"][4][1]["within"]
    assert not curves["all_within"]
    table = format_runs_per_gpu(summary)
    assert "best N: 4" in table and "NOT met" in table and "| NO |" in table
    json.dumps(summary)  # what the section writes


def test_curves_that_log_different_steps_are_not_within(tmp_path):
    from bench.gpu_check import compare_curves, curve_gap

    a, b = {"step": [10, 20], "loss": [2.0, 1.0]}, {"step": [10], "loss": [2.0]}
    floor = curve_gap(a, a)
    assert floor["max_rel"] == 0
    result = compare_curves({2: [{"config": {"index": 0}, "curve": b}]}, {0: {"curve": a}}, floor)
    assert result["by_n"][2][0]["steps_differ"] and not result["all_within"]


@pytest.mark.slow
def test_gpu_check_dry_run(tmp_path, capsys):
    """The whole script on the CPU (fp32, 4 steps; runs per GPU 1 and 2 as 1 and 2 worker processes)."""
    from bench.gpu_check import main

    assert main(["--dry-run", "--out", str(tmp_path)]) == 0
    written = json.loads((tmp_path / "runs-per-gpu.json").read_text())
    assert set(written["by_n"]) == {"1", "2"} and written["loss_curves"]["all_within"]
    assert set(written["loss_curves"]["by_n"]["2"]) == {"0", "1"}
    assert "best N:" in capsys.readouterr().out
