"""Training throughput: the sweep's fine-tuning against a plain Trainer with default settings.

Same base, same items, same batch size and steps, one thread each. The sweep's path is
``train.finetune.train_and_evaluate`` (its Trainer settings, progress callback and
checkpoint saves; only its training seconds are counted); the baseline is
``Trainer(model, TrainingArguments(output_dir, per_device_train_batch_size, max_steps))``.
A ratio near 1 means the sweep adds no overhead.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from bench.common import RESULTS, markdown_table, publish
from common.config import load_config
from tasks.config import TaskConfig


def bench_training(steps: int = 40, batch_size: int = 64, threads: int = 1, repeats: int = 2,
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
    sweep_s, plain_s = [], []
    with tempfile.TemporaryDirectory(prefix="fracture-bench-train-") as tmp:
        data_dir = write_splits(task_cfg, Path(tmp) / "data")
        for r in range(repeats):
            run = RunSpec(run_id=f"bench{r}", index=0, seed=r, lr=1e-3, steps=steps, mixture_name="id",
                          mixture={"id": 1.0}, train_items=items, batch_size=batch_size, grad_accum=1,
                          warmup_ratio=0.0, weight_decay=0.0, checkpoint_steps=checkpoint_steps(steps, 3),
                          base="embedded", device="cpu", precision="fp32", task_hash="bench")
            summary = train_and_evaluate(TrainJob(run, str(data_dir), task_cfg, str(Path(tmp) / f"sweep{r}"),
                                                  eval_items=1, eval_batch_size=1, threads=threads))
            sweep_s.append(summary["train_seconds"])

            transformers.set_seed(r)
            base = load_base("embedded")
            train = sample_training(task_cfg.specs, {"id": 1.0}, items, r, task_cfg.answer_order,
                                    frozenset())
            dataset = encode_items(train, base.tokenizer, base.digit_format)
            args = TrainingArguments(output_dir=str(Path(tmp) / f"plain{r}"), per_device_train_batch_size=batch_size,
                                     max_steps=steps, learning_rate=1e-3, report_to="none", use_cpu=True, seed=r)
            trainer = Trainer(model=base.model, args=args, train_dataset=dataset,
                              data_collator=PadCollator(base.tokenizer.pad_token_id))
            t = time.perf_counter()
            trainer.train()
            plain_s.append(time.perf_counter() - t)
    results = {"sweep_finetune": {"seconds": sweep_s, "samples_per_s": items / min(sweep_s)},
               "plain_trainer": {"seconds": plain_s, "samples_per_s": items / min(plain_s)}}
    ratios = {"sweep_vs_plain_trainer": results["sweep_finetune"]["samples_per_s"]
              / results["plain_trainer"]["samples_per_s"]}
    payload = {"steps": steps, "batch_size": batch_size, "threads": threads, "results": results, "ratios": ratios}
    publish("training", payload, out_dir, [
        markdown_table(["training", "samples/s (best of repeats)"],
                       [[k, f"{v['samples_per_s']:.0f}"] for k, v in results.items()]),
        markdown_table(list(ratios), [[round(v, 3) for v in ratios.values()]])])
    return json.loads(json.dumps(payload))
