"""Build the splits of a task config: deterministic, eval splits disjoint from training."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from pathlib import Path

from common.files import atomic_write_json, atomic_write_text
from tasks.config import TaskConfig
from tasks.registry import ID_NAME
from tasks.spec import SplitSpec

EVAL_SPLIT_OF_ID = "dev"


def split_file(split: str) -> str:
    """The JSONL file (without .jsonl) an eval split is stored in: the in-domain split's is dev."""
    return EVAL_SPLIT_OF_ID if split == ID_NAME else split


def split_of_file(stem: str) -> str:
    """The split label of an eval JSONL file: the inverse of ``split_file``."""
    return ID_NAME if stem == EVAL_SPLIT_OF_ID else stem
# Bump whenever the items a config produces change (format, sampling): the data folder is
# named by task_hash, so stale splits from older code are never reused.
FORMAT_VERSION = 2


def task_hash(cfg: TaskConfig, length: int = 10) -> str:
    """Names data/<hash>/: the config, every resolved generator and the format version."""
    blob = json.dumps({"config": asdict(cfg), "format": FORMAT_VERSION,
                       "specs": {k: v.params() for k, v in cfg.specs.items()}}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def sweep_data(sweep: str | Path) -> Path:
    """The data/<task-hash>/ folder a sweep was made from (the ``data`` of its sweep.yaml)."""
    import yaml

    path = Path(sweep) / "sweep.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {sweep} a sweep folder? (`make demo` writes runs/demo)")
    return Path(yaml.safe_load(path.read_text())["data"])


# In a sweep folder: the splits graded after training (`python -m export evaluate`), which its
# sweep.yaml (rewritten by every resumed sweep) does not list.
EXTRA_SPLITS = "extra-splits.json"


def sweep_extra_splits(sweep: str | Path) -> dict[str, dict]:
    """``{split: {"params", "description", "file", "task_config"}}`` of the splits added to a sweep after
    training; ``file`` is relative to the sweep folder."""
    path = Path(sweep) / EXTRA_SPLITS
    return json.loads(path.read_text())["splits"] if path.is_file() else {}


def sweep_splits(sweep: str | Path, task_config: str | Path | None = None) -> list[str]:
    """The split names ("id" first) of the task a sweep folder was made with (the ``task`` of its
    sweep.yaml; the default task's when the folder has no sweep.yaml), then those added later, then
    those of ``task_config`` (a task preset) it lacks."""
    import yaml

    from common.config import load_config

    path = Path(sweep) / "sweep.yaml"
    task = (yaml.safe_load(path.read_text()) or {}).get("task", {}) if path.is_file() else {}
    names = [*load_config(TaskConfig, overrides=task).specs, *sweep_extra_splits(sweep)]
    if task_config:
        names += [name for name in load_config(TaskConfig, task_config).specs if name not in names]
    return names


def _rng(cfg_seed: int, split: str, role: str) -> random.Random:
    # A string seed is hashed with SHA-512 by `random`: stable across processes and versions.
    return random.Random(f"fracture:{cfg_seed}:{split}:{role}")


def sample_unique(spec: SplitSpec, n: int, rng: random.Random, answer_order: str,
                  exclude: set[str] | frozenset[str] = frozenset(), split: str | None = None) -> list[dict]:
    """``n`` items with distinct prompts, none of them in ``exclude``."""
    items, seen = [], set(exclude)
    attempts = 0
    while len(items) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise ValueError(f"split {spec.name!r} cannot yield {n} distinct items; widen its digit range")
        item = spec.sample(rng, answer_order)
        if item["prompt"] in seen:
            continue
        seen.add(item["prompt"])
        if split is not None:
            item["split"] = split
        items.append(item)
    return items


def build_eval_splits(cfg: TaskConfig) -> dict[str, list[dict]]:
    """``dev`` (in-domain) and one split per shift, each ``n_eval`` unique items."""
    specs = cfg.specs
    out: dict[str, list[dict]] = {}
    taken: set[str] = set()
    for name, spec in specs.items():
        split = split_file(name)
        # Disjoint across eval splits too, so an item is scored under exactly one label.
        out[split] = sample_unique(spec, cfg.n_eval, _rng(cfg.seed, name, "eval"), cfg.answer_order, taken, split)
        # Keep the `split` column as the metric label: dev rows are graded under "id".
        for item in out[split]:
            item["split"] = ID_NAME if name == ID_NAME else name
        taken.update(item["prompt"] for item in out[split])
    return out


def build_added_split(spec: SplitSpec, cfg: TaskConfig, exclude: set[str]) -> list[dict]:
    """A split added to a task after training: drawn as ``build_eval_splits`` draws it (the same
    generator and the same seed for its name), none of its prompts in ``exclude`` (every prompt the
    sweep trained or was evaluated on), so where nothing is excluded the items are the very ones a
    task with this shift from the start would hold."""
    return sample_unique(spec, cfg.n_eval, _rng(cfg.seed, spec.name, "eval"), cfg.answer_order, exclude, spec.name)


def eval_prompts(eval_splits: Mapping[str, list[dict]]) -> frozenset[str]:
    return frozenset(item["prompt"] for items in eval_splits.values() for item in items)


def sample_training(specs: Mapping[str, SplitSpec], mixture: Mapping[str, float], n: int, seed: int | str,
                    answer_order: str, exclude: Iterable[str]) -> list[dict]:
    """``n`` training items drawn from a mixture of generators, never an eval prompt.

    ``mixture`` maps split names (``id`` or a shift) to weights; a share of a shift's
    generator in training is how runs are made to differ in what they learn.
    """
    unknown = set(mixture) - set(specs)
    if unknown:
        raise ValueError(f"mixture names unknown split(s) {sorted(unknown)}; known: {sorted(specs)}")
    total = sum(float(w) for w in mixture.values())
    if total <= 0 or any(float(w) < 0 for w in mixture.values()):
        raise ValueError(f"mixture weights must be >= 0 and sum > 0: {dict(mixture)}")
    names = sorted(mixture)
    weights = [float(mixture[k]) / total for k in names]
    rng = random.Random(f"fracture-train:{seed}")
    banned = exclude if isinstance(exclude, (set, frozenset)) else set(exclude)
    items = []
    while len(items) < n:
        spec = specs[rng.choices(names, weights)[0]]
        item = spec.sample(rng, answer_order)
        if item["prompt"] not in banned:
            items.append(item)
    return items


def write_splits(cfg: TaskConfig, out_root: str | Path) -> Path:
    """Write ``<out_root>/<config-hash>/`` with train, dev and shift JSONL files. Idempotent."""
    out = Path(out_root) / task_hash(cfg)
    marker = out / "task.json"
    if marker.is_file() and json.loads(marker.read_text()).get("format") == FORMAT_VERSION:
        return out
    eval_splits = build_eval_splits(cfg)
    specs = cfg.specs
    train = sample_training(specs, {ID_NAME: 1.0}, cfg.n_train, f"{cfg.seed}:train.jsonl",
                            cfg.answer_order, eval_prompts(eval_splits))
    for item in train:
        item["split"] = "train"
    for name, items in {"train": train, **eval_splits}.items():
        atomic_write_text(out / f"{name}.jsonl", "".join(json.dumps(it, sort_keys=True) + "\n" for it in items))
    atomic_write_json(marker, {
        "config": asdict(cfg), "format": FORMAT_VERSION,
        "splits": {name: spec.params() | {"description": spec.description} for name, spec in specs.items()},
        "files": sorted(["train.jsonl", *(f"{k}.jsonl" for k in eval_splits)]),
    })
    return out


def read_jsonl(path: str | Path) -> list[dict]:
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]
