"""The --base path with a local model built from pythia-70m's configuration values."""

import csv
import json

from tests.train.conftest import REPO, write_tiny_sweep
from train.base import detect_digit_format, load_base


def test_local_pythia_like_model_loads_through_auto_classes(pythia_like_dir):
    base = load_base(str(pythia_like_dir))
    assert type(base.model).__name__ == "GPTNeoXForCausalLM"
    assert base.model.config.hidden_size == 512 and base.model.config.num_hidden_layers == 6
    assert base.tokenizer.pad_token is not None and base.tokenizer.padding_side == "left"


def test_bpe_merges_digits_so_the_spaced_format_is_chosen(pythia_like_dir):
    base = load_base(str(pythia_like_dir))
    tok = base.tokenizer
    assert len(tok.encode("1234567890", add_special_tokens=False)) < 10  # BPE merged digit runs
    assert detect_digit_format(tok) == base.digit_format == "spaced"
    assert len(tok.encode(" 1 2 3 4 5 6 7 8 9 0", add_special_tokens=False)) == 10


def test_sweep_from_a_local_hub_style_base(tmp_path, pythia_like_dir):
    import subprocess

    args = write_tiny_sweep(tmp_path, base=str(pythia_like_dir), eval_items=8, batch_size=4)
    res = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    sweep = tmp_path / "runs" / "tiny"
    with open(sweep / "accuracy.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 30
    run_dir = next(p for p in sweep.iterdir() if p.is_dir())
    meta = json.loads((run_dir / "checkpoints" / "step-6" / "fracture.json").read_text())
    assert meta["digit_format"] == "spaced"


def test_an_unreachable_hub_fails_in_seconds_with_one_line_and_writes_nothing(tmp_path):
    """--base=EleutherAI/pythia-70m without the hub spent 2.5 min in retries, printed 8 tracebacks and left
    run folders behind. The hub here is a closed port on 127.0.0.1 (HF_ENDPOINT); offline mode says where the
    cache is."""
    import os
    import subprocess
    import time

    args = write_tiny_sweep(tmp_path, base="EleutherAI/pythia-70m")
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    started = time.monotonic()
    res = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=120,
                         env=env | {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf")})
    assert res.returncode == 2 and time.monotonic() - started < 30
    assert res.stderr.count("\n") == 1 and "cannot reach the Hugging Face hub at http://127.0.0.1:9" in res.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()
    res = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=120,
                         env=env | {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert res.returncode == 2 and "HF_HUB_OFFLINE is set" in res.stderr and str(tmp_path / "hf") in res.stderr
    assert not (tmp_path / "runs").exists()
