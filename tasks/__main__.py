"""Write the task's splits as JSONL.

    python -m tasks --config tasks/configs/default.yaml --out data/
    python -m tasks --config tasks/configs/default.yaml --out data/ --n_eval=2000 --seed=1

Writes data/<config-hash>/{train,dev,<shift>...}.jsonl and task.json (the resolved
config and each split's generator parameters). Re-running with the same config does
nothing. Any TaskConfig field can be given as --field=value (CLI > YAML > defaults).
"""

from __future__ import annotations

import argparse
import sys

from common.config import ConfigError, load_config, parse_cli_overrides
from tasks.config import TaskConfig
from tasks.dataset import write_splits


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, help="YAML preset (tasks/configs/*.yaml)")
    parser.add_argument("--out", default="data", help="output root; files go to <out>/<config-hash>/")
    args, rest = parser.parse_known_args(argv)
    try:
        cfg = load_config(TaskConfig, args.config, parse_cli_overrides(rest))
        specs = cfg.specs
        out = write_splits(cfg, args.out)
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    for name, spec in specs.items():
        print(f"  {name:16s} {spec.description}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
