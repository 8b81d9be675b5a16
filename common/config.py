"""Config loading shared by every stage: frozen dataclass <- YAML preset <- CLI flags.

Precedence is CLI > YAML > dataclass defaults. Unknown keys fail with a "did you mean"
suggestion instead of being silently ignored.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A preset or a flag that does not fit the config dataclass."""


def _suggest(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else f" (known keys: {', '.join(sorted(known))})"


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Convert a YAML/CLI value to the field's declared type.

    YAML 1.1 reads ``3e-4`` as a string and CLI values arrive as strings, so numbers are
    converted here, by the annotation, rather than trusted to the parser.
    """
    if isinstance(annotation, str):  # postponed annotations resolved by the caller
        raise TypeError(f"unresolved annotation for {key}")
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    try:
        if annotation is bool:
            if isinstance(value, str):
                low = value.strip().lower()
                if low in ("1", "true", "yes", "on"):
                    return True
                if low in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if annotation is int:
            if isinstance(value, str):
                value = float(value)
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if annotation is float:
            return float(value)
        if annotation is str:
            return str(value)
        if origin is tuple:
            if isinstance(value, str):
                value = yaml.safe_load(value) if value.strip().startswith("[") else value.split(",")
            if not isinstance(value, (list, tuple)):
                value = [value]
            elem = args[0] if args else Any
            return tuple(_coerce(v, elem, key) if elem is not Any else v for v in value)
        if origin is dict or annotation is dict:
            if isinstance(value, str):
                value = yaml.safe_load(value)
            if not isinstance(value, dict):
                raise ValueError(value)
            return dict(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{key}: cannot read {value!r} as {annotation}") from exc
    return value


def parse_cli_overrides(argv: list[str]) -> dict[str, str]:
    """``["--lr=1e-3", "--steps", "50"]`` -> ``{"lr": "1e-3", "steps": "50"}``."""
    out: dict[str, str] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}: flags look like --field=value")
        body = arg[2:]
        if "=" in body:
            key, val = body.split("=", 1)
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            key, val = body, argv[i + 1]
            i += 1
        else:
            key, val = body, "true"
        out[key.replace("-", "_")] = val
        i += 1
    return out


def read_yaml(path: str | os.PathLike) -> Any:
    """``yaml.safe_load`` of a file; a syntax error is one ConfigError line with the file, line and column."""
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None


def load_config(cls: type[T], preset: str | os.PathLike | None = None,
                overrides: dict[str, Any] | None = None) -> T:
    """Build ``cls`` from defaults, then a YAML preset, then overrides (CLI)."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    layers: list[tuple[str, dict[str, Any]]] = []
    if preset is not None:
        path = Path(preset)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        data = read_yaml(path) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        layers.append((str(path), data))
    if overrides:
        layers.append(("command line", overrides))
    for source, layer in layers:
        for key, val in layer.items():
            if key not in fields:
                raise ConfigError(f"unknown key '{key}' in {source}{_suggest(key, list(fields))}")
            values[key] = _coerce(val, hints[key], key)
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from exc


def fields_help(cls: type, width: int = 100) -> str:
    """``--field=default`` of every field of the config dataclass ``cls``, each with the comment written beside
    or above it in its source (the one place a field is documented), for a CLI's ``--help``."""
    import inspect
    import re
    import textwrap

    names = {f.name for f in dataclasses.fields(cls)}
    notes: dict[str, str] = {}
    for klass in reversed([k for k in cls.__mro__ if dataclasses.is_dataclass(k)]):  # a subclass's note wins
        above: list[str] = []
        for line in inspect.getsource(klass).splitlines():
            text = line.strip()
            if text.startswith("#"):
                above.append(text.lstrip("#").strip())
                continue
            match = re.match(r"(\w+)\s*:", text)
            if match and match.group(1) in names:
                beside = text.split("  # ", 1)[1].strip() if "  # " in text else ""
                notes[match.group(1)] = " ".join([*above, beside]).strip()
            above = []
    out = []
    own = set(getattr(cls, "__annotations__", {}))  # the class's own fields first, then those it inherits
    for f in sorted(dataclasses.fields(cls), key=lambda f: f.name not in own):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        shown = yaml.safe_dump(default, default_flow_style=True, width=10**6).strip().removesuffix("...").strip() \
            if isinstance(default, (dict, list, tuple)) else default
        out.append(textwrap.fill(f"--{f.name}={shown}  {notes.get(f.name, '')}".rstrip(), width,
                                 initial_indent="  ", subsequent_indent="      "))
    return "\n".join(out)


def fields_epilog(cls: type, source: str) -> str:
    """A ``--help`` epilog: the fields of ``cls`` (defined in ``source``) as ``fields_help`` lists them."""
    return f"fields of {cls.__name__} ({source}), as --field=default:\n{fields_help(cls)}"
