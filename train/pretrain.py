"""Pretrain the embedded base from scratch on a broad synthetic arithmetic corpus.

Made once and shipped in models/embedded-base (``make demo`` never pretrains). The
default task's eval prompts are excluded from the corpus, so no eval item is memorised.
"""

from __future__ import annotations

import json
import platform
import random
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.utils.data

from common.config import load_config
from common.files import atomic_write_json, sha256_file
from tasks.config import TaskConfig
from tasks.dataset import build_eval_splits, eval_prompts
from tasks.spec import SplitSpec
from train.base import build_char_tokenizer, embedded_model_config
from train.config import PretrainConfig
from train.data import PadCollator, encode_items
from train.evaluate import evaluate_splits, torch_decoder


def corpus_specs(cfg: PretrainConfig) -> tuple[list[SplitSpec], list[float]]:
    specs, weights = [], []
    for name, entry in cfg.corpus.items():
        params = dict(entry)
        weights.append(float(params.pop("weight", 1.0)))
        specs.append(SplitSpec.from_mapping(name, params))
    return specs, weights


class CorpusStream(torch.utils.data.IterableDataset):
    """An endless, seeded stream of tokenized corpus items."""

    def __init__(self, cfg: PretrainConfig, tokenizer, exclude: frozenset[str], answer_order: str):
        super().__init__()
        self.specs, self.weights = corpus_specs(cfg)
        self.tokenizer, self.exclude, self.answer_order = tokenizer, exclude, answer_order
        self.seed = cfg.seed

    def __iter__(self):
        rng = random.Random(f"fracture-pretrain:{self.seed}")
        while True:
            batch = []
            while len(batch) < 1024:
                spec = rng.choices(self.specs, self.weights)[0]
                item = spec.sample(rng, self.answer_order)
                if item["prompt"] not in self.exclude:
                    batch.append(item)
            yield from encode_items(batch, self.tokenizer, "compact")


def pretrain(cfg: PretrainConfig, argv: list[str] | None = None) -> Path:
    import transformers
    from transformers import GPTNeoXForCausalLM, Trainer, TrainingArguments

    torch.set_num_threads(cfg.threads)
    transformers.set_seed(cfg.seed)
    task_cfg = load_config(TaskConfig, cfg.task_config)
    eval_splits = build_eval_splits(task_cfg)
    tokenizer = build_char_tokenizer()
    model = GPTNeoXForCausalLM(embedded_model_config(
        len(tokenizer), cfg.hidden, cfg.layers, cfg.heads, cfg.ffn, cfg.max_positions, cfg.rotary_pct))
    n_params = sum(p.numel() for p in model.parameters())
    print(f"pretraining a {n_params / 1e6:.2f}M-parameter GPT-NeoX for {cfg.steps} steps on:\n{corpus_summary(cfg)}")

    out = Path(cfg.out)
    work = out.with_name(out.name + ".tmp")
    shutil.rmtree(work, ignore_errors=True)
    args = TrainingArguments(
        output_dir=str(work / "trainer"), max_steps=cfg.steps, per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.lr, warmup_steps=cfg.warmup_steps, weight_decay=cfg.weight_decay,
        lr_scheduler_type="cosine", logging_steps=max(cfg.steps // 20, 1), save_strategy="no",
        report_to="none", use_cpu=not torch.cuda.is_available(), seed=cfg.seed, dataloader_pin_memory=False,
    )
    stream = CorpusStream(cfg, tokenizer, eval_prompts(eval_splits), task_cfg.answer_order)
    trainer = Trainer(model=model, args=args, train_dataset=stream, data_collator=PadCollator(tokenizer.pad_token_id))
    start = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - start

    model = model.cpu().float()
    sample = {name: items[:cfg.eval_items] for name, items in eval_splits.items()}
    report = evaluate_splits(torch_decoder(model, tokenizer), "compact", sample)
    accuracy = {name: r["correct"] / r["n"] for name, r in report.items()}

    shutil.rmtree(work / "trainer", ignore_errors=True)
    model.save_pretrained(work, safe_serialization=True)
    tokenizer.save_pretrained(work)
    atomic_write_json(work / "fracture.json", {"digit_format": "compact", "answer_order": task_cfg.answer_order})
    files = {p.name: sha256_file(p) for p in sorted(work.iterdir()) if p.is_file()}
    atomic_write_json(work / "pretrain.json", {
        "command": "python -m train pretrain " + " ".join(argv or []),
        "config": asdict(cfg), "parameters": n_params, "wall_seconds": round(wall, 1),
        "accuracy_after_pretraining": accuracy, "eval_items_per_split": cfg.eval_items,
        "sha256": files, "torch": torch.__version__, "transformers": transformers.__version__,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
    })
    shutil.rmtree(out, ignore_errors=True)
    work.rename(out)
    print(f"saved {out} in {wall:.0f}s; exact match per split: "
          + ", ".join(f"{k} {v:.3f}" for k, v in accuracy.items()))
    return out


def corpus_summary(cfg: PretrainConfig) -> str:
    specs, weights = corpus_specs(cfg)
    total = sum(weights)
    return "\n".join(f"{w / total:6.1%}  {s.name}: {json.dumps(s.params())}" for s, w in zip(specs, weights))
