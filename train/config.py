"""The train stage's configs: the base-model pretraining and the fine-tuning sweep."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from common.executor import check_executor_settings
from common.files import check_name
from train.signal import DEFAULT_MEASURE


@dataclass(frozen=True)
class PretrainConfig:
    out: str = "models/embedded-base"  # where the base is saved (save_pretrained layout)
    task_config: str = "tasks/configs/default.yaml"  # its eval prompts are never pretrained on
    seed: int = 1234  # model init and corpus stream
    steps: int = 20000  # optimizer steps
    batch_size: int = 64  # items per step
    lr: float = 1e-3  # peak learning rate (AdamW), cosine decay after warm-up
    warmup_steps: int = 500  # linear warm-up
    weight_decay: float = 0.01  # AdamW weight decay
    hidden: int = 128  # GPT-NeoX hidden size
    layers: int = 4  # transformer blocks
    heads: int = 4  # attention heads
    ffn: int = 512  # MLP width
    max_positions: int = 64  # longest sequence in tokens
    rotary_pct: float = 0.25  # share of each head's dims that get rotary position embeddings
    threads: int = 2  # torch intra-op threads
    eval_items: int = 400  # items per split for the report printed at the end
    # name -> {weight, generator parameters}: the broad corpus the base learns from
    corpus: dict[str, Any] = field(default_factory=lambda: {"add": {"weight": 1.0, "digits": [1, 4]}})

    def __post_init__(self) -> None:
        positive = ("steps", "batch_size", "hidden", "layers", "heads", "ffn", "max_positions", "threads")
        bad = [f"{k}={getattr(self, k)}" for k in positive if getattr(self, k) < 1]
        if self.hidden % max(self.heads, 1):
            bad.append(f"hidden={self.hidden} is not divisible by heads={self.heads}")
        if not self.corpus:
            bad.append("corpus is empty")
        if bad:
            raise ValueError("invalid pretrain config: " + ", ".join(bad))


# settings sample=draw can draw for each run, with their types
DRAWABLE = {"lr": float, "steps": int, "weight_decay": float, "warmup_ratio": float}

# SweepConfig fields that say how a sweep is run, not what it computes: a sweep folder may be resumed with
# other values of these (e.g. moved from the local executor to a Ray cluster); any other change is refused
EXECUTION_FIELDS = frozenset({"workers", "threads_per_worker", "runs_per_gpu", "executor", "ray_address",
                              "max_retries", "loss_every", "log_runs"})


@dataclass(frozen=True)
class SweepConfig:
    name: str = "demo"  # the sweep writes runs/<name>/
    out_root: str = "runs"  # parent of sweep folders
    base: str = "embedded"  # "embedded", a hub id (EleutherAI/pythia-70m) or a local HF directory
    task_config: str = "tasks/configs/default.yaml"  # the task preset (splits, n_eval)
    data_root: str = "data"  # task splits are written to <data_root>/<task-hash>/
    seed: int = 0  # run i is seeded with seed + i; its draws come from a stream named by (seed, i)
    # "draw": every run's settings are independent draws from `draws` (a sample: the bootstrap over runs
    # generalizes to these distributions); "grid": every combination of `grid` (ablations); "random": `runs`
    # picks from the grid's combinations
    sample: str = "draw"
    runs: int = 48  # number of runs for sample=draw and sample=random (ignored for grid)
    # sample=draw: setting -> distribution, {loguniform: [lo, hi]}, {uniform: [lo, hi]}, {int_uniform: [lo, hi]}
    # (inclusive) or {choice: [...]}; settings: lr, steps, weight_decay, warmup_ratio
    draws: dict[str, Any] = field(default_factory=lambda: {
        "lr": {"loguniform": [3e-4, 2e-3]}, "steps": {"int_uniform": [60, 200]}})
    # sample=draw: the one training mixture of every run (split name -> weight); an eval shift in it is an
    # ablation (it makes that shift in-distribution), so the sweep labels it as such
    mixture: dict[str, float] = field(default_factory=lambda: {"id": 1.0})
    # sample=grid|random: values to combine: lr, steps, mixture (name -> split weights), repeat (seeds each)
    grid: dict[str, Any] = field(default_factory=lambda: {
        "lr": [1e-3], "steps": [100], "mixture": {"id": {"id": 1.0}}})
    epochs: float = 0.0  # > 0: steps = epochs * train_items / (batch_size * grad_accum), overriding grid steps
    train_items: int = 0  # items drawn per run; 0 = steps * batch_size * grad_accum (each seen once)
    checkpoints: int = 3  # K checkpoints per run, evenly spaced, the last at the final step
    batch_size: int = 64  # per-device train batch size
    grad_accum: int = 1  # gradient accumulation steps
    warmup_ratio: float = 0.0  # share of steps with linear warm-up
    weight_decay: float = 0.0  # AdamW weight decay
    precision: str = "auto"  # "auto" (bf16/fp16 on CUDA, fp32 on CPU), "fp32", "fp16", "bf16"
    device: str = "auto"  # "auto", "cpu" or "cuda"
    eval_items: int = 0  # items per eval split; 0 = all of the task's n_eval
    measure: str = DEFAULT_MEASURE  # what the signal check reads: "digit" (share of answer digits right) or "exact"
    eval_batch_size: int = 256  # fixed batch size of greedy evaluation (left padding)
    workers: int = 2  # runs trained in parallel processes (CPU); 1 = in this process
    threads_per_worker: int = 1  # torch intra-op threads per worker
    # CUDA: runs trained at once on each GPU, as concurrent worker processes (one small run leaves a GPU
    # mostly idle; `make gpu-check` measures the aggregate throughput at 1, 4, 8 and 16)
    runs_per_gpu: int = 4
    executor: str = "local"  # "local" (worker processes on this machine) or "ray" (tasks on a Ray cluster)
    # executor=ray: the cluster to join ("auto", "ray://head:10001", ...); empty = $RAY_ADDRESS, else a local
    # Ray started for this sweep and stopped after it
    ray_address: str = ""
    max_retries: int = 3  # executor=ray: times a run is retried after its worker dies (it resumes)
    loss_every: int = 10  # log the training loss every this many steps (<run>/loss.json)
    log_runs: bool = False  # a line per run as it starts, resumes and finishes (the population bar always shows)

    def __post_init__(self) -> None:
        positive = ("checkpoints", "batch_size", "grad_accum", "eval_batch_size", "workers", "threads_per_worker",
                    "runs_per_gpu", "loss_every")
        bad = [f"{k}={getattr(self, k)}" for k in positive if getattr(self, k) < 1]
        bad += [f"{k}={getattr(self, k)}" for k in ("eval_items", "train_items", "runs", "epochs")
                if getattr(self, k) < 0]
        if not 0 <= self.warmup_ratio < 1:
            bad.append(f"warmup_ratio={self.warmup_ratio}")
        if self.sample not in ("draw", "grid", "random"):
            bad.append(f"sample={self.sample!r} (draw, grid or random)")
        if self.precision not in ("auto", "fp32", "fp16", "bf16"):
            bad.append(f"precision={self.precision!r} (auto, fp32, fp16 or bf16)")
        if self.sample == "draw" and set(self.draws) - set(DRAWABLE):
            bad.append(f"draws: unknown setting(s) {sorted(set(self.draws) - set(DRAWABLE))}; drawable: "
                       f"{sorted(DRAWABLE)}")
        if self.sample in ("grid", "random"):
            if not isinstance(self.grid, dict) or set(self.grid) - {"lr", "steps", "mixture", "repeat"}:
                bad.append(f"grid keys must be lr, steps, mixture and repeat; got {self.grid!r}")
            elif int(self.grid.get("repeat", 1)) < 1:
                bad.append("grid.repeat must be >= 1")
        if self.sample in ("draw", "random") and self.runs < 1:
            bad.append(f"runs={self.runs} (sample={self.sample} needs runs >= 1)")
        if self.measure not in ("exact", "digit"):
            bad.append(f"measure={self.measure!r} (exact or digit)")
        if self.device not in ("auto", "cpu", "cuda"):
            bad.append(f"device={self.device!r} (auto, cpu or cuda)")
        bad += check_executor_settings(self.executor, self.max_retries)
        try:
            check_name("sweep", self.name)
        except ValueError as exc:
            bad.append(str(exc))
        if bad:
            raise ValueError("invalid sweep config: " + ", ".join(bad))


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep with every setting resolved (``train.sweep.expand_runs``), made once and passed on
    as it is: its ``to_json()`` is the run's config.json, and what done.json must hold for the run to count
    as finished."""

    run_id: str  # the run's folder name: r<index>-lr<lr>-s<steps>[-<mixture name>]
    index: int  # position in the sweep
    seed: int  # the sweep's seed + index: init order, data order and the training items drawn
    lr: float  # peak learning rate (linear decay)
    steps: int  # optimizer steps
    mixture_name: str  # "fixed" (sample=draw) or the grid's name for the mixture
    mixture: dict[str, float]  # split name -> weight of its generator in the training items
    train_items: int  # training items drawn
    batch_size: int
    grad_accum: int
    warmup_ratio: float
    weight_decay: float
    checkpoint_steps: tuple[int, ...]  # the steps saved and evaluated, the last one final
    base: str  # what fine-tuning starts from
    device: str  # "cpu" or "cuda", as resolved
    precision: str  # "fp32", "fp16" or "bf16", as resolved
    task_hash: str  # names the data folder the run's splits come from
    drawn: tuple[str, ...] | None = None  # sample=draw: the settings drawn (the rest are the sweep's constants)

    def __post_init__(self) -> None:
        object.__setattr__(self, "checkpoint_steps", tuple(int(s) for s in self.checkpoint_steps))
        object.__setattr__(self, "mixture", {str(k): float(w) for k, w in self.mixture.items()})
        if self.drawn is not None:
            object.__setattr__(self, "drawn", tuple(self.drawn))
        where = f"run {self.run_id}"
        check_name("run", self.run_id)
        if not self.lr > 0:
            raise ValueError(f"{where}: lr must be > 0, got {self.lr}")
        if self.steps < 1:
            raise ValueError(f"{where}: steps must be >= 1, got {self.steps}")
        weights = list(self.mixture.values())
        if not weights or any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"{where}: mixture weights must be >= 0 with a positive sum, got {self.mixture}")
        if not self.checkpoint_steps or self.checkpoint_steps[-1] != self.steps:
            raise ValueError(f"{where}: checkpoint_steps must end at the final step {self.steps}, "
                             f"got {list(self.checkpoint_steps)}")

    def to_json(self) -> dict[str, Any]:
        """config.json's content (the same keys and values the run dicts of earlier versions had)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["checkpoint_steps"] = list(self.checkpoint_steps)
        if self.drawn is None:
            del out["drawn"]
        else:
            out["drawn"] = list(self.drawn)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunSpec:
        return cls(**data)


@dataclass(frozen=True)
class TrainJob:
    """What one worker needs to train and evaluate one run: the run, where its data and folder are, and the
    sweep's evaluation and logging settings. Picklable, so the same job goes to a worker process or a Ray
    task; its paths are absolute (a Ray worker does not share the sweep's working directory)."""

    run: RunSpec
    data_dir: str  # the task's split files (data/<task-hash>/)
    task: Any  # tasks.config.TaskConfig of the sweep
    run_dir: str  # runs/<sweep>/<run_id>
    eval_items: int  # items per eval split; 0 = the task's n_eval
    eval_batch_size: int
    threads: int | None = None  # torch intra-op threads (None: torch's default)
    loss_every: int = 10  # log the training loss every this many steps (<run>/loss.json)
