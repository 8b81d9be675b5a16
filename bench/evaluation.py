"""Evaluation throughput: fracture's batched evaluation against per-item ``generate``.

Same checkpoint, same dev items, same greedy answers (checked): items/s of
``train.evaluate`` at the sweep's eval batch size (torch, its Linear layers through oneDNN where
``train.evaluate.greedy_decode`` chooses so, as the sweep runs it), of the same grading path on
the ONNX runtime (how variants are evaluated), and of a loop calling transformers
``generate`` once per item with torch's own linears, as a hand-rolled evaluation would. The three are timed in
interleaved rounds (``bench.common.interleaved``); each figure keeps its median and quartiles.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from bench.common import RESULTS, interleaved, markdown_table, paired_ratio, publish, ratio_table, record_ratio, spread
from bench.decode import find_variant


def bench_evaluation(sweep: Path, items: int = 400, per_item: int = 100, repeats: int = 5, threads: int = 1,
                     min_seconds: float = 0.2, out_dir: Path | None = RESULTS) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from export.runtime import OnnxCausalLM
    from tasks.dataset import read_jsonl
    from tasks.formatting import format_prompt
    from train.base import load_tokenizer
    from train.evaluate import greedy_decode, onednn_supported, uses_onednn

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
    single = [greedy_decode(model, tok, [p], max_new, 1, onednn=False)[0] for p in prompts[:per_item]]
    assert single == batched[:per_item], "per-item and batched evaluation disagree"
    assert runtime.decoder()(prompts, max_new, batch) == batched, "runtime and torch evaluation disagree"

    timed = interleaved({
        "torch_batched": lambda: greedy_decode(model, tok, prompts, max_new, batch),
        "runtime_batched": lambda: runtime.decoder()(prompts, max_new, batch),
        "per_item_generate": lambda: [greedy_decode(model, tok, [p], max_new, 1, onednn=False)
                                      for p in prompts[:per_item]],
    }, repeats=repeats, min_seconds=min_seconds)
    counts = {"torch_batched": items, "runtime_batched": items, "per_item_generate": per_item}
    results = {k: {"seconds": {q: t[q] for q in ("median", "q1", "q3", "n")}, "items": counts[k],
                   "items_per_s": spread([counts[k] / x for x in t["samples"]])} for k, t in timed.items()}
    ratios, ratio_spread = {}, {}
    for name, engine in (("batched_eval_vs_per_item", "torch_batched"),
                         ("runtime_eval_vs_per_item", "runtime_batched")):
        r = paired_ratio(timed["per_item_generate"]["samples"], timed[engine]["samples"])
        scale = counts[engine] / per_item  # items/s: the per-item loop grades fewer items per call
        record_ratio(ratios, ratio_spread, name, r, scale)
    payload = {"checkpoint": str(ckpt), "eval_batch_size": batch, "threads": threads, "repeats": repeats,
               "torch_batched_onednn": uses_onednn(model, min(batch, len(prompts))),
               "onednn_unsupported": onednn_supported(model),
               "results": results, "ratios": ratios, "ratio_spread": ratio_spread}
    publish("evaluation", payload, out_dir, [
        markdown_table(["evaluation", "items/s (median of rounds)"],
                       [[k, f"{v['items_per_s']['median']:.0f}"] for k, v in results.items()]),
        ratio_table(ratios, ratio_spread)])
    return payload
