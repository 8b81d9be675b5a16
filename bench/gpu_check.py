"""`make gpu-check`: what only a CUDA GPU can show, in about 8 minutes.

1. Fine-tunes a model with pythia-70m's exact architecture (GPTNeoXConfig values of
   EleutherAI/pythia-70m, vocabulary 50304, random init: nothing is downloaded) for a few
   hundred steps in bf16 through the sweep code, and reports training tokens/s.
2. Builds and evaluates the bnb-int8 and bnb-nf4 variants on CUDA (and onnx-fp32, the
   source of trt-fp16), with their parity checks.
3. Builds trt-fp16 only where TensorRT is importable.

Everything is written under a temporary folder (or --out) and summarised on stdout.
Without a GPU it says so and exits 0, so CI and CPU machines never fail on it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYTHIA_70M = dict(vocab_size=50304, hidden_size=512, num_hidden_layers=6, num_attention_heads=8,
                  intermediate_size=2048, rotary_pct=0.25, rotary_emb_base=10000, max_position_embeddings=2048,
                  use_parallel_residual=True, tie_word_embeddings=False, layer_norm_eps=1e-5, hidden_act="gelu",
                  initializer_range=0.02)


def make_base(out: Path, arch: dict | None = None, seed: int = 0) -> Path:
    """pythia-70m's architecture (or ``arch``), random init from ``seed``, with the embedded char
    tokenizer (ids < 50304)."""
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from train.base import build_char_tokenizer

    tok = build_char_tokenizer()
    tok.save_pretrained(out)
    cfg = GPTNeoXConfig(bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
                        pad_token_id=tok.pad_token_id, **(arch or PYTHIA_70M))
    torch.manual_seed(seed)
    model = GPTNeoXForCausalLM(cfg)
    model.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--eval-items", type=int, default=200)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--dry-run", action="store_true", help="CPU, fp32, 4 steps: check the script itself")
    args = parser.parse_args(argv)

    import torch

    device, precision = ("cpu", "fp32") if args.dry_run else ("cuda", "bf16")
    if args.dry_run:
        args.steps, args.eval_items = 4, 40
    elif not torch.cuda.is_available():
        print("gpu-check: no CUDA GPU here; nothing to check (this is not a failure)")
        return 0
    import transformers

    from common.config import load_config
    from export.config import ExportConfig
    from export.pipeline import export_sweep
    from export.report import format_summary
    from export.tensorrt import trt_available
    from tasks.dataset import sweep_data
    from train.base import load_tokenizer
    from train.config import SweepConfig
    from train.sweep import run_sweep

    root = args.out or Path(tempfile.mkdtemp(prefix="fracture-gpu-"))
    where = "CPU (dry run)" if args.dry_run else torch.cuda.get_device_name(0)
    print(f"gpu-check on {where}: torch {torch.__version__}, "
          f"transformers {transformers.__version__}, out {root}", flush=True)
    base = make_base(root / "pythia70m-arch")
    params = sum(p.numel() for p in transformers.AutoModelForCausalLM.from_pretrained(base).parameters())
    print(f"base: pythia-70m architecture, {params / 1e6:.1f}M parameters, random init", flush=True)

    cfg = load_config(SweepConfig, overrides={
        "name": "gpu", "out_root": str(root / "runs"), "data_root": str(root / "data"), "base": str(base),
        "task_config": str(REPO / "tasks/configs/default.yaml"),
        "sample": "grid", "grid": {"lr": [3e-4], "steps": [args.steps], "mixture": {"id": {"id": 1.0}}},
        "checkpoints": 1, "batch_size": 64, "eval_items": args.eval_items, "eval_batch_size": 256,
        "workers": 1, "device": device, "precision": precision})
    started = time.perf_counter()
    run_sweep(cfg)
    sweep = root / "runs" / "gpu"
    run_dir = next(p for p in sweep.iterdir() if p.is_dir())
    done = json.loads((run_dir / "done.json").read_text())
    data = sweep_data(sweep)
    tok = load_tokenizer(str(base))
    sample = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines()[:2000]]
    per_item = statistics.mean(len(tok(it["prompt"] + it["answer"])["input_ids"]) + 1 for it in sample)
    tokens = done["config"]["train_items"] * per_item
    print(f"fine-tuning: {args.steps} steps x batch 64 in {precision}, {done['train_seconds']:.1f}s of training, "
          f"{tokens / done['train_seconds']:.0f} tokens/s ({done['config']['train_items'] / done['train_seconds']:.0f}"
          f" samples/s); sweep wall {time.perf_counter() - started:.0f}s", flush=True)

    variants = ["onnx-fp32", "bnb-int8", "bnb-nf4"]
    why = trt_available()
    if why:
        print(f"trt-fp16 not built: {why}")
    else:
        variants.append("trt-fp16")
    summary = export_sweep(ExportConfig(sweep=str(sweep), variants=tuple(variants), workers=1, threads=8))
    print(format_summary(summary, sweep))
    for m in summary["manifests"]:
        p = m["parity"]
        print(f"{m['variant']:10} bits/param {m['effective_bits_per_param']:.2f}  greedy agreement "
              f"{p['greedy_agreement']:.3f}  max|dlogit| {p['max_abs_logit_diff']:.3g}  passed {p['passed']}")
    for msg in summary["failed"]:
        print(f"FAILED {msg}")
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
