"""Decoding throughput: export/runtime.py against transformers ``generate`` and optimum's
ORTModelForCausalLM on the same checkpoint and the same ONNX file, batch 1 and 64.

All three decode the same dev prompts greedily with the KV cache, left padding and the
same thread count, and produce the same tokens (checked); tokens/s counts generated
tokens up to EOS. Ratios are what to read: absolute figures depend on the machine.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from bench.common import RESULTS, interleaved, markdown_table, paired_ratio, publish, ratio_table, record_ratio, spread


def find_variant(sweep: Path, variant: str = "onnx-fp32") -> tuple[Path, Path]:
    """(torch checkpoint, exported variant folder) of the first run of ``sweep`` that has both."""
    for run in sorted(p for p in sweep.iterdir() if p.is_dir()):
        folder = run / "variants" / variant
        if (folder / "manifest.json").is_file():
            manifest = json.loads((folder / "manifest.json").read_text())
            return Path(manifest["source"]["checkpoint"]), folder
    raise FileNotFoundError(f"no {variant} variant under {sweep}: run `python -m export --sweep {sweep}` first")


def bench_decode(sweep: Path, batches=(1, 64), items: int = 128, repeats: int = 5, threads: int = 1,
                 max_new_tokens: int = 7, min_seconds: float = 0.2, out_dir: Path | None = RESULTS) -> dict:
    import onnxruntime as ort
    import torch
    from optimum.onnxruntime import ORTModelForCausalLM
    from transformers import AutoModelForCausalLM

    from export.runtime import OnnxCausalLM
    from tasks.dataset import read_jsonl
    from tasks.formatting import format_prompt
    from train.base import load_tokenizer

    torch.set_num_threads(threads)
    ckpt, folder = find_variant(sweep)
    digit_format = json.loads((ckpt / "fracture.json").read_text())["digit_format"]
    sweep_cfg = yaml.safe_load((sweep / "sweep.yaml").read_text())
    dev = read_jsonl(Path(sweep_cfg["data"]) / "dev.jsonl")
    prompts = [format_prompt(it["prompt"], digit_format) for it in dev[:items]]

    ours = OnnxCausalLM(folder, threads=threads, providers=["CPUExecutionProvider"])
    tok = load_tokenizer(str(ckpt))
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(ckpt).eval()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    optimum_model = ORTModelForCausalLM.from_pretrained(folder, use_cache=True, provider="CPUExecutionProvider",
                                                        session_options=opts)

    def hf_generate(m, chunk):
        enc = tok(chunk, return_tensors="pt", padding=True, add_special_tokens=False, return_token_type_ids=False)
        with torch.inference_mode():
            out = m.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        return [row[enc["input_ids"].shape[1]:].tolist() for row in out]

    engines = {
        "runtime": lambda chunk: ours.generate_ids(ours.encode(chunk), max_new_tokens),
        "transformers_generate": lambda chunk: hf_generate(model, chunk),
        "optimum_ort": lambda chunk: hf_generate(optimum_model, chunk),
    }

    def strip(seq):  # generated tokens up to and including EOS
        return seq[:seq.index(tok.eos_token_id) + 1] if tok.eos_token_id in seq else seq

    results, ratios, ratio_spread = {}, {}, {}
    for batch in batches:
        chunks = [prompts[i:i + batch] for i in range(0, len(prompts), batch)]
        if batch == 1:
            chunks = chunks[:32]  # 32 single-prompt calls are plenty for a stable figure
        reference = [strip(s) for c in chunks for s in engines["runtime"](c)]
        tokens = sum(len(s) for s in reference)
        for name, engine in engines.items():
            got = [strip(s) for c in chunks for s in engine(c)]
            assert got == reference, f"{name} decoded different tokens than the runtime at batch {batch}"
        timed = interleaved({name: (lambda engine=engine, chunks=chunks: [engine(c) for c in chunks])
                             for name, engine in engines.items()}, repeats=repeats, min_seconds=min_seconds)
        for name, t in timed.items():
            results[f"{name}_b{batch}"] = {"seconds": {q: t[q] for q in ("median", "q1", "q3", "n")},
                                           "tokens": tokens, "tokens_per_s": spread([tokens / x for x in t["samples"]])}
        for key, baseline in (("generate", "transformers_generate"), ("optimum", "optimum_ort")):
            r = paired_ratio(timed[baseline]["samples"], timed["runtime"]["samples"])  # same tokens: time ratio
            record_ratio(ratios, ratio_spread, f"runtime_vs_{key}_b{batch}", r)
    payload = {"model": str(folder), "threads": threads, "items": items, "repeats": repeats, "results": results,
               "ratios": ratios, "ratio_spread": ratio_spread}
    rows = [[name, f"{results[f'{name}_b{b}']['tokens_per_s']['median']:.0f}", b] for b in batches for name in engines]
    publish("decode", payload, out_dir, [markdown_table(["engine", "tokens/s", "batch"], rows),
                                         ratio_table(ratios, ratio_spread)])
    return payload
