"""argparse with a "did you mean" for a mistyped ``--flag``.

argparse reports an unknown flag only after everything else has parsed, so ``telemetry analyze
--accuracy runs/demo/accuracy.csv`` used to fail with "one of the arguments --accuracies
--prometheus --scrape is required", and never suggests the flag that was meant. ``ArgumentParser``
checks the flags first. For parsers whose unknown ``--field=value`` flags are config overrides
(``parse_known_args`` + ``common.config``), keep argparse's own: the config has its suggestion.
"""

from __future__ import annotations

import argparse
import difflib
import sys


class ArgumentParser(argparse.ArgumentParser):
    def parse_args(self, args=None, namespace=None):
        argv = list(sys.argv[1:] if args is None else args)
        self._check_flags(argv)
        return super().parse_args(argv, namespace)

    def _check_flags(self, argv: list[str]) -> None:
        """Each ``--flag`` must be one of this parser's (or a unique prefix of one, as argparse allows); a
        sub-command's flags are checked by the sub-command's parser (this class too)."""
        subparsers = [a for a in self._actions if isinstance(a, argparse._SubParsersAction)]
        known = [s for s in self._option_string_actions if s.startswith("--")]
        for i, token in enumerate(argv):
            if token == "--":
                return
            if subparsers and token in subparsers[0].choices:
                sub = subparsers[0].choices[token]  # add_subparsers makes them of this class
                if isinstance(sub, ArgumentParser):
                    sub._check_flags(argv[i + 1:])
                return
            if not token.startswith("--"):
                continue
            name = token.split("=", 1)[0]
            if name in known or (self.allow_abbrev and sum(k.startswith(name) for k in known) == 1):
                continue
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            self.error(f"unrecognized argument {name}" + (f" (did you mean {close[0]}?)" if close else ""))


def split_verb(argv: list[str], verbs: tuple[str, ...], prog: str) -> tuple[str | None, list[str]]:
    """``(verb, the rest)`` for a stage whose first word may name a verb, and which does its main job without
    one: ``python -m export evaluate --sweep runs/demo`` vs ``python -m export --sweep runs/demo``.

    argparse's sub-commands cannot be optional here: a field given as ``--sweep runs/demo`` (with a space)
    leaves ``runs/demo`` where a verb would be. Every stage with such a verb reads it through this one
    function; a first word that is neither a verb nor a flag is refused with the closest verb."""
    if not argv or argv[0].startswith("-"):
        return None, argv
    if argv[0] in verbs:
        return argv[0], argv[1:]
    close = difflib.get_close_matches(argv[0], verbs, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    print(f"{prog}: error: unknown command {argv[0]!r}{hint}; commands: {', '.join(verbs)}, or none for the main "
          "job", file=sys.stderr)
    raise SystemExit(2)  # argparse's status for a usage error (1 is a stage's "some of it failed")
