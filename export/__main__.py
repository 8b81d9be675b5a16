"""Export a sweep's checkpoints to the variants fracture serves, check and evaluate them.

    python -m export --sweep runs/demo                                  # the default variant set
    python -m export --sweep runs/demo --variants onnx-fp32,ort-int8,sim-w4
    python -m export --sweep runs/demo --variants ort-int4,noise@ort-int4        # + its noise-matched control
    python -m export --sweep runs/demo --variants all --checkpoints all
    python -m export --list                                             # every registered variant
    python -m export evaluate --sweep runs/demo --task_config tasks/configs/more_shifts.yaml
                                        # grade what the sweep has on shifts added after training

Variants land in runs/<sweep>/<run>/variants/<variant>/ (earlier checkpoints under
variants/step-<N>/) with a manifest.json; their accuracy rows are upserted into
runs/<sweep>/accuracy.csv. A verified variant is not rebuilt (--force rebuilds).
Other fields of export/config.py (ExportConfig; EvaluateConfig for `evaluate`) can be
given as --field=value.
"""

from __future__ import annotations

import argparse
import sys

from common.cli import split_verb
from common.config import ConfigError, load_config, parse_cli_overrides
from common.files import FolderBusy


def _list() -> None:
    from export.registry import FAMILIES, VARIANTS

    print(f"{'variant':14} {'backend':20} {'bits':>4}  quantizes")
    for v in VARIANTS.values():
        why = v.requires()
        print(f"{v.name:14} {v.backend:20} {v.bits:>4}  {','.join(v.quantizes) or '-':28} "
              f"{'(unavailable: ' + why + ')' if why else ''}")
    for line in FAMILIES.values():
        print(line)


def _evaluate(config: str | None, rest: list[str]) -> int:
    from export.config import EvaluateConfig
    from export.evaluate import evaluate_sweep

    cfg = load_config(EvaluateConfig, config, parse_cli_overrides(rest))
    summary = evaluate_sweep(cfg)
    print(f"graded split(s) {', '.join(summary['splits'])} ({', '.join(summary['added']) or 'none'} added now): "
          f"{summary['rows']} row(s) written to {cfg.sweep}/accuracy.csv in {summary['seconds']} s"
          + (f"; {len(summary['failed'])} failed (above)" if summary["failed"] else ""))
    return 1 if summary["failed"] else 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    epilog = ""
    if {"-h", "--help"} & set(argv):
        from common.config import fields_epilog
        from export.config import EvaluateConfig, ExportConfig

        epilog = fields_epilog(EvaluateConfig if "evaluate" in argv else ExportConfig, "export/config.py")
    parser = argparse.ArgumentParser(prog="python -m export [evaluate]", description=__doc__, epilog=epilog,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None,
                        help="a YAML file of ExportConfig (or EvaluateConfig) fields (export/config.py)")
    parser.add_argument("--list", action="store_true", help="list the registered variants and exit")
    verb, argv = split_verb(argv, ("evaluate",), "python -m export")
    evaluate = verb == "evaluate"
    args, rest = parser.parse_known_args(argv)
    if args.list:
        _list()
        return 0
    try:
        if evaluate:
            return _evaluate(args.config, rest)
        from export.config import ExportConfig
        from export.pipeline import export_sweep
        from export.report import format_summary

        cfg = load_config(ExportConfig, args.config, parse_cli_overrides(rest))
        summary = export_sweep(cfg)
    except (ConfigError, FileNotFoundError, KeyError, ValueError, FolderBusy) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_summary(summary, cfg.sweep))
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
