"""The export stage's config: which variants of which checkpoints, and how to evaluate them."""

from __future__ import annotations

from dataclasses import dataclass

from common.executor import check_executor_settings

# The demo's default set: full precision, 4-bit, real 2-bit (MatMulNBits), and the noise-matched control
# of the lowest-bit variant (int8 is left to the study: it stays within 0.1-0.2% of fp32 accuracy, and a
# variant costs the demo about a minute) (`make study` builds every variant's control). `python -m export --list`
# shows every registered variant.
DEFAULT_VARIANTS = ("onnx-fp32", "ort-int4", "ort-int2", "noise@ort-int2")


@dataclass(frozen=True)
class CheckpointWorkers:
    """How the checkpoints of a sweep are spread (``python -m export`` and ``export evaluate`` alike)."""

    workers: int = 2  # checkpoints handled in parallel processes
    threads: int = 1  # ONNX Runtime / torch intra-op threads per worker
    executor: str = "local"  # "local" (worker processes here) or "ray" (one task per checkpoint on a Ray cluster)
    ray_address: str = ""  # executor=ray: the cluster to join; empty = $RAY_ADDRESS, else a local Ray for this run
    max_retries: int = 3  # executor=ray: times a checkpoint's task is retried after its worker dies

    def worker_problems(self) -> list[str]:
        bad = [f"{k}={getattr(self, k)}" for k in ("workers", "threads") if getattr(self, k) < 1]
        return bad + check_executor_settings(self.executor, self.max_retries)


@dataclass(frozen=True)
class ExportConfig(CheckpointWorkers):
    sweep: str = "runs/demo"  # the sweep folder written by `python -m train sweep`
    variants: tuple[str, ...] = DEFAULT_VARIANTS  # registry names (sim-w2..sim-w8, noise@<variant>), or "all"
    checkpoints: str = "final"  # "final": each run's last checkpoint; "all": every checkpoint
    runs: tuple[str, ...] = ()  # only these run ids (default: every run of the sweep)
    eval_batch_size: int = 0  # 0 = the sweep's eval_batch_size, so variants and torch are graded alike
    parity_batch: int = 64  # dev items in the logit comparison
    force: bool = False  # rebuild and re-evaluate even when a verified variant exists

    def __post_init__(self) -> None:
        bad = self.worker_problems() + ([f"parity_batch={self.parity_batch}"] if self.parity_batch < 1 else [])
        if self.eval_batch_size < 0:
            bad.append(f"eval_batch_size={self.eval_batch_size}")
        if self.checkpoints not in ("final", "all"):
            bad.append(f"checkpoints={self.checkpoints!r} (final or all)")
        if not self.variants:
            bad.append("variants is empty")
        if bad:
            raise ValueError("invalid export config: " + ", ".join(bad))


@dataclass(frozen=True)
class EvaluateConfig(CheckpointWorkers):
    """``python -m export evaluate``: grade a sweep's checkpoints and variants on splits added after training."""

    sweep: str = "runs/demo"  # the sweep folder (its accuracy.csv gains the rows)
    task_config: str = ""  # a task preset with the sweep's in-domain settings and the shifts to add

    def __post_init__(self) -> None:
        bad = self.worker_problems()
        if bad:
            raise ValueError("invalid evaluate config: " + ", ".join(bad))
        if not self.task_config:
            raise ValueError("task_config is required: a task preset (tasks/configs/*.yaml) with the shifts to add")
