"""Fine-tuning sweeps and the embedded base.

    python -m train sweep --config train/configs/demo.yaml
    python -m train sweep --config train/configs/demo.yaml --base=EleutherAI/pythia-70m
    python -m train sweep --config train/configs/pythia70m.yaml        # CUDA GPU preset
    python -m train pretrain --config train/configs/pretrain.yaml      # rebuilds models/embedded-base

Any config field can be given as --field=value (CLI > YAML > defaults); the resolved
config is saved next to every artifact. A killed sweep resumes with the same command.
"""

from __future__ import annotations

import argparse
import sys

from common.config import ConfigError, load_config, parse_cli_overrides
from common.files import FolderBusy


def _fields_epilog(argv: list[str]) -> str:
    """The fields of the named command's config, for --help (a YAML preset sets the same names)."""
    from common.config import fields_epilog
    from train.config import PretrainConfig, SweepConfig

    if not {"-h", "--help"} & set(argv):
        return ""
    cls = PretrainConfig if "pretrain" in argv else SweepConfig
    example = ("" if cls is PretrainConfig else
               "\n\nA dict field takes YAML, e.g. a 2 x 2 grid with 3 seeds per cell:\n"
               "  python -m train sweep --config train/configs/small.yaml --sample=grid --name=grid \\\n"
               "      --grid='{lr: [3.0e-4, 1.0e-3], steps: [50, 100], repeat: 3}'")
    return fields_epilog(cls, "train/config.py") + example


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m train", description=__doc__, epilog=_fields_epilog(argv),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["sweep", "pretrain"])
    parser.add_argument("--config", default=None, help="YAML preset (train/configs/*.yaml)")
    args, rest = parser.parse_known_args(argv)
    try:
        overrides = parse_cli_overrides(rest)
        if args.command == "pretrain":
            from train.config import PretrainConfig
            from train.pretrain import pretrain

            pretrain(load_config(PretrainConfig, args.config, overrides), argv[1:])
        else:
            from train.config import SweepConfig
            from train.sweep import run_sweep

            run_sweep(load_config(SweepConfig, args.config, overrides))
    except (ConfigError, FileNotFoundError, ValueError, FolderBusy) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
