"""`make gpu-check`: what only a CUDA GPU can show, in about 8 minutes.

1. Fine-tunes a model with pythia-70m's exact architecture (GPTNeoXConfig values of
   EleutherAI/pythia-70m, vocabulary 50304, random init: nothing is downloaded) for a few
   hundred steps in bf16 through the sweep code, and reports training tokens/s.
2. Runs per GPU: sweeps of N concurrent runs of that model (N = 1, 4, 8, 16 by default;
   ``runs_per_gpu=N`` in the sweep config) report aggregate training tokens/s per GPU, each
   N's ratio to a single run, the best N and whether it reaches the 8x target; and compare
   every run's loss curve with the same run trained alone, against the noise between two
   solo repeats of one run (written to <out>/runs-per-gpu.json).
3. Builds and evaluates the bnb-int8 and bnb-nf4 variants on CUDA (and onnx-fp32, the
   source of trt-fp16), with their parity checks.
4. Builds trt-fp16 only where TensorRT is importable.

Everything is written under a temporary folder (or --out) and summarised on stdout.
Without a GPU it says so and exits 0, so CI and CPU machines never fail on it. It exits 1
when an export fails, or when a run's loss curve under concurrency leaves its solo curve by
more than the tolerance (a missed throughput target is reported, not failed).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYTHIA_70M = dict(vocab_size=50304, hidden_size=512, num_hidden_layers=6, num_attention_heads=8,
                  intermediate_size=2048, rotary_pct=0.25, rotary_emb_base=10000, max_position_embeddings=2048,
                  use_parallel_residual=True, tie_word_embeddings=False, layer_norm_eps=1e-5, hidden_act="gelu",
                  initializer_range=0.02)
BATCH = 64  # items per step, every section
TARGET_SPEEDUP = 8.0  # aggregate tokens/s per GPU at the best N, against a single run
LOSS_FLOOR = 1e-2  # the least relative |Δloss| tolerance, whatever the measured noise
# Runs-per-GPU steps: 150 x 63 ms (a solo step on an H100) is ~9.5 s a run. Even with no gain from
# concurrency at all (every N-run sweep taking N solo runs' time), 1 + 2 solo runs and N = 4, 8, 16 train for
# 31 x 9.5 s ~ 5 min; with the overheads (~15 s a sweep) and the other sections (~75 s), ~7.5 min in all.
RPG_STEPS = 150
RPG_EVAL_ITEMS = 16  # per split, once per run: evaluation is not what section 2 measures


# bumped whenever make_base's model changes (the edge benchmark's model cache is keyed on it)
BASE_VERSION = 2


def make_base(out: Path, arch: dict | None = None, seed: int = 0) -> Path:
    """pythia-70m's architecture (or ``arch``), random init from ``seed``, with the embedded char
    tokenizer (ids < 50304).

    The LayerNorm parameters and the linear biases are drawn too (around 1 and 0, sd 0.02), where a fresh
    model has the same ones and zeros in every layer: ONNX Runtime merges identical work, and took the two
    LayerNorms of a layer's input (equal in a fresh GPT-NeoX, distinct in a trained one) for one, and with
    them one in five of an int8 graph's per-token quantizations, so a benchmark of the fresh model ran less
    than a trained checkpoint of the same size does."""
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from train.base import build_char_tokenizer

    tok = build_char_tokenizer()
    tok.save_pretrained(out)
    cfg = GPTNeoXConfig(bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
                        pad_token_id=tok.pad_token_id, **(arch or PYTHIA_70M))
    torch.manual_seed(seed)
    model = GPTNeoXForCausalLM(cfg)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.normal_(1.0, 0.02)
            if isinstance(module, torch.nn.LayerNorm | torch.nn.Linear) and module.bias is not None:
                module.bias.normal_(0.0, 0.02)
    model.save_pretrained(out)
    return out


def tokens_per_item(sweep: Path, base: Path) -> float:
    """Mean tokenized length (prompt + answer + EOS) of the first 2000 training items of the sweep's data."""
    from tasks.dataset import sweep_data
    from train.base import load_tokenizer

    tok = load_tokenizer(str(base))
    lines = (sweep_data(sweep) / "train.jsonl").read_text().splitlines()[:2000]
    sample = [json.loads(line) for line in lines]
    return statistics.mean(len(tok(it["prompt"] + it["answer"])["input_ids"]) + 1 for it in sample)


def sweep_config(root: Path, base: Path, name: str, steps: int, eval_items: int, device: str, precision: str,
                 **extra):
    """A one-combination grid sweep of ``base`` (lr 3e-4, the id mixture, one checkpoint) under <root>/runs."""
    from common.config import load_config
    from train.config import SweepConfig

    grid = {"lr": [3e-4], "steps": [steps], "mixture": {"id": {"id": 1.0}}, "repeat": extra.pop("repeat", 1)}
    return load_config(SweepConfig, overrides={
        "name": name, "out_root": str(root / "runs"), "data_root": str(root / "data"), "base": str(base),
        "task_config": str(REPO / "tasks/configs/default.yaml"), "sample": "grid", "grid": grid,
        "checkpoints": 1, "batch_size": BATCH, "eval_items": eval_items, "eval_batch_size": 256,
        "device": device, "precision": precision, **extra})


def single_run_section(root: Path, base: Path, steps: int, eval_items: int, device: str, precision: str) -> Path:
    """Section 1: one run, as a sweep; prints its training tokens/s and returns the sweep folder."""
    from train.sweep import run_sweep

    started = time.perf_counter()
    run_sweep(sweep_config(root, base, "gpu", steps, eval_items, device, precision, workers=1, runs_per_gpu=1))
    sweep = root / "runs" / "gpu"
    run_dir = next(p for p in sweep.iterdir() if p.is_dir())
    done = json.loads((run_dir / "done.json").read_text())
    tokens = done["config"]["train_items"] * tokens_per_item(sweep, base)
    print(f"fine-tuning: {steps} steps x batch {BATCH} in {precision}, {done['train_seconds']:.1f}s of training, "
          f"{tokens / done['train_seconds']:.0f} tokens/s ({done['config']['train_items'] / done['train_seconds']:.0f}"
          f" samples/s); sweep wall {time.perf_counter() - started:.0f}s", flush=True)
    return sweep


# --- section 2: runs per GPU -------------------------------------------------------------------------------


def read_runs(sweep: Path) -> list[dict]:
    """Every finished run of a sweep, by index: its done.json with its loss curve (loss.json) as ``curve``."""
    runs = []
    for done in sorted(sweep.glob("*/done.json")):
        run = json.loads(done.read_text())
        run["curve"] = json.loads((done.parent / "loss.json").read_text())
        runs.append(run)
    return sorted(runs, key=lambda r: r["config"]["index"])


def throughput(runs: list[dict], per_item: float, gpus: int = 1) -> dict:
    """Aggregate training tokens/s of runs trained at once: all their tokens over the span from the first
    run's start of training to the last run's end, per GPU; and each run's ms/step."""
    span = max(r["train_ended_at"] for r in runs) - min(r["train_started_at"] for r in runs)
    tokens = sum(r["config"]["train_items"] * per_item for r in runs)
    ms_step = [1000 * (r["train_ended_at"] - r["train_started_at"]) / r["config"]["steps"] for r in runs]
    starts = [r["train_started_at"] for r in runs]
    return {"runs": len(runs), "tokens": round(tokens), "span_s": round(span, 3),
            "tokens_per_s_per_gpu": tokens / span / gpus,
            "ms_per_step": {"median": statistics.median(ms_step), "min": min(ms_step), "max": max(ms_step)},
            # how unevenly the runs began training (the span counts it against N), and what the runs would
            # give if they had overlapped entirely: the sum of each run's own tokens/s
            "start_spread_s": round(max(starts) - min(starts), 3),
            "sum_of_run_rates_per_gpu": sum(r["config"]["train_items"] * per_item
                                            / (r["train_ended_at"] - r["train_started_at"]) for r in runs) / gpus}


def curve_gap(curve: dict, reference: dict) -> dict:
    """Relative |Δloss| of ``curve`` against ``reference`` at every logged step (the two must log the same
    steps): max and mean, or ``steps_differ``."""
    if curve["step"] != reference["step"] or not curve["step"]:
        return {"steps_differ": True, "steps": curve["step"], "reference_steps": reference["step"]}
    gaps = [abs(a - b) / max(abs(b), 1e-8) for a, b in zip(curve["loss"], reference["loss"], strict=True)]
    worst = max(range(len(gaps)), key=gaps.__getitem__)
    return {"points": len(gaps), "max_rel": max(gaps), "mean_rel": statistics.mean(gaps),
            "worst_step": curve["step"][worst]}


def compare_curves(by_n: dict[int, list[dict]], solo: dict[int, dict], floor_gap: dict) -> dict:
    """Each N's runs that were also trained alone (same seed, same data), against their solo curve, within
    max(2 x the solo-repeat noise, LOSS_FLOOR)."""
    noise = floor_gap.get("max_rel", float("inf"))
    tolerance = max(2 * noise, LOSS_FLOOR)
    out = {}
    for n, runs in by_n.items():
        rows = {}
        for run in runs:
            i = run["config"]["index"]
            if i in solo:
                gap = curve_gap(run["curve"], solo[i]["curve"])
                gap["within"] = not gap.get("steps_differ") and gap["max_rel"] <= tolerance
                rows[i] = gap
        out[n] = rows
    return {"noise_floor": noise, "noise_pair": floor_gap, "tolerance": tolerance, "by_n": out,
            "all_within": bool(floor_gap.get("points")) and all(g["within"] for rows in out.values()
                                                                 for g in rows.values())}


COMPARISON = ("loss curves: each run's training loss as the Trainer logs it (mean over every {every} steps) is "
              "compared step by step with the same run (same seed, same data) trained alone: relative |Δloss| = "
              "|loss_N - loss_solo| / loss_solo at every logged step, its max over the run. Noise floor: the max "
              "relative |Δloss| between two solo trainings of run 0 (two separate sweeps). Within tolerance when "
              "max relative |Δloss| <= max(2 x noise floor, {floor:g}).")


def summarize(by_n: dict[int, list[dict]], solo: dict[int, dict], solo_again: dict, per_item: float, gpus: int,
              loss_every: int) -> dict:
    """The section's figures: throughput at each N (N = 1: the single solo run) and its ratio to N = 1, the
    best N and the target's verdict, and the loss-curve comparison."""
    results = {1: throughput([solo[0]], per_item)}
    for n, runs in by_n.items():
        if n != 1:
            results[n] = throughput(runs, per_item, gpus)
    single = results[1]["tokens_per_s_per_gpu"]
    for r in results.values():
        r["x_single_run"] = r["tokens_per_s_per_gpu"] / single
    best = max(results, key=lambda n: results[n]["tokens_per_s_per_gpu"])
    curves = compare_curves({n: runs for n, runs in by_n.items() if n != 1}, solo,
                            curve_gap(solo_again["curve"], solo[0]["curve"]))
    return {"gpus": gpus, "tokens_per_item": per_item, "by_n": results, "best_n": best,
            "best_x_single_run": results[best]["x_single_run"], "target_x_single_run": TARGET_SPEEDUP,
            "target_met": results[best]["x_single_run"] >= TARGET_SPEEDUP, "loss_curves": curves,
            "loss_every": loss_every, "comparison": COMPARISON.format(every=loss_every, floor=LOSS_FLOOR)}


def format_runs_per_gpu(summary: dict) -> str:
    from bench.common import markdown_table

    curves = summary["loss_curves"]
    header = ["N per GPU", "runs", "tokens/s per GPU", "x single run", "ms/step (median, max)", "start spread s",
              "loss: runs compared", "max rel Δloss", "within"]
    rows = []
    for n, r in summary["by_n"].items():
        gaps = curves["by_n"].get(n, {})
        worst = [g.get("max_rel", float("inf")) for g in gaps.values()]
        rows.append([n, r["runs"], f"{r['tokens_per_s_per_gpu']:.0f}", f"{r['x_single_run']:.2f}",
                     f"{r['ms_per_step']['median']:.1f}, {r['ms_per_step']['max']:.1f}", f"{r['start_spread_s']:.1f}",
                     ", ".join(map(str, gaps)) or "(reference)", f"{max(worst):.2g}" if worst else "—",
                     ("yes" if all(g["within"] for g in gaps.values()) else "NO") if gaps else "—"])
    noise = curves["noise_pair"]
    verdict = "met" if summary["target_met"] else "NOT met"
    return "\n".join([
        markdown_table(header, rows),
        f"best N: {summary['best_n']} runs per GPU, {summary['best_x_single_run']:.2f}x a single run's tokens/s "
        f"(target >= {summary['target_x_single_run']:g}x: {verdict})",
        textwrap.fill(summary["comparison"], 110),
        f"noise floor (solo run 0 twice): max rel |Δloss| {noise.get('max_rel', float('nan')):.2g} over "
        f"{noise.get('points', 0)} points; tolerance {curves['tolerance']:.2g}; every compared curve within: "
        f"{'yes' if curves['all_within'] else 'NO'}"])


def runs_per_gpu_section(root: Path, base: Path, counts: list[int], steps: int, solo_runs: int, eval_items: int,
                         device: str, precision: str) -> dict:
    """Section 2: a solo run 0 (the N = 1 figure), a second solo sweep of runs 0..solo_runs-1 one after another
    (run 0 again: the noise floor; the others: more solo references), then for each N > 1 a sweep of N runs
    per GPU at once (``runs_per_gpu=N`` on CUDA, ``workers=N`` on the CPU). Prints the table, writes
    <root>/runs-per-gpu.json and returns what it wrote."""
    import torch

    from train.sweep import run_sweep

    gpus = torch.cuda.device_count() if device == "cuda" else 1
    loss_every = max(1, min(10, steps // 4))

    def sweep(name: str, runs: int, at_once: int) -> list[dict]:
        started = time.perf_counter()  # (on CUDA the sweep reads runs_per_gpu, on the CPU workers)
        run_sweep(sweep_config(root, base, name, steps, eval_items, device, precision, repeat=runs,
                               loss_every=loss_every, runs_per_gpu=at_once, workers=at_once))
        print(f"runs per GPU: sweep {name} ({runs} runs, {at_once} at once per GPU) in "
              f"{time.perf_counter() - started:.0f}s", flush=True)
        return read_runs(root / "runs" / name)

    (solo_first,) = sweep("rpg-solo", 1, 1)
    solo_again = sweep("rpg-solo-again", max(solo_runs, 1), 1)
    solo = {0: solo_first} | {r["config"]["index"]: r for r in solo_again[1:]}
    by_n = {n: sweep(f"rpg-n{n}", n * gpus, n) for n in counts if n > 1}
    summary = summarize(by_n, solo, solo_again[0], tokens_per_item(root / "runs" / "rpg-solo", base), gpus,
                        loss_every)
    summary.update(device=device, precision=precision, steps=steps, batch_size=BATCH,
                   solo_runs=sorted(solo), sweeps=str(root / "runs"))
    (root / "runs-per-gpu.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(format_runs_per_gpu(summary))
    print(f"wrote {root / 'runs-per-gpu.json'}", flush=True)
    return summary


def export_section(sweep: Path) -> int:
    """Sections 3 and 4: every variant built and graded; returns how many failed."""
    from export.config import ExportConfig
    from export.pipeline import export_sweep
    from export.report import format_summary
    from export.tensorrt import trt_available

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
    return len(summary["failed"])


def counts_list(text: str) -> list[int]:
    """"1,4,8,16" -> [1, 4, 8, 16] (sorted, 1 always included: it is the reference)."""
    counts = {int(x) for x in text.split(",") if x.strip()}
    if min(counts, default=1) < 1:
        raise argparse.ArgumentTypeError(f"runs per GPU must be >= 1, got {text!r}")
    return sorted(counts | {1})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300, help="steps of the single run (section 1)")
    parser.add_argument("--eval-items", type=int, default=200)
    parser.add_argument("--runs-per-gpu", type=counts_list, default=None, metavar="N,N,...",
                        help="section 2's N (default 1,4,8,16; dry run 1,2)")
    parser.add_argument("--rpg-steps", type=int, default=None,
                        help=f"steps of every run in section 2 (default {RPG_STEPS}; dry run 4)")
    parser.add_argument("--solo-runs", type=int, default=2,
                        help="runs 0..k-1 trained alone as references for section 2's loss curves (default 2)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--dry-run", action="store_true", help="CPU, fp32, 4 steps: check the script itself")
    args = parser.parse_args(argv)

    import torch

    device, precision = ("cpu", "fp32") if args.dry_run else ("cuda", "bf16")
    if args.dry_run:
        args.steps, args.eval_items = 4, 40
        args.runs_per_gpu = args.runs_per_gpu or [1, 2]
        args.rpg_steps = args.rpg_steps or 4
    elif not torch.cuda.is_available():
        print("gpu-check: no CUDA GPU here; nothing to check (this is not a failure)")
        return 0
    import transformers

    root = args.out or Path(tempfile.mkdtemp(prefix="fracture-gpu-"))
    where = "CPU (dry run)" if args.dry_run else torch.cuda.get_device_name(0)
    print(f"gpu-check on {where}: torch {torch.__version__}, "
          f"transformers {transformers.__version__}, out {root}", flush=True)
    base = make_base(root / "pythia70m-arch")
    params = sum(p.numel() for p in transformers.AutoModelForCausalLM.from_pretrained(base).parameters())
    print(f"base: pythia-70m architecture, {params / 1e6:.1f}M parameters, random init", flush=True)

    sweep = single_run_section(root, base, args.steps, args.eval_items, device, precision)
    rpg = runs_per_gpu_section(root, base, args.runs_per_gpu or [1, 4, 8, 16], args.rpg_steps or RPG_STEPS,
                               args.solo_runs, RPG_EVAL_ITEMS, device, precision)
    failed = export_section(sweep)
    if not rpg["loss_curves"]["all_within"]:
        print("FAILED runs per GPU: a loss curve under concurrency left its solo curve (table above)")
    return 1 if failed or not rpg["loss_curves"]["all_within"] else 0


if __name__ == "__main__":
    sys.exit(main())
