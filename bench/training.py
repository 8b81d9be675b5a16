"""Training throughput: the sweep's fine-tuning against a plain Trainer with default settings.

Same base, same items, same batch size and steps, one thread each. The sweep's path is
``train.finetune.train_and_evaluate`` (its Trainer settings, progress callback and checkpoint
saves); the baseline is ``Trainer(model, TrainingArguments(output_dir, per_device_train_batch_size,
max_steps))``. Each side is timed over its ``trainer.train()`` alone (the sweep's from the run's
``train_started_at`` / ``train_ended_at``), so loading the base and encoding the items, done by
both, count on neither. The two alternate over ``repeats`` rounds (each first in every other
round), each round with its own seed on both sides. A ratio near 1 means the sweep adds no
overhead.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from bench.common import RESULTS, markdown_table, paired_ratio, publish, ratio_table, record_ratio, spread
from common.config import load_config
from tasks.config import TaskConfig


def bench_training(steps: int = 24, batch_size: int = 64, threads: int = 1, repeats: int = 5,
                   task_config: str = "tasks/configs/default.yaml", out_dir: Path | None = RESULTS) -> dict:
    import torch
    import transformers
    from transformers import Trainer, TrainingArguments

    from tasks.dataset import sample_training, write_splits
    from train.base import load_base
    from train.config import RunSpec, TrainJob
    from train.data import PadCollator, encode_items
    from train.finetune import checkpoint_steps, train_and_evaluate

    torch.set_num_threads(threads)
    task_cfg = load_config(TaskConfig, task_config)
    items = steps * batch_size

    def sweep_side(tmp: Path, data_dir: Path, r: int) -> float:
        run = RunSpec(run_id=f"bench{r}", index=0, seed=r, lr=1e-3, steps=steps, mixture_name="id",
                      mixture={"id": 1.0}, train_items=items, batch_size=batch_size, grad_accum=1,
                      warmup_ratio=0.0, weight_decay=0.0, checkpoint_steps=checkpoint_steps(steps, 3),
                      base="embedded", device="cpu", precision="fp32", task_hash="bench")
        summary = train_and_evaluate(TrainJob(run, str(data_dir), task_cfg, str(tmp / f"sweep{r}"),
                                              eval_items=1, eval_batch_size=1, threads=threads))
        return summary["train_ended_at"] - summary["train_started_at"]

    def plain_side(tmp: Path, r: int) -> float:
        transformers.set_seed(r)
        base = load_base("embedded")
        train = sample_training(task_cfg.specs, {"id": 1.0}, items, r, task_cfg.answer_order, frozenset())
        dataset = encode_items(train, base.tokenizer, base.digit_format)
        args = TrainingArguments(output_dir=str(tmp / f"plain{r}"), per_device_train_batch_size=batch_size,
                                 max_steps=steps, learning_rate=1e-3, report_to="none", use_cpu=True, seed=r,
                                 disable_tqdm=True)
        trainer = Trainer(model=base.model, args=args, train_dataset=dataset,
                          data_collator=PadCollator(base.tokenizer.pad_token_id))
        started = time.time()  # the clock the sweep's train_started_at / train_ended_at are read on
        trainer.train()
        return time.time() - started

    sweep_s, plain_s = [], []
    with tempfile.TemporaryDirectory(prefix="fracture-bench-train-") as tmp:
        data_dir = write_splits(task_cfg, Path(tmp) / "data")
        for r in range(repeats):
            sides = [(sweep_s, lambda r=r: sweep_side(Path(tmp), data_dir, r)),
                     (plain_s, lambda r=r: plain_side(Path(tmp), r))]
            for seconds, side in sides if r % 2 == 0 else sides[::-1]:
                seconds.append(side())
    results = {name: {"seconds": {**spread(s), "samples": s}, "samples_per_s": spread([items / x for x in s])}
               for name, s in (("sweep_finetune", sweep_s), ("plain_trainer", plain_s))}
    ratios, ratio_spread = {}, {}
    # the sweep's samples/s over the plain Trainer's: the plain side's seconds over the sweep's, round by round
    record_ratio(ratios, ratio_spread, "sweep_vs_plain_trainer", paired_ratio(plain_s, sweep_s))
    payload = {"steps": steps, "batch_size": batch_size, "threads": threads, "repeats": repeats, "results": results,
               "ratios": ratios, "ratio_spread": ratio_spread}
    rows = [[k, f"{v['samples_per_s']['median']:.0f}", f"{v['samples_per_s']['q1']:.0f}-{v['samples_per_s']['q3']:.0f}"]
            for k, v in results.items()]
    publish("training", payload, out_dir, [markdown_table(["training", "samples/s (median)", "IQR"], rows),
                                           ratio_table(ratios, ratio_spread)])
    return json.loads(json.dumps(payload))
