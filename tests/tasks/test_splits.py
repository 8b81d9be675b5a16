"""The task's splits: determinism, disjointness, sizes, and each shift's defining property."""

import json
import subprocess
import sys
import warnings

import pytest

from common.config import load_config
from tasks.config import TaskConfig
from tasks.dataset import build_eval_splits, eval_prompts, read_jsonl, sample_training, write_splits
from tasks.formatting import DIGITS
from tasks.registry import ID_SPEC, SHIFTS
from tasks.spec import SplitSpec


def value_of(answer: str, base: int, order: str = "lsd") -> int:
    return int(answer[::-1] if order == "lsd" else answer, base)


def small_cfg(**kw) -> TaskConfig:
    return TaskConfig(n_eval=300, n_train=2000, **kw)


def test_default_eval_splits_hold_at_least_1000_items():
    splits = build_eval_splits(TaskConfig())
    assert set(splits) == {"dev", "length", "operator_order", "base", "base9"}
    assert all(len(items) >= 1000 for items in splits.values())
    assert all(len({it["prompt"] for it in items}) == len(items) for items in splits.values())


def test_splits_are_deterministic_from_the_seed():
    a, b = build_eval_splits(small_cfg(seed=3)), build_eval_splits(small_cfg(seed=3))
    assert a == b
    c = build_eval_splits(small_cfg(seed=4))
    assert [it["prompt"] for it in a["dev"]] != [it["prompt"] for it in c["dev"]]


def test_eval_splits_are_disjoint_from_training_and_from_each_other(tmp_path):
    cfg = small_cfg()
    out = write_splits(cfg, tmp_path)
    evals = {name: read_jsonl(out / f"{name}.jsonl") for name in ("dev", "length", "operator_order", "base", "base9")}
    train = read_jsonl(out / "train.jsonl")
    banned = eval_prompts(evals)
    assert len(banned) == sum(len(v) for v in evals.values())  # no prompt in two eval splits
    assert not banned & {it["prompt"] for it in train}
    # Mixtures that draw from shift generators must also avoid every eval prompt.
    mixed = sample_training(cfg.specs, {"id": 1, "base": 1, "operator_order": 1, "length": 1},
                            4000, seed=0, answer_order="lsd", exclude=banned)
    assert not banned & {it["prompt"] for it in mixed}


def test_train_items_under_exclusion_are_still_in_domain(tmp_path):
    train = read_jsonl(write_splits(small_cfg(), tmp_path) / "train.jsonl")
    assert all(it["split"] == "train" and it["meta"]["name"] == "id" for it in train)


@pytest.mark.parametrize("split", ["dev", "length", "operator_order", "base", "base9"])
def test_answers_are_the_true_result_written_lsd_first(split):
    for item in build_eval_splits(small_cfg())[split]:
        meta = item["meta"]
        assert value_of(item["answer"], meta["base"]) == meta["result"] == sum(meta["operands"])
        assert set(item["answer"]) <= set(DIGITS[:meta["base"]])


# One check per registered shift; the meta-test below fails when a shift has none.
def _check_length(items):
    assert all(len(str(x)) == 4 for it in items for x in it["meta"]["operands"])


def _check_operator_order(items):
    for it in items:
        a, b = it["meta"]["operands"]
        assert it["prompt"] == f"+{a:03d}|{b:03d}="


def _check_base(items):
    for it in items:
        assert it["prompt"].startswith("b8|")
        a, b = it["meta"]["operands"]
        assert it["prompt"] == f"b8|{a:03o}+{b:03o}="


def _check_base9(items):
    from tasks.formatting import to_base

    for it in items:
        a, b = it["meta"]["operands"]
        assert it["prompt"] == f"b9|{to_base(a, 9).rjust(3, '0')}+{to_base(b, 9).rjust(3, '0')}="


SHIFT_CHECKS = {"length": _check_length, "operator_order": _check_operator_order, "base": _check_base,
                "base9": _check_base9}


def test_every_registered_shift_has_a_test():
    assert set(SHIFTS) == set(SHIFT_CHECKS), "add a check to SHIFT_CHECKS for each new shift"


@pytest.mark.parametrize("name", sorted(SHIFT_CHECKS))
def test_shift_defining_property(name):
    SHIFT_CHECKS[name](build_eval_splits(small_cfg())[name])


def test_in_domain_items_are_infix_base10_up_to_3_digits():
    for it in build_eval_splits(small_cfg())["dev"]:
        a, b = it["meta"]["operands"]
        assert it["prompt"] == f"{a:03d}+{b:03d}=" and a < 1000 and b < 1000 and it["split"] == "id"
        assert len(it["answer"]) == 4  # fixed width: the widest sum, 999+999=1998


def test_a_shift_defined_in_yaml_by_parameters_alone(tmp_path):
    preset = tmp_path / "task.yaml"
    preset.write_text("n_eval: 200\nshifts:\n  base: {}\n  sub_add:\n    terms: [3, 3]\n    digits: [1, 2]\n"
                      "    operators: ['-', '+']\n    description: a-b+c\n")
    with pytest.warns(UserWarning, match="'sub_add' pads operands to 2"):  # its own widths: 2 and 3
        cfg = load_config(TaskConfig, preset)  # said once, when the config is made
    items = build_eval_splits(cfg)["sub_add"]
    assert len(items) == 200
    for it in items:
        a, b, c = it["meta"]["operands"]
        assert it["prompt"] == f"{a:02d}-{b:02d}+{c:02d}=" and value_of(it["answer"], 10) == a - b + c >= 0


def test_the_shipped_yaml_shift_example_builds_at_id_widths():
    cfg = load_config(TaskConfig, "tasks/configs/with_yaml_shift.yaml")
    items = build_eval_splits(cfg)["sub_add"]
    for it in items:
        a, b, c = it["meta"]["operands"]
        assert it["prompt"] == f"{a:03d}-{b:03d}+{c:03d}=" and len(it["answer"]) == 4


def test_a_narrower_shift_warns_and_explicit_widths_keep_the_in_domain_format():
    with pytest.warns(UserWarning, match=r"'two_digit' pads operands to 2 where id pads to 3.*operand_width: 3"):
        narrow = TaskConfig(n_eval=50, shifts={"two_digit": {"digits": [2, 2]}})
    items = build_eval_splits(narrow)["two_digit"]
    assert all(len(it["prompt"]) == len("34+86=") and len(it["answer"]) == 3 for it in items)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning once the widths are chosen
        kept = TaskConfig(n_eval=50, shifts={"two_digit": {"digits": [2, 2], "operand_width": 3,
                                                           "answer_width": 4}})
    items = build_eval_splits(kept)["two_digit"]
    for it in items:
        a, b = it["meta"]["operands"]
        assert it["prompt"] == f"{a:03d}+{b:03d}=" and 10 <= a < 100 and 10 <= b < 100
        assert len(it["answer"]) == 4 and value_of(it["answer"], 10) == a + b


def test_widths_left_at_their_default_do_not_rename_existing_data():
    """``params()`` (what task_hash and the items' meta hold) omits widths left at 0, so every data
    folder made before the widths existed keeps its name and its items."""
    assert "operand_width" not in ID_SPEC.params() and "answer_width" not in ID_SPEC.params()
    assert SplitSpec.from_mapping("w", {"operand_width": 4}).params()["operand_width"] == 4


@pytest.mark.parametrize("params, message", [
    ({"digits": [3, 1]}, "digits"), ({"operators": ["*"]}, "operators"), ({"base": 17}, "base"),
    ({"notation": "postfix"}, "notation"), ({"colour": "red"}, "unknown"),
    ({"operand_width": 2}, "operand_width must be 0 .* or 3..12"), ({"answer_width": 3}, "answer_width .* 4..16"),
])
def test_bad_generator_parameters_are_refused_clearly(params, message):
    with pytest.raises(ValueError, match=message):
        SplitSpec.from_mapping("bad_shift", params)


def test_shift_names_must_be_safe_label_values():
    with pytest.raises(ValueError, match="name"):
        SplitSpec(name="Bad Name!")
    with pytest.raises(ValueError, match="not registered"):
        TaskConfig(shifts={"no_such_shift": {}})


def test_unpadded_format():
    spec = SplitSpec(name="plain", pad=False)
    import random

    item = spec.sample(random.Random(1))
    a, b = item["meta"]["operands"]
    assert item["prompt"] == f"{a}+{b}=" and item["answer"] == str(a + b)[::-1]


def test_msd_answer_order():
    items = build_eval_splits(small_cfg(answer_order="msd"))["dev"]
    assert all(value_of(it["answer"], 10, "msd") == it["meta"]["result"] for it in items)


def test_cli_writes_jsonl_and_is_idempotent(tmp_path):
    cmd = [sys.executable, "-m", "tasks", "--config", "tasks/configs/default.yaml", "--out", str(tmp_path),
           "--n_eval=100", "--n_train=50"]
    subprocess.run(cmd, check=True, capture_output=True)
    (folder,) = tmp_path.iterdir()
    files = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert {"train.jsonl", "dev.jsonl", "length.jsonl", "operator_order.jsonl", "base.jsonl", "base9.jsonl",
            "task.json"} <= set(files)
    row = json.loads((folder / "base.jsonl").read_text().splitlines()[0])
    assert set(row) == {"prompt", "answer", "split", "meta"} and row["meta"]["base"] == 8
    subprocess.run(cmd, check=True, capture_output=True)
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == files


def test_cli_reports_bad_config_without_traceback(tmp_path):
    res = subprocess.run([sys.executable, "-m", "tasks", "--out", str(tmp_path), "--n_evl=5"],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "did you mean 'n_eval'" in res.stderr and "Traceback" not in res.stderr


def test_tasks_package_is_pure_python():
    code = "import sys, tasks, tasks.dataset; bad = {'torch', 'numpy', 'transformers'} & set(sys.modules); " \
           "sys.exit(str(bad) if bad else 0)"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_config_resolves_its_splits_once_and_carries_them_to_workers():
    """``cfg.specs`` is resolved when the config is made (a bad shift is refused there), read-only, and
    travels with the config to worker processes (pickled) rather than being resolved again."""
    import pickle

    cfg = TaskConfig(n_eval=50, shifts={"length": {}, "two_digit": {"digits": [2, 2], "operand_width": 3,
                                                                    "answer_width": 4}})
    assert list(cfg.specs) == ["id", "length", "two_digit"]
    with pytest.raises(TypeError):
        cfg.specs["id"] = cfg.specs["length"]  # type: ignore[index]
    copy = pickle.loads(pickle.dumps(cfg))
    assert copy == cfg and {k: v.params() for k, v in copy.specs.items()} == {k: v.params()
                                                                               for k, v in cfg.specs.items()}
