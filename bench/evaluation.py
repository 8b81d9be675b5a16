"""Evaluation throughput: fracture's batched evaluation against per-item ``generate``.

Same checkpoint, same dev items, same greedy answers (checked): items/s of
``train.evaluate`` at the sweep's eval batch size (torch), of the same grading path on
the ONNX runtime (how variants are evaluated), and of a loop calling transformers
``generate`` once per item, as a hand-rolled evaluation would.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from bench.common import RESULTS, markdown_table, timed, write_results
from bench.decode import find_variant


def bench_evaluation(sweep: Path, items: int = 400, per_item: int = 100, repeats: int = 3, threads: int = 1,
                     out_dir: Path | None = RESULTS) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from export.runtime import OnnxCausalLM
    from tasks.dataset import read_jsonl
    from tasks.formatting import format_prompt
    from train.base import load_tokenizer
    from train.evaluate import greedy_decode

    torch.set_num_threads(threads)
    ckpt, folder = find_variant(sweep)
    cfg = yaml.safe_load((sweep / "sweep.yaml").read_text())
    batch = cfg["config"]["eval_batch_size"]
    digit_format = json.loads((ckpt / "fracture.json").read_text())["digit_format"]
    dev = read_jsonl(Path(cfg["data"]) / "dev.jsonl")[:items]
    prompts = [format_prompt(it["prompt"], digit_format) for it in dev]
    model = AutoModelForCausalLM.from_pretrained(ckpt).eval()
    tok = load_tokenizer(str(ckpt))
    runtime = OnnxCausalLM(folder, threads=threads, providers=["CPUExecutionProvider"])
    max_new = max(len(it["answer"]) for it in dev) + 2

    batched = greedy_decode(model, tok, prompts, max_new, batch)
    single = [greedy_decode(model, tok, [p], max_new, 1)[0] for p in prompts[:per_item]]
    assert single == batched[:per_item], "per-item and batched evaluation disagree"
    assert runtime.decoder()(prompts, max_new, batch) == batched, "runtime and torch evaluation disagree"

    results = {
        "torch_batched": timed(lambda: greedy_decode(model, tok, prompts, max_new, batch), repeats) | {"items": items},
        "runtime_batched": timed(lambda: runtime.decoder()(prompts, max_new, batch), repeats) | {"items": items},
        "per_item_generate": timed(lambda: [greedy_decode(model, tok, [p], max_new, 1) for p in prompts[:per_item]],
                                   repeats) | {"items": per_item},
    }
    for r in results.values():
        r["items_per_s"] = r["items"] / r["median_s"]
    per_item_rate = results["per_item_generate"]["items_per_s"]
    ratios = {"batched_eval_vs_per_item": results["torch_batched"]["items_per_s"] / per_item_rate,
              "runtime_eval_vs_per_item": results["runtime_batched"]["items_per_s"] / per_item_rate}
    payload = {"checkpoint": str(ckpt), "eval_batch_size": batch, "threads": threads, "results": results,
               "ratios": ratios}
    path = write_results("evaluation", payload, out_dir) if out_dir else None
    print(markdown_table(["evaluation", "items/s"], [[k, f"{v['items_per_s']:.0f}"] for k, v in results.items()]))
    print(markdown_table(list(ratios), [[round(v, 1) for v in ratios.values()]]))
    if path:
        print(f"wrote {path}")
    return payload
