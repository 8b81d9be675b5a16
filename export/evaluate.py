"""Grade an existing sweep on splits its task did not have: new shifts without retraining.

    python -m export evaluate --sweep runs/demo --task_config tasks/configs/more_shifts.yaml

The task preset must describe the sweep's in-domain split exactly (``seed``, ``n_train``,
``n_eval``, ``answer_order``, ``id``) and may add shifts; a shift the sweep already has must
keep its parameters. Each added split is drawn as the sweep's own were (the same generator,
the same seed for its name), with every prompt the sweep's runs trained or were evaluated
on left out, so where nothing had to be left out its items are the very ones a task with
that shift from the start would hold. The items go to ``runs/<sweep>/extra-splits/`` and are
recorded in ``runs/<sweep>/extra-splits.json``, which the server, replay and the telemetry
read beside sweep.yaml.

Every (run, step, variant) of accuracy.csv is then graded on them by the path the sweep and
the export use (``train.evaluate.evaluate_splits``, the sweep's eval batch size, items per
split and decode length): torch-fp32 from its checkpoint, every other variant from its
published folder, verified against its manifest and never rebuilt. Rows already in the
table are kept, so a second run (or a resumed one) adds only what is missing.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from common.accuracy_table import TORCH_VARIANT, read_table, upsert_rows
from common.config import load_config
from common.executor import Resources, open_executor
from common.files import atomic_write_json, atomic_write_text, check_name, folder_lock, sha256_file
from common.progress import progress_bar
from export.config import EvaluateConfig
from export.pipeline import CheckpointJob, EvalData, load_sweep, reusable
from tasks.config import TaskConfig
from tasks.dataset import (
    EXTRA_SPLITS,
    build_added_split,
    read_jsonl,
    sample_training,
    sweep_extra_splits,
    sweep_splits,
)
from tasks.spec import SplitSpec
from train.checkpoints import verify_checkpoint
from train.config import RunSpec

SAME = ("seed", "n_train", "n_eval", "answer_order", "id")  # what an added split must share with the sweep's task


def added_specs(old_cfg: TaskConfig, extras: dict[str, dict], new_cfg: TaskConfig, source: str) -> dict[str, SplitSpec]:
    """The splits of ``new_cfg`` the sweep (made with ``old_cfg``) does not have yet; refuses a preset whose
    in-domain settings differ, or one that gives a split the sweep has other parameters."""
    differ = [f"{k} ({getattr(new_cfg, k)!r} vs the sweep's {getattr(old_cfg, k)!r})" for k in SAME
              if getattr(old_cfg, k) != getattr(new_cfg, k)]
    if differ:
        raise ValueError(f"{source} differs from the sweep's task in {', '.join(differ)}: only shifts can be "
                         "added to a trained sweep")
    known = old_cfg.specs | {
        name: SplitSpec.from_mapping(name, {k: v for k, v in e["params"].items() if k != "name"})
        for name, e in extras.items()}
    new = new_cfg.specs
    for name, spec in new.items():
        if name in known and known[name].params() != spec.params():
            raise ValueError(f"{source}: split {name!r} is already in the sweep with other generator parameters "
                             f"({known[name].params()}); give the new one another name")
    return {name: spec for name, spec in new.items() if name not in known}


def seen_prompts(sweep_dir: Path, sweep: dict, task_cfg: TaskConfig) -> set[str]:
    """Every prompt the sweep's runs trained on or were evaluated on: the data folder's files (eval splits
    and train.jsonl), the splits added before, and each run's training items, drawn again from its config
    exactly as the run drew them (they are never stored). ``task_cfg`` is the sweep's task."""
    from train.finetune import load_eval_splits

    data = Path(sweep["data"])
    seen = {it["prompt"] for f in sorted(data.glob("*.jsonl")) for it in read_jsonl(f)}
    for extra in sweep_extra_splits(sweep_dir).values():
        seen |= {it["prompt"] for it in read_jsonl(sweep_dir / extra["file"])}
    specs = task_cfg.specs
    _, banned = load_eval_splits(data, task_cfg, 0)
    drawn = set()
    for run_id in sweep["runs"]:
        path = sweep_dir / check_name("run", run_id) / "config.json"
        if not path.is_file():
            continue  # never started: it trained on nothing
        run = RunSpec.from_json(json.loads(path.read_text()))
        key = (json.dumps(run.mixture, sort_keys=True), run.train_items, run.seed)
        if key not in drawn:  # runs that differ only in lr or steps draw the same items
            drawn.add(key)
            seen |= {it["prompt"] for it in sample_training(specs, run.mixture, run.train_items, run.seed,
                                                            task_cfg.answer_order, banned)}
    return seen


def add_splits(sweep_dir: Path, sweep: dict, task_cfg: TaskConfig, cfg: EvaluateConfig) -> dict[str, dict]:
    """Draw and record the preset's new splits (none when it adds nothing new); returns every added split.
    ``task_cfg`` is the sweep's task."""
    extras = sweep_extra_splits(sweep_dir)
    new_cfg = load_config(TaskConfig, cfg.task_config)
    new = added_specs(task_cfg, extras, new_cfg, cfg.task_config)
    if new:
        seen = seen_prompts(sweep_dir, sweep, task_cfg)
        for name, spec in new.items():
            items = build_added_split(spec, new_cfg, seen)
            seen |= {it["prompt"] for it in items}
            rel = f"extra-splits/{name}.jsonl"
            atomic_write_text(sweep_dir / rel, "".join(json.dumps(it, sort_keys=True) + "\n" for it in items))
            extras[name] = {"params": spec.params(), "description": spec.description, "file": rel,
                            "task_config": cfg.task_config}
        atomic_write_json(sweep_dir / EXTRA_SPLITS, {"splits": extras})
    return extras


@dataclass(frozen=True)
class GradeJob:
    """One checkpoint's variants to grade on the added splits it has no rows for."""

    checkpoint: CheckpointJob
    variants: tuple[str, ...]  # names from accuracy.csv: registry variants, and torch-fp32 (the checkpoint)
    split_files: dict[str, str]  # split -> its JSONL file
    eval_items: int  # items per split (0 = all)
    batch_size: int  # the sweep's eval batch size
    max_new: int  # the decode length of a task with every split
    threads: int


def evaluate_checkpoint(job: GradeJob) -> dict:
    """Worker: grade one checkpoint's torch-fp32 and published variants on the given splits."""
    import torch
    from transformers import AutoModelForCausalLM

    from export.registry import get_variant
    from train.base import load_tokenizer
    from train.evaluate import evaluate_splits, torch_decoder

    torch.set_num_threads(job.threads)
    where, threads = job.checkpoint, job.threads
    ckpt = where.checkpoint
    problem = verify_checkpoint(ckpt)
    if problem:
        return {"rows": [], "failed": [f"{where}: {problem}"]}
    splits = {name: read_jsonl(path)[:job.eval_items or None] for name, path in job.split_files.items()}
    digit_format = json.loads((ckpt / "fracture.json").read_text())["digit_format"]
    tokenizer = load_tokenizer(str(ckpt))
    ckpt_sha = sha256_file(ckpt / "model.safetensors")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows, failed = [], []
    for name in job.variants:
        try:
            if name == TORCH_VARIANT:
                decode = torch_decoder(AutoModelForCausalLM.from_pretrained(ckpt).eval(), tokenizer)
            else:
                variant = get_variant(name)
                dest = where.variant_dir(name)
                why = reusable(dest, ckpt_sha)
                if why:
                    failed.append(f"{where} {name}: {why} (`python -m export` rebuilds it; nothing is rebuilt here)")
                    continue
                decode = variant.open(dest, threads, device, tokenizer).decoder()
            results = evaluate_splits(decode, digit_format, splits, batch_size=job.batch_size,
                                       max_new_tokens=job.max_new)
        except Exception:  # noqa: BLE001 - one variant that cannot be graded must not stop the others
            failed.append(f"{where} {name}: {traceback.format_exc(limit=3)}")
            continue
        rows += [{"run": where.run, "step": where.step, "variant": name, "split": split, **r}
                 for split, r in results.items()]
    return {"rows": rows, "failed": failed}


def evaluate_sweep(cfg: EvaluateConfig) -> dict:
    """Add the preset's new splits to the sweep and grade every (run, step, variant) of its accuracy.csv on
    the added splits it has no rows for. Returns {splits, added, rows, failed, seconds}."""
    sweep_dir = Path(cfg.sweep)
    sweep = load_sweep(sweep_dir)
    with folder_lock(sweep_dir, f"an evaluation ({' '.join(sys.argv)})"):
        return _evaluate_sweep(sweep_dir, sweep, cfg)


def _evaluate_sweep(sweep_dir: Path, sweep: dict, cfg: EvaluateConfig) -> dict:
    from tqdm import tqdm

    from train.evaluate import max_answer_tokens

    started = time.perf_counter()
    before = set(sweep_extra_splits(sweep_dir))
    data = EvalData.of_sweep(sweep)  # the sweep's task config, resolved once for everything below
    extras = add_splits(sweep_dir, sweep, data.task, cfg)
    table_path = sweep_dir / "accuracy.csv"
    table = read_table(table_path, sweep_splits(sweep_dir))  # the task's splits and every added one
    have: dict[tuple[str, int], dict[str, set]] = {}
    for r in table:
        have.setdefault((r["run"], int(r["step"])), {}).setdefault(r["variant"], set()).add(r["split"])
    runs = set(sweep["runs"])
    eval_items, originals = data.eval_items, data.load()
    added = {name: read_jsonl(sweep_dir / e["file"])[:eval_items or None] for name, e in extras.items()}
    max_new = max_answer_tokens({**originals, **added})  # the decode length a task with these splits would use
    jobs = []
    root = sweep_dir.resolve() if cfg.executor == "ray" else sweep_dir  # a Ray worker may start elsewhere
    for (run, step), by_variant in sorted(have.items()):
        if run not in runs:
            continue  # e.g. the base's rows: not a checkpoint of this sweep
        todo = sorted(v for v, splits in by_variant.items() if set(extras) - splits)
        if not todo:
            continue
        run_dir = root / check_name("run", run)
        steps = json.loads((run_dir / "config.json").read_text())["checkpoint_steps"]
        missing = sorted(set(extras) - set.intersection(*(by_variant[v] for v in todo)))
        files = {name: str(root / extras[name]["file"]) for name in missing}
        jobs.append(GradeJob(CheckpointJob(run, step, steps[-1], run_dir), tuple(todo), files,
                             eval_items, data.batch_size, max_new, cfg.threads))
    print(f"evaluate {sweep_dir}: split(s) {', '.join(extras) or '(none)'} "
          f"({', '.join(sorted(set(extras) - before)) or 'none'} new); {len(jobs)} checkpoint(s) to grade")
    failed, written = [], 0
    bar = progress_bar(len(jobs), "checkpoints", "ckpt")

    def done(_, res):
        nonlocal written
        rows = [r for r in res["rows"] if r["split"] not in have.get((r["run"], r["step"]), {}).get(r["variant"], ())]
        if rows:
            upsert_rows(table_path, rows)  # after every checkpoint: a killed evaluation keeps what it did
            written += len(rows)
        for msg in res["failed"]:
            tqdm.write(f"FAILED {msg}", file=sys.stderr)
        failed.extend(res["failed"])
        bar.update(1)

    if jobs:
        with open_executor(cfg.executor, cfg.ray_address, cfg.max_retries) as executor:
            executor.map(evaluate_checkpoint, [(job,) for job in jobs], done, workers=min(cfg.workers, len(jobs)),
                         resources=Resources(cpus=cfg.threads))
    bar.close()
    return {"splits": sorted(extras), "added": sorted(set(extras) - before), "rows": written, "failed": failed,
            "seconds": round(time.perf_counter() - started, 1)}
