"""One fine-tuning run: HF Trainer from the base, K atomic checkpoints, then evaluation."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from common.accuracy_table import TORCH_VARIANT
from common.files import atomic_write_json
from common.manifest import verify, write_manifest
from tasks.config import TaskConfig
from tasks.dataset import eval_prompts, read_jsonl, sample_training, split_file
from train.checkpoints import save_checkpoint, verify_checkpoint
from train.config import RunSpec, TrainJob

Progress = Callable[[str, int, int], None]  # (run_id, step, total_steps)


def checkpoint_steps(steps: int, k: int) -> list[int]:
    """K evenly spaced steps ending at ``steps`` (fewer when steps < K)."""
    return sorted({max(1, round(steps * (i + 1) / k)) for i in range(k)})


def load_eval_splits(data_dir: Path, task_cfg: TaskConfig, eval_items: int) -> tuple[dict, frozenset]:
    """Eval splits keyed by the `split` label (dev is graded as ``id``) and all eval prompts."""
    full = {}
    for name in task_cfg.specs:
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


RESUME_MANIFEST = "fracture-resume.json"  # in .trainer/checkpoint-<N>/: the Trainer state there is whole


def _trainer_state_ok(folder: Path) -> bool:
    """The Trainer's own checkpoint (optimizer, scheduler, RNG, data position) is whole: its manifest, written
    after the Trainer saved it, lists every file with its sha256."""
    return verify(folder, "trainer-state", name=RESUME_MANIFEST) is None


def resume_point(run: RunSpec, run_dir: Path) -> int:
    """The step a killed run can go on from (0: from scratch): the last checkpoint that verifies, with every
    earlier one, and that has the Trainer state beside it (the final checkpoint needs none: only its
    evaluation is left). Training on from there gives the weights an undisturbed run has (the Trainer
    restores the optimizer, the scheduler, the RNG streams and the position in the data)."""
    try:
        if json.loads((run_dir / "config.json").read_text()) != run.to_json():
            return 0
    except (OSError, ValueError):
        return 0
    point = 0
    for step in run.checkpoint_steps:
        if verify_checkpoint(run_dir / "checkpoints" / f"step-{step}"):
            break
        if step == run.steps or _trainer_state_ok(run_dir / ".trainer" / f"checkpoint-{step}"):
            point = step
    return point


def _loss_curve(log_history: list[dict]) -> dict:
    logged = [e for e in log_history if "loss" in e]
    return {"step": [e["step"] for e in logged], "loss": [e["loss"] for e in logged]}


def _trainer_callback(run_id: str, total: int, save_at: set[int], save: Callable, progress: Progress | None,
                      guard: OrphanGuard, loss_path: Path):
    from transformers import TrainerCallback

    class Checkpointing(TrainerCallback):
        """Our checkpoint at each checkpoint step, and the Trainer's resume state beside it (not at the final
        step: nothing is left to resume there)."""

        def on_step_end(self, args, state, control, model=None, **kwargs):
            guard.check()
            if state.global_step in save_at:
                save(model, state.global_step)
                control.should_save = state.global_step < total
            if progress:
                progress(run_id, state.global_step, total)

        def on_save(self, args, state, control, **kwargs):
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            write_manifest(folder, "trainer-state", name=RESUME_MANIFEST)
            for old in Path(args.output_dir).glob("checkpoint-*"):  # the previous one only once this one is whole
                if old != folder:
                    shutil.rmtree(old, ignore_errors=True)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                atomic_write_json(loss_path, _loss_curve(state.log_history))

    return Checkpointing()


def train_and_evaluate(job: TrainJob, progress: Progress | None = None, in_worker: bool = False) -> dict:
    """Train one run, save its checkpoints, evaluate each from disk; returns the run summary.

    A run killed part-way goes on from its last whole checkpoint (``resume_point``), and a checkpoint
    already evaluated is not evaluated again: the results equal an undisturbed run's.
    """
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, PrinterCallback, Trainer, TrainingArguments

    from train.base import load_base, load_tokenizer
    from train.data import PadCollator, encode_items
    from train.evaluate import evaluate_splits, torch_decoder

    run, task_cfg = job.run, job.task
    if job.threads:
        torch.set_num_threads(job.threads)
    guard = OrphanGuard(in_worker)
    run_dir = Path(job.run_dir)
    resume = resume_point(run, run_dir)
    if resume == 0:  # nothing to go on from: from scratch
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        atomic_write_json(run_dir / "config.json", run.to_json())
    else:  # what came after the resume point is made again, identically
        for step in run.checkpoint_steps:
            if step > resume:
                shutil.rmtree(run_dir / "checkpoints" / f"step-{step}", ignore_errors=True)
                (run_dir / "eval" / f"step-{step}.json").unlink(missing_ok=True)
    if progress:
        progress(run.run_id, resume, run.steps)
    transformers.set_seed(run.seed)
    started = time.perf_counter()

    use_cuda = run.device == "cuda"
    eval_splits, banned = load_eval_splits(Path(job.data_dir), task_cfg, job.eval_items)
    base = load_base(run.base)
    meta = {"run": run.run_id, "digit_format": base.digit_format, "answer_order": task_cfg.answer_order,
            "base": run.base}
    train_started_at = train_ended_at = None
    if resume < run.steps:
        items = sample_training(task_cfg.specs, run.mixture, run.train_items, run.seed,
                                task_cfg.answer_order, banned)
        dataset = encode_items(items, base.tokenizer, base.digit_format)
        tokenizer = base.tokenizer

        def save(model, step):
            save_checkpoint(model, tokenizer, run_dir / "checkpoints" / f"step-{step}", meta | {"step": step})

        args = TrainingArguments(
            output_dir=str(run_dir / ".trainer"), max_steps=run.steps, learning_rate=run.lr,
            per_device_train_batch_size=run.batch_size, gradient_accumulation_steps=run.grad_accum,
            warmup_ratio=run.warmup_ratio, weight_decay=run.weight_decay, lr_scheduler_type="linear",
            save_strategy="no", logging_strategy="steps", logging_steps=min(job.loss_every, run.steps),
            report_to="none", disable_tqdm=True, seed=run.seed, use_cpu=not use_cuda, fp16=run.precision == "fp16",
            bf16=run.precision == "bf16", dataloader_pin_memory=use_cuda,
        )
        trainer = Trainer(model=base.model, args=args, train_dataset=dataset,
                          data_collator=PadCollator(tokenizer.pad_token_id),
                          callbacks=[_trainer_callback(run.run_id, run.steps, set(run.checkpoint_steps),
                                                       save, progress, guard, run_dir / "loss.json")])
        trainer.remove_callback(PrinterCallback)  # the sweep's progress bar reports instead
        train_started_at = time.time()
        trainer.train(resume_from_checkpoint=str(run_dir / ".trainer" / f"checkpoint-{resume}") if resume else None)
        train_ended_at = time.time()
        atomic_write_json(run_dir / "loss.json", _loss_curve(trainer.state.log_history))
        del trainer
    train_seconds = time.perf_counter() - started
    shutil.rmtree(run_dir / ".trainer", ignore_errors=True)
    del base

    evaluated = []
    for step in run.checkpoint_steps:
        guard.check()
        ckpt = run_dir / "checkpoints" / f"step-{step}"
        result = run_dir / "eval" / f"step-{step}.json"
        problem = verify_checkpoint(ckpt)
        if problem:
            raise RuntimeError(f"checkpoint failed verification: {problem}")
        if result.is_file():  # graded before this run was interrupted
            continue
        model = AutoModelForCausalLM.from_pretrained(ckpt)
        if use_cuda:
            model = model.cuda()
        tok = load_tokenizer(str(ckpt))
        results = evaluate_splits(torch_decoder(model, tok), meta["digit_format"], eval_splits,
                                  batch_size=job.eval_batch_size)
        rows = [{"run": run.run_id, "step": step, "variant": TORCH_VARIANT, "split": split, **r}
                for split, r in results.items()]
        atomic_write_json(result, {"checkpoint": str(ckpt), "rows": rows})
        evaluated.append(step)
    summary = {"run_id": run.run_id, "train_seconds": round(train_seconds, 2),
               "total_seconds": round(time.perf_counter() - started, 2),
               "train_started_at": train_started_at, "train_ended_at": train_ended_at,
               "resumed_from_step": resume, "evaluated_steps": evaluated}
    guard.check()
    atomic_write_json(run_dir / "done.json", {"config": run.to_json(), **summary})
    return summary
