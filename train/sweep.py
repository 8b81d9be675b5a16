"""A fine-tuning sweep: a population of runs, resumable, evaluated at every checkpoint.

Layout (docs/design.md, Artifacts): runs/<sweep>/sweep.yaml, <run>/config.json,
<run>/checkpoints/step-<N>/, <run>/eval/step-<N>.json, <run>/done.json, accuracy.csv,
signal.json. A run counts as finished only when done.json matches its config and every
checkpoint re-verifies; anything else is redone from scratch by the next invocation.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import yaml

from common.accuracy_table import TORCH_VARIANT, upsert_rows
from common.config import load_config, read_yaml
from common.executor import Executor, Resources, Throttle, open_executor, report
from common.files import atomic_write_json, atomic_write_text, folder_lock
from common.progress import PopulationProgress
from tasks.config import TaskConfig
from tasks.dataset import task_hash, write_splits
from train.base import check_base
from train.checkpoints import verify_checkpoint
from train.config import DRAWABLE, EXECUTION_FIELDS, RunSpec, SweepConfig, TrainJob
from train.finetune import checkpoint_steps, train_and_evaluate
from train.signal import base_scores, format_signal_table, signal_check


def resolve_hardware(cfg: SweepConfig, gpus: int) -> tuple[str, str, list[str]]:
    """(device, precision, notes), given the GPUs the executor's jobs can use (this machine's, or the Ray
    cluster's). A CUDA preset without a GPU falls back to CPU fp32."""
    import torch

    notes = []
    has_cuda = gpus > 0
    device = cfg.device
    if device == "auto":
        device = "cuda" if has_cuda else "cpu"
    elif device == "cuda" and not has_cuda:
        notes.append("no CUDA GPU found: falling back to the CPU in fp32 (this preset is sized for a GPU; "
                     "expect it to be slow)")
        device = "cpu"
    precision = cfg.precision
    if precision == "auto":
        # the driver of a Ray cluster may have no GPU to ask: bf16 then (set precision=fp16 for pre-Ampere GPUs)
        bf16 = torch.cuda.is_bf16_supported() if torch.cuda.is_available() else True
        precision = ("bf16" if bf16 else "fp16") if device == "cuda" else "fp32"
    elif precision in ("fp16", "bf16") and device == "cpu":
        notes.append(f"{precision} mixed precision needs a CUDA GPU here: using fp32 on the CPU")
        precision = "fp32"
    return device, precision, notes


def _grid_values(grid: dict) -> tuple[list[float], list[int], dict[str, dict], int]:
    lrs = [float(x) for x in grid.get("lr", [1e-3])]
    steps = [int(x) for x in grid.get("steps", [100])]
    mixtures = grid.get("mixture", {"id": {"id": 1.0}})
    if isinstance(mixtures, list):  # unnamed mixtures get positional names
        mixtures = {f"mix{i}": m for i, m in enumerate(mixtures)}
    repeat = int(grid.get("repeat", 1))  # each combination this many times, with different seeds (>= 1: SweepConfig)
    return lrs, steps, {str(k): {s: float(w) for s, w in v.items()} for k, v in mixtures.items()}, repeat


def draw(dist: dict, rng: random.Random, name: str):
    """One value of a declared distribution: loguniform, uniform, int_uniform (inclusive) or choice."""
    if not isinstance(dist, dict) or len(dist) != 1:
        raise ValueError(f"draws.{name} must be one of {{loguniform|uniform|int_uniform|choice: [...]}}, got {dist!r}")
    (kind, args), = dist.items()
    if kind == "choice":
        if not args:
            raise ValueError(f"draws.{name}: choice needs at least one value")
        return rng.choice(list(args))
    if len(args) != 2 or float(args[0]) > float(args[1]):
        raise ValueError(f"draws.{name}: {kind} needs [low, high] with low <= high, got {args!r}")
    lo, hi = float(args[0]), float(args[1])
    if kind == "loguniform":
        if lo <= 0:
            raise ValueError(f"draws.{name}: loguniform needs low > 0")
        return math.exp(rng.uniform(math.log(lo), math.log(hi)))
    if kind == "uniform":
        return rng.uniform(lo, hi)
    if kind == "int_uniform":
        return rng.randint(int(lo), int(hi))
    raise ValueError(f"draws.{name}: unknown distribution {kind!r} (loguniform, uniform, int_uniform, choice)")


def _drawn_settings(cfg: SweepConfig) -> list[dict]:
    """Run i's settings, drawn from a stream named by (seed, i): adding runs never changes earlier ones."""
    out = []
    for i in range(cfg.runs):
        rng = random.Random(f"fracture-draw:{cfg.seed}:{i}")
        values = {k: DRAWABLE[k](draw(cfg.draws[k], rng, k)) for k in sorted(cfg.draws)}
        out.append({"lr": values.pop("lr", 1e-3), "steps": values.pop("steps", 100), "mixture_name": "fixed",
                    "mixture": {str(k): float(w) for k, w in cfg.mixture.items()}, "drawn": sorted(cfg.draws),
                    **values})
    return out


def _grid_settings(cfg: SweepConfig) -> list[dict]:
    lrs, steps_list, mixtures, repeat = _grid_values(cfg.grid)
    combos = [c for c in itertools.product(lrs, steps_list, mixtures.items()) for _ in range(repeat)]
    if cfg.sample == "random":
        rng = random.Random(f"fracture-sweep:{cfg.seed}")
        combos = [rng.choice(combos) for _ in range(cfg.runs)]
    return [{"lr": lr, "steps": steps, "mixture_name": name, "mixture": mixture}
            for lr, steps, (name, mixture) in combos]


def replayed_shifts(mixture: dict[str, float]) -> list[str]:
    """Eval shifts a training mixture draws items from: each is in-distribution for the run (an ablation)."""
    return sorted(s for s, w in mixture.items() if s != "id" and float(w) > 0)


def expand_runs(cfg: SweepConfig, device: str, precision: str, task_hash: str) -> list[RunSpec]:
    """Every run of the sweep with its settings resolved, in a stable order (each checked as it is made)."""
    settings = _drawn_settings(cfg) if cfg.sample == "draw" else _grid_settings(cfg)
    width = max(2, len(str(len(settings) - 1)))
    runs = []
    for i, s in enumerate(settings):
        lr, steps = s["lr"], s["steps"]
        if cfg.epochs > 0:
            if cfg.train_items < 1:
                raise ValueError("epochs > 0 needs train_items (the size of the epoch)")
            steps = math.ceil(cfg.epochs * cfg.train_items / (cfg.batch_size * cfg.grad_accum))
        name = f"r{i:0{width}d}-lr{lr:.3g}-s{steps}" + ("" if cfg.sample == "draw" else f"-{s['mixture_name']}")
        runs.append(RunSpec(
            run_id=name, index=i, seed=cfg.seed + i, lr=lr, steps=steps, mixture_name=s["mixture_name"],
            mixture=s["mixture"], train_items=cfg.train_items or steps * cfg.batch_size * cfg.grad_accum,
            batch_size=cfg.batch_size, grad_accum=cfg.grad_accum,
            warmup_ratio=s.get("warmup_ratio", cfg.warmup_ratio), weight_decay=s.get("weight_decay", cfg.weight_decay),
            checkpoint_steps=checkpoint_steps(steps, cfg.checkpoints), base=cfg.base, device=device,
            precision=precision, task_hash=task_hash, drawn=s.get("drawn")))
    return runs


def run_is_finished(run_dir: Path, run: RunSpec) -> str | None:
    """``None`` when the run is complete and intact, else why it must be redone."""
    done = run_dir / "done.json"
    if not done.is_file():
        return "not finished"
    try:
        if json.loads(done.read_text()).get("config") != run.to_json():
            return "config changed"
    except ValueError:
        return "unreadable done.json"
    for step in run.checkpoint_steps:
        problem = verify_checkpoint(run_dir / "checkpoints" / f"step-{step}")
        if problem:
            return problem
        if not (run_dir / "eval" / f"step-{step}.json").is_file():
            return f"no evaluation of step {step}"
    return None


def run_resources(cfg: SweepConfig, device: str) -> Resources:
    """What one run holds: on CUDA one CPU (the training loop's) and 1/runs_per_gpu of a GPU; on the CPU its
    threads."""
    if device == "cuda":
        return Resources(cpus=1, gpus=1 / cfg.runs_per_gpu)
    return Resources(cpus=cfg.threads_per_worker)


def _train_job(job: TrainJob) -> dict:
    """One run in a worker, a Ray task or this process: its steps are reported to the sweep's progress bar."""
    throttle = Throttle()

    def progress(run_id, step, total):
        if throttle(force=step in (0, total)):
            report(run_id, step, total)

    return train_and_evaluate(job, progress, in_worker=True)


def evaluate_base(cfg: SweepConfig, data_dir: Path, task_cfg: TaskConfig, sweep_dir: Path, device: str) -> list[dict]:
    """The base model graded on every eval split before fine-tuning (step 0), once per sweep folder.

    A shift's accuracy after fine-tuning is transfer only where the base started low: this
    is the reference every report shows beside the fine-tuned population.
    """
    path = sweep_dir / "base-eval.json"
    key = {"base": cfg.base, "task_hash": data_dir.name, "eval_items": cfg.eval_items,
           "eval_batch_size": cfg.eval_batch_size}
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
            if saved.get("key") == key:
                return saved["rows"]
        except ValueError:
            pass  # unreadable: evaluate again
    from train.base import load_base
    from train.evaluate import evaluate_splits, torch_decoder
    from train.finetune import load_eval_splits

    base = load_base(cfg.base)
    model = base.model.cuda() if device == "cuda" else base.model
    splits, _ = load_eval_splits(data_dir, task_cfg, cfg.eval_items)
    results = evaluate_splits(torch_decoder(model, base.tokenizer), base.digit_format, splits,
                              batch_size=cfg.eval_batch_size)
    rows = [{"run": "base", "step": 0, "variant": TORCH_VARIANT, "split": split, **r} for split, r in results.items()]
    atomic_write_json(path, {"key": key, "rows": rows})
    return rows


def _check_sweep_yaml(path: Path, resolved: dict) -> None:
    """A sweep folder holds one population: its config may change only in how it is run (EXECUTION_FIELDS)."""
    def population(config: dict | None) -> dict | None:
        return None if config is None else {k: v for k, v in config.items() if k not in EXECUTION_FIELDS}

    if path.is_file():
        previous = read_yaml(path)
        if population(previous.get("config")) != population(resolved["config"]):
            raise ValueError(f"{path.parent} was made by a different sweep config; pass another --name "
                             f"or remove the folder (nothing was changed)")
    atomic_write_text(path, yaml.safe_dump(resolved, sort_keys=False))


def check_runs(runs: list[RunSpec], task_cfg: TaskConfig) -> None:
    """What a run cannot check by itself, before anything is written (a corrected config must not then be
    refused as "made by a different sweep config"): its mixture names splits of the task."""
    splits = set(task_cfg.specs)
    for run in runs:
        unknown = sorted(set(run.mixture) - splits)
        if unknown:
            raise ValueError(f"run {run.run_id}: mixture names unknown split(s) {unknown}; the task has "
                             f"{sorted(splits)}")


def run_sweep(cfg: SweepConfig) -> dict:
    """Train and evaluate every unfinished run of the sweep; one sweep at a time per folder. Every setting is
    checked before anything is written."""
    task_cfg = load_config(TaskConfig, cfg.task_config)
    check_base(cfg.base)  # an unreachable hub fails here, in seconds, with nothing written
    check_runs(expand_runs(cfg, "cpu", "fp32", task_hash(task_cfg)), task_cfg)
    with folder_lock(Path(cfg.out_root) / cfg.name, f"a sweep ({' '.join(sys.argv)})"), \
            open_executor(cfg.executor, cfg.ray_address, cfg.max_retries) as executor:
        gpus = executor.gpus()
        device, precision, notes = resolve_hardware(cfg, gpus)
        runs = expand_runs(cfg, device, precision, task_hash(task_cfg))
        return _run_sweep(cfg, task_cfg, runs, device, precision, notes, executor, gpus)


def _run_sweep(cfg: SweepConfig, task_cfg: TaskConfig, runs: list[RunSpec], device: str, precision: str,
               notes: list[str], executor: Executor, gpus: int) -> dict:

    started = time.perf_counter()
    sweep_dir = Path(cfg.out_root) / cfg.name
    data_dir = write_splits(task_cfg, cfg.data_root)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    _check_sweep_yaml(sweep_dir / "sweep.yaml", {
        "config": asdict(cfg), "task": asdict(task_cfg), "data": str(data_dir),
        "device": device, "precision": precision, "runs": [r.run_id for r in runs]})

    before = base_scores(evaluate_base(cfg, data_dir, task_cfg, sweep_dir, device))
    ablation = sorted({s for run in runs for s in replayed_shifts(run.mixture)})
    if ablation:
        print(f"note: the training mixture replays eval shift(s) {', '.join(ablation)}: they are in-distribution "
              "for those runs (an ablation, labelled as such in signal.json)", file=sys.stderr)

    todo = []
    for run in runs:
        why = run_is_finished(sweep_dir / run.run_id, run)
        if why:
            if why != "not finished" and (sweep_dir / run.run_id).exists():
                print(f"redoing {run.run_id}: {why}", file=sys.stderr)
            todo.append(run)
    # longest first (a run's cost is about its steps): the last runs to start are short, so no worker sits
    # idle while one long run finishes; results do not depend on the order
    todo.sort(key=lambda run: -run.steps)
    # a Ray worker may start elsewhere: it gets absolute paths (on the shared filesystem); locally they stay
    # as given, and so do the paths recorded in the results
    path = (lambda p: str(p.resolve())) if executor.name == "ray" else str
    jobs = [TrainJob(run=run, data_dir=path(data_dir), task=task_cfg,
                     run_dir=path(sweep_dir / run.run_id), eval_items=cfg.eval_items,
                     eval_batch_size=cfg.eval_batch_size, loss_every=cfg.loss_every,
                     threads=cfg.threads_per_worker if device == "cpu" else None) for run in todo]
    resources = run_resources(cfg, device)
    # on CUDA, runs_per_gpu runs share each GPU (common/executor.py)
    workers = max(1, min(cfg.runs_per_gpu * max(1, gpus) if device == "cuda" else cfg.workers, len(todo)))
    if device == "cpu" and cfg.workers == 1 and executor.name == "local":
        jobs = [replace(job, threads=None) for job in jobs]  # in this process: torch's own thread count
    where = (f"{workers} worker(s)" if executor.name == "local" else
             f"Ray tasks of {resources.cpus:g} CPU" + (f" and {resources.gpus:g} GPU" if resources.gpus else ""))
    print(f"sweep {cfg.name}: {len(runs)} runs ({len(runs) - len(todo)} already done), {where}, "
          f"{device}/{precision}, data {data_dir}")

    bar = PopulationProgress(len(runs), len(runs) - len(todo), {run.run_id: run.steps for run in todo},
                             log_runs=cfg.log_runs)
    # a failed run stops the sweep with its error; finished runs stay
    executor.map(_train_job, [(job,) for job in jobs], lambda i, summary: bar.finished(todo[i].run_id, summary),
                 workers=workers, resources=resources, on_message=bar.step)
    bar.close()

    rows = []
    for run in runs:
        for step in run.checkpoint_steps:
            rows.extend(json.loads((sweep_dir / run.run_id / "eval" / f"step-{step}.json").read_text())["rows"])
    table = upsert_rows(sweep_dir / "accuracy.csv", rows)
    check = signal_check(table, measure=cfg.measure)
    wall = time.perf_counter() - started
    atomic_write_json(sweep_dir / "signal.json", {
        "variant": TORCH_VARIANT, "points": "final checkpoint of each run", "measure": cfg.measure, "splits": check,
        "shifts_with_signal": [s for s, v in check.items() if s != "id" and v["has_signal"]],
        "before_finetuning": before, "replayed_shifts": ablation,
        "wall_seconds_this_invocation": round(wall, 1)})
    print(format_signal_table(check, before))
    print(f"wrote {sweep_dir / 'accuracy.csv'} and {sweep_dir / 'signal.json'} in {wall:.0f}s")
    return check
