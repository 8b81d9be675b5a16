"""A mistyped --flag gets a suggestion, before argparse's other errors hide it."""

import pytest

from common.cli import ArgumentParser
from tests.train.conftest import REPO


def _parser() -> ArgumentParser:
    p = ArgumentParser(prog="tool")
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("analyze")
    source = a.add_mutually_exclusive_group(required=True)
    source.add_argument("--accuracies")
    source.add_argument("--scrape")
    a.add_argument("--out")
    return p


def test_the_telemetry_typo_of_the_issue_is_named_with_its_fix(capsys):
    """`telemetry analyze --accuracy` said "one of the arguments ... is required"."""
    from telemetry.__main__ import main

    with pytest.raises(SystemExit) as exc:
        main(["analyze", "--accuracy", "runs/demo/accuracy.csv", "--out", "reports/x"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized argument --accuracy (did you mean --accuracies?)" in err and "required" not in err


def test_good_flags_prefixes_values_and_the_separator_pass():
    p = _parser()
    assert p.parse_args(["analyze", "--accuracies", "a.csv", "--out=o"]).out == "o"
    assert p.parse_args(["analyze", "--acc", "a.csv"]).accuracies == "a.csv"  # a unique prefix, as argparse allows


def test_unknown_flags_without_a_near_name_are_refused_plainly(capsys):
    with pytest.raises(SystemExit):
        _parser().parse_args(["analyze", "--accuracies", "a.csv", "--zzz"])
    err = capsys.readouterr().err
    assert "unrecognized argument --zzz" in err and "did you mean" not in err


def test_train_sweep_help_lists_every_field_with_its_comment_and_a_grid_example(capsys):
    import dataclasses

    from train.__main__ import main
    from train.config import SweepConfig

    with pytest.raises(SystemExit) as exc:
        main(["sweep", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for f in dataclasses.fields(SweepConfig):
        assert f"  --{f.name}=" in out, f.name
    assert "--workers=2  runs trained in parallel processes" in out
    assert "--grid='{lr: [3.0e-4, 1.0e-3], steps: [50, 100], repeat: 3}'" in out


def test_the_help_grid_example_is_a_2x2_grid_with_3_seeds():
    from common.config import load_config, parse_cli_overrides
    from train.config import SweepConfig
    from train.sweep import _grid_settings

    cfg = load_config(SweepConfig, REPO / "train" / "configs" / "small.yaml", parse_cli_overrides(
        ["--sample=grid", "--name=grid", "--grid={lr: [3.0e-4, 1.0e-3], steps: [50, 100], repeat: 3}"]))
    settings = _grid_settings(cfg)
    assert len(settings) == 12 and {(s["lr"], s["steps"]) for s in settings} == {
        (3e-4, 50), (3e-4, 100), (1e-3, 50), (1e-3, 100)}


def test_a_stage_verb_is_optional():
    from common.cli import split_verb

    verbs = ("evaluate",)
    assert split_verb(["evaluate", "--sweep", "runs/demo"], verbs, "x") == ("evaluate", ["--sweep", "runs/demo"])
    assert split_verb(["--sweep", "runs/demo"], ("evaluate",), "x") == (None, ["--sweep", "runs/demo"])
    assert split_verb([], ("evaluate",), "x") == (None, [])


def test_a_mistyped_verb_is_a_usage_error_naming_the_closest(capsys):
    from common.cli import split_verb

    with pytest.raises(SystemExit) as exit_:
        split_verb(["evalute", "--sweep", "runs/demo"], ("evaluate",), "python -m export")
    assert exit_.value.code == 2
    assert "unknown command 'evalute' (did you mean 'evaluate'?)" in capsys.readouterr().err


def test_the_export_and_serve_clis_refuse_an_unknown_verb_before_doing_anything(capsys):
    import export.__main__ as export_cli
    import serve.__main__ as serve_cli

    for main, argv, meant in ((serve_cli.main, ["replya", "--url", "http://127.0.0.1:1"], "replay"),
                              (export_cli.main, ["evaluat", "--sweep", "runs/nowhere"], "evaluate")):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2 and f"did you mean {meant!r}" in capsys.readouterr().err
