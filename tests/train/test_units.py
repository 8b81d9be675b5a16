"""Checkpoint integrity, the accuracy table, the signal check, presets and fallbacks."""

import json
import math

import pytest

from common.accuracy_table import read_table, upsert_rows
from common.config import load_config
from train.base import build_char_tokenizer, detect_digit_format, embedded_model_config
from train.checkpoints import save_checkpoint, verify_checkpoint
from train.config import PretrainConfig, SweepConfig
from train.data import PadCollator, encode_items
from train.finetune import checkpoint_steps
from train.signal import signal_check
from train.sweep import expand_runs, resolve_hardware


@pytest.fixture(scope="module")
def tiny_model():
    from transformers import GPTNeoXForCausalLM

    tok = build_char_tokenizer()
    return GPTNeoXForCausalLM(embedded_model_config(len(tok), hidden=32, layers=1, heads=2, ffn=64)), tok


def test_checkpoint_roundtrip_and_corruption(tmp_path, tiny_model):
    model, tok = tiny_model
    ckpt = save_checkpoint(model, tok, tmp_path / "step-1", {"step": 1, "digit_format": "compact"})
    assert verify_checkpoint(ckpt) is None
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    (ckpt / "tokenizer.json").write_text("{}")
    assert "sha256" in verify_checkpoint(ckpt)
    (ckpt / "manifest.json").unlink()
    assert "partial" in verify_checkpoint(ckpt)
    assert "no manifest" in verify_checkpoint(tmp_path / "missing")


def test_char_tokenizer_is_one_token_per_character():
    tok = build_char_tokenizer()
    assert detect_digit_format(tok) == "compact"
    ids = tok.encode("b8|754+175=", add_special_tokens=False)
    assert len(ids) == 11 and tok.decode(ids) == "b8|754+175="


def test_encoded_items_mask_the_prompt():
    tok = build_char_tokenizer()
    (enc,) = encode_items([{"prompt": "12+34=", "answer": "64"}], tok, "compact")
    assert enc["labels"][:6] == [-100] * 6 and enc["labels"][6:] == enc["input_ids"][6:]
    assert enc["input_ids"][-1] == tok.eos_token_id
    batch = PadCollator(tok.pad_token_id)([enc, {"input_ids": [5], "labels": [5]}])
    assert batch["input_ids"].shape == (2, 9) and batch["attention_mask"][1].sum() == 1


def test_accuracy_table_upsert_replaces_rows(tmp_path):
    path = tmp_path / "accuracy.csv"
    row = {"run": "r0", "step": 5, "variant": "torch-fp32", "split": "id", "n": 10, "correct": 3}
    upsert_rows(path, [row])
    upsert_rows(path, [row | {"correct": 4}, row | {"split": "base"}])
    table = read_table(path)
    assert len(table) == 2 and {r["correct"] for r in table if r["split"] == "id"} == {4}


def test_signal_check_numbers():
    rows = []
    accs = {"id": [0.5, 0.5, 0.5, 0.5], "base": [0.2, 0.4, 0.6, 0.8], "length": [0.0, 0.0, 0.0, 0.01]}
    for split, values in accs.items():
        for i, a in enumerate(values):
            rows.append({"run": f"r{i}", "step": 10, "variant": "torch-fp32", "split": split, "n": 1000,
                         "correct": round(a * 1000), "digit_correct": 1, "digit_total": 2})
            rows.append({"run": f"r{i}", "step": 5, "variant": "torch-fp32", "split": split, "n": 1000,
                         "correct": 0})  # earlier checkpoints are not final: ignored
    check = signal_check(rows, measure="exact")
    assert math.isclose(check["base"]["mean"], 0.5)
    assert math.isclose(check["base"]["binomial_se"], math.sqrt(0.25 / 1000))
    assert check["base"]["has_signal"] and check["base"]["spread_over_se"] > 2
    assert not check["id"]["has_signal"] and check["id"]["sd_across_runs"] == 0
    assert not check["length"]["has_signal"] and check["length"]["share_at_0"] == 0.75
    digit = signal_check(rows, measure="digit")  # every run 1 of 2 digits right: no spread on this measure
    assert digit["base"]["mean"] == 0.5 and not digit["base"]["has_signal"] and digit["base"]["measure"] == "digit"
    assert math.isclose(digit["base"]["binomial_se"], math.sqrt(0.25 / 1000))  # SE over items, not digits


def test_checkpoint_steps_are_evenly_spaced_and_end_at_the_last_step():
    assert checkpoint_steps(150, 3) == [50, 100, 150]
    assert checkpoint_steps(2, 3) == [1, 2]


@pytest.mark.parametrize("preset", ["demo", "tiny", "small", "pythia70m"])
def test_sweep_presets_load_and_expand(preset):
    cfg = load_config(SweepConfig, f"train/configs/{preset}.yaml")
    runs = expand_runs(cfg, "cpu", "fp32", "hash")
    assert len({r.run_id for r in runs}) == len(runs) >= 1
    assert all(len(r.checkpoint_steps) >= min(cfg.checkpoints, r.steps) for r in runs)
    json.dumps([r.to_json() for r in runs])  # the resolved config must be saveable


def test_demo_population_is_a_sample_of_at_least_48_runs_without_eval_shifts_in_training():
    cfg = load_config(SweepConfig, "train/configs/demo.yaml")
    runs = expand_runs(cfg, "cpu", "fp32", "h")
    assert len(runs) >= 48 and all(len(r.checkpoint_steps) >= 2 for r in runs)
    assert len({r.lr for r in runs}) >= 10 and len({r.seed for r in runs}) == len(runs)
    assert all(r.mixture == {"id": 1.0} and r.drawn == ("lr", "steps") for r in runs)
    lo, hi = cfg.draws["lr"]["loguniform"]
    assert all(float(lo) <= r.lr <= float(hi) for r in runs)


@pytest.mark.parametrize("preset", ["demo", "study", "pythia70m", "tiny", "small"])
def test_no_default_preset_replays_an_eval_shift(preset):
    from train.sweep import replayed_shifts

    runs = expand_runs(load_config(SweepConfig, f"train/configs/{preset}.yaml"), "cpu", "fp32", "h")
    assert all(replayed_shifts(r.mixture) == [] for r in runs)


def test_the_small_preset_is_the_fewest_runs_the_analysis_accepts():
    """tiny.yaml's 2 runs are refused by the analysis; small.yaml is a sample it takes (the loop tests run on it:
    tests/conftest.py, population)."""
    from telemetry import stats

    runs = expand_runs(load_config(SweepConfig, "train/configs/small.yaml"), "cpu", "fp32", "h")
    assert len(runs) >= stats.MIN_RUNS and len({r.seed for r in runs}) == len(runs)
    assert len(expand_runs(load_config(SweepConfig, "train/configs/tiny.yaml"), "cpu", "fp32", "h")) < stats.MIN_RUNS


def test_draws_are_reproducible_and_adding_runs_keeps_the_earlier_ones():
    small = expand_runs(SweepConfig(runs=5), "cpu", "fp32", "h")
    large = expand_runs(SweepConfig(runs=12), "cpu", "fp32", "h")
    assert [r.lr for r in small] == [r.lr for r in large[:5]]
    assert expand_runs(SweepConfig(runs=5), "cpu", "fp32", "h") == small
    assert len({r.lr for r in large}) == 12


@pytest.mark.parametrize("draws, message", [
    ({"lr": {"loguniform": [0, 1]}}, "low > 0"), ({"lr": {"normal": [0, 1]}}, "unknown distribution"),
    ({"momentum": {"uniform": [0, 1]}}, "unknown setting"), ({"steps": {"int_uniform": [9, 3]}}, "low <= high"),
])
def test_bad_draws_are_refused(draws, message):
    with pytest.raises(ValueError, match=message):
        expand_runs(SweepConfig(draws=draws), "cpu", "fp32", "h")


@pytest.mark.parametrize("fields, message", [
    ({"precision": "fp8"}, "precision='fp8'"), ({"draws": {"momentum": {"uniform": [0, 1]}}}, "unknown setting"),
    ({"sample": "grid", "grid": {"lr": [1e-3], "epochs": [2]}}, "grid keys must be"),
    ({"sample": "grid", "grid": {"lr": [1e-3], "repeat": 0}}, "grid.repeat must be >= 1"),
])
def test_the_config_itself_refuses_bad_precision_grid_and_draws(fields, message):
    """Checked when the config is made (before a sweep resolves hardware or expands runs)."""
    with pytest.raises(ValueError, match=message):
        SweepConfig(**fields)


def test_pythia_preset_values_and_cpu_fallback():
    cfg = load_config(SweepConfig, "train/configs/pythia70m.yaml")
    assert (cfg.base, cfg.batch_size, cfg.grad_accum, cfg.weight_decay, cfg.epochs) == \
        ("EleutherAI/pythia-70m", 16, 2, 0.01, 3.0)
    assert cfg.sample == "draw" and cfg.mixture == {"id": 1.0} and "loguniform" in cfg.draws["lr"]
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: no fallback to check")
    device, precision, notes = resolve_hardware(cfg, gpus=0)
    assert (device, precision) == ("cpu", "fp32") and "no CUDA GPU" in notes[0]


def test_pretrain_preset_loads():
    cfg = load_config(PretrainConfig, "train/configs/pretrain.yaml")
    assert cfg.out == "models/embedded-base" and sum(e["weight"] for e in cfg.corpus.values()) > 0


def test_pretrain_command_smoke(tmp_path):
    """The command that made models/embedded-base runs end to end at toy size and records its provenance."""
    import subprocess
    import sys

    from common.files import sha256_file
    from tests.train.conftest import REPO

    out = tmp_path / "base"
    res = subprocess.run([sys.executable, "-m", "train", "pretrain", "--config", "train/configs/pretrain.yaml",
                          f"--out={out}", "--steps=3", "--batch_size=8", "--hidden=32", "--layers=1", "--heads=2",
                          "--ffn=64", "--eval_items=5", "--warmup_steps=1"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    meta = json.loads((out / "pretrain.json").read_text())
    assert meta["config"]["steps"] == 3 and set(meta["accuracy_after_pretraining"]) == {
        "dev", "length", "operator_order", "base", "base9"}
    assert meta["sha256"]["model.safetensors"] == sha256_file(out / "model.safetensors")
    assert json.loads((out / "fracture.json").read_text())["digit_format"] == "compact"
    assert not (tmp_path / "base.tmp").exists()


@pytest.mark.parametrize("override, message", [
    ({"workers": "0"}, "workers=0"), ({"batch_size": "-1"}, "batch_size=-1"), ({"device": "tpu"}, "device"),
    ({"warmup_ratio": "1.5"}, "warmup_ratio"),
])
def test_invalid_sweep_values_are_refused(override, message):
    from common.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        load_config(SweepConfig, "train/configs/demo.yaml", override)


def test_train_cli_rejects_unknown_flags_with_a_suggestion():
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "train", "sweep", "--config", "train/configs/demo.yaml",
                          "--workerz=3"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "did you mean 'workers'" in res.stderr and "Traceback" not in res.stderr


def test_evaluate_splits_grades_outputs_already_decoded_without_decoding_again():
    """The export's parity check decodes the id split; evaluation grades those outputs instead of decoding twice."""
    from train.evaluate import evaluate_splits

    splits = {"id": [{"prompt": "1+2=", "answer": "3"}, {"prompt": "2+2=", "answer": "4"}],
              "base": [{"prompt": "5+5=", "answer": "12"}]}
    calls = []

    def decode(prompts, max_new, batch):
        calls.append(len(prompts))
        return ["3", "5"] if len(prompts) == 2 else ["12"]

    fresh = evaluate_splits(decode, "compact", splits, batch_size=4)
    assert calls == [2, 1]
    reused = evaluate_splits(decode, "compact", splits, batch_size=4, decoded={"id": ["3", "5"]})
    assert calls == [2, 1, 1] and reused == fresh and fresh["id"]["correct"] == 1
    with pytest.raises(ValueError, match="decoded continuations"):
        evaluate_splits(decode, "compact", splits, decoded={"id": ["3"]})


def test_a_run_spec_checks_itself_and_round_trips_through_config_json():
    """expand_runs makes each run once, as a RunSpec that refuses impossible settings; config.json is its
    to_json() and reads back to an equal spec (what a resumed sweep compares done.json with)."""
    from train.config import RunSpec

    run = expand_runs(SweepConfig(runs=5), "cpu", "fp32", "h")[0]
    assert RunSpec.from_json(json.loads(json.dumps(run.to_json()))) == run
    assert set(run.to_json()) == {"run_id", "index", "seed", "lr", "steps", "mixture_name", "mixture", "train_items",
                                  "batch_size", "grad_accum", "warmup_ratio", "weight_decay", "checkpoint_steps",
                                  "base", "device", "precision", "task_hash", "drawn"}
    grid_run = expand_runs(load_config(SweepConfig, "train/configs/tiny.yaml"), "cpu", "fp32", "h")[0]
    assert "drawn" not in grid_run.to_json()  # only drawn populations say which settings were drawn
    for change, message in (({"lr": 0.0}, "lr must be > 0"), ({"steps": 0}, "steps must be >= 1"),
                            ({"mixture": {"id": -1.0}}, "mixture weights"),
                            ({"checkpoint_steps": (1, 2)}, "must end at the final step"),
                            ({"run_id": "../escape"}, "single folder name")):
        with pytest.raises(ValueError, match=message):
            RunSpec.from_json(run.to_json() | change)
