"""One fine-tuning run: HF Trainer from the base, K atomic checkpoints, then evaluation."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from common.accuracy_table import TORCH_VARIANT
from common.files import atomic_write_json
from tasks.config import TaskConfig
from tasks.dataset import eval_prompts, read_jsonl, resolve_specs, sample_training, split_file
from train.checkpoints import save_checkpoint, verify_checkpoint
from train.config import RunSpec

Progress = Callable[[str, int, int], None]  # (run_id, step, total_steps)


def checkpoint_steps(steps: int, k: int) -> list[int]:
    """K evenly spaced steps ending at ``steps`` (fewer when steps < K)."""
    return sorted({max(1, round(steps * (i + 1) / k)) for i in range(k)})


def load_eval_splits(data_dir: Path, task_cfg: TaskConfig, eval_items: int) -> tuple[dict, frozenset]:
    """Eval splits keyed by the `split` label (dev is graded as ``id``) and all eval prompts."""
    full = {}
    for name in resolve_specs(task_cfg):
        full[name] = read_jsonl(data_dir / f"{split_file(name)}.jsonl")
    banned = eval_prompts(full)
    take = eval_items or task_cfg.n_eval
    return {k: v[:take] for k, v in full.items()}, banned


class OrphanGuard:
    """In a worker process: exit as soon as the sweep that started it is gone (killed), so an
    orphan never writes into a run folder that a resumed sweep is redoing."""

    def __init__(self, enabled: bool):
        self.parent = os.getppid() if enabled else None

    def check(self) -> None:
        if self.parent is not None and os.getppid() != self.parent:
            os._exit(1)


def _trainer_callback(run_id: str, total: int, save_at: set[int], save: Callable, progress: Progress | None,
                      guard: OrphanGuard):
    from transformers import TrainerCallback

    class Checkpointing(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            guard.check()
            if state.global_step in save_at:
                save(model, state.global_step)
            if progress:
                progress(run_id, state.global_step, total)

    return Checkpointing()


def train_and_evaluate(run: RunSpec, data_dir: str, task_cfg: TaskConfig, run_dir: str, eval_items: int,
                       eval_batch_size: int, threads: int | None = None, progress: Progress | None = None,
                       in_worker: bool = False) -> dict:
    """Train one run, save its checkpoints, evaluate each from disk; returns the run summary."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, PrinterCallback, Trainer, TrainingArguments

    from train.base import load_base, load_tokenizer
    from train.data import PadCollator, encode_items
    from train.evaluate import evaluate_splits, torch_decoder

    if threads:
        torch.set_num_threads(threads)
    guard = OrphanGuard(in_worker)
    run_dir = Path(run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)  # an unfinished run is redone from scratch
    run_dir.mkdir(parents=True)
    atomic_write_json(run_dir / "config.json", run.to_json())
    transformers.set_seed(run.seed)
    started = time.perf_counter()

    use_cuda = run.device == "cuda"
    base = load_base(run.base)
    eval_splits, banned = load_eval_splits(Path(data_dir), task_cfg, eval_items)
    items = sample_training(resolve_specs(task_cfg), run.mixture, run.train_items, run.seed,
                            task_cfg.answer_order, banned)
    dataset = encode_items(items, base.tokenizer, base.digit_format)

    meta = {"run": run.run_id, "digit_format": base.digit_format, "answer_order": task_cfg.answer_order,
            "base": run.base}

    tokenizer = base.tokenizer

    def save(model, step):
        save_checkpoint(model, tokenizer, run_dir / "checkpoints" / f"step-{step}", meta | {"step": step})

    args = TrainingArguments(
        output_dir=str(run_dir / ".trainer"), max_steps=run.steps, learning_rate=run.lr,
        per_device_train_batch_size=run.batch_size, gradient_accumulation_steps=run.grad_accum,
        warmup_ratio=run.warmup_ratio, weight_decay=run.weight_decay, lr_scheduler_type="linear",
        save_strategy="no", logging_strategy="no", report_to="none", disable_tqdm=True, seed=run.seed,
        use_cpu=not use_cuda, fp16=run.precision == "fp16", bf16=run.precision == "bf16",
        dataloader_pin_memory=use_cuda,
    )
    trainer = Trainer(model=base.model, args=args, train_dataset=dataset,
                      data_collator=PadCollator(tokenizer.pad_token_id),
                      callbacks=[_trainer_callback(run.run_id, run.steps, set(run.checkpoint_steps),
                                                   save, progress, guard)])
    trainer.remove_callback(PrinterCallback)  # the sweep's progress bar reports instead
    trainer.train()
    train_seconds = time.perf_counter() - started
    shutil.rmtree(run_dir / ".trainer", ignore_errors=True)
    del trainer, base

    for step in run.checkpoint_steps:
        guard.check()
        ckpt = run_dir / "checkpoints" / f"step-{step}"
        problem = verify_checkpoint(ckpt)
        if problem:
            raise RuntimeError(f"checkpoint failed verification right after saving: {problem}")
        model = AutoModelForCausalLM.from_pretrained(ckpt)
        if use_cuda:
            model = model.cuda()
        tok = load_tokenizer(str(ckpt))
        results = evaluate_splits(torch_decoder(model, tok), meta["digit_format"], eval_splits,
                                  batch_size=eval_batch_size)
        rows = [{"run": run.run_id, "step": step, "variant": TORCH_VARIANT, "split": split, **r}
                for split, r in results.items()]
        atomic_write_json(run_dir / "eval" / f"step-{step}.json", {"checkpoint": str(ckpt), "rows": rows})
    summary = {"run_id": run.run_id, "train_seconds": round(train_seconds, 2),
               "total_seconds": round(time.perf_counter() - started, 2)}
    guard.check()
    atomic_write_json(run_dir / "done.json", {"config": run.to_json(), **summary})
    return summary
