"""Export a sweep: every requested variant of every chosen checkpoint, checked and evaluated.

Per checkpoint (one worker process each, in parallel):

1. verify the checkpoint (sha256 manifest) and load it as the torch reference;
2. for each variant, in dependency order: reuse it when its folder verifies against its
   manifest and was made from this very checkpoint by the graph rewrites of this fracture
   (``graph_versions``: an older export is rebuilt, and said so); else build it in a scratch folder,
   check it (parity against the reference within the variant's tolerance, the quantized
   operators in the graph, the effective bits from the stored tensors), and publish it
   with its manifest in one rename. A variant that fails a check is not published;
3. evaluate every published variant on ``id`` and every shift through
   ``train.evaluate.evaluate_splits`` (the grading path torch evaluation uses) at the
   sweep's fixed eval batch size, unless accuracy.csv already holds its rows. A variant
   built in this job has already decoded the id split for its parity check: those
   outputs are graded rather than decoded twice.

The parent process alone writes accuracy.csv (an idempotent upsert).
"""

from __future__ import annotations

import functools
import json
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from common.accuracy_table import read_table, upsert_rows
from common.config import load_config, read_yaml
from common.executor import Resources, open_executor
from common.files import check_name, folder_lock, sha256_file
from common.manifest import publish, read_manifest, verify
from common.progress import progress_bar
from export.config import ExportConfig
from export.manifest import tool_versions
from export.registry import FP32, BuildContext, TorchRunner, Variant, resolve
from tasks.config import TaskConfig
from tasks.formatting import format_prompt
from train.checkpoints import verify_checkpoint


@dataclass(frozen=True)
class CheckpointJob:
    """One checkpoint of a finished run: what a worker exports (or grades) its variants of."""

    run: str
    step: int
    final_step: int  # the run's last checkpoint: its variants are the ones served
    run_dir: Path

    @property
    def checkpoint(self) -> Path:
        return self.run_dir / "checkpoints" / f"step-{self.step}"

    def variant_dir(self, variant: str) -> Path:
        """The final checkpoint's variants sit at variants/<variant>/ (what the server serves); earlier
        checkpoints' at variants/step-<N>/<variant>/."""
        if self.step == self.final_step:
            return self.run_dir / "variants" / variant
        return self.run_dir / "variants" / f"step-{self.step}" / variant

    def __str__(self) -> str:
        return f"{self.run} step {self.step}"


def load_sweep(sweep_dir: Path) -> dict:
    path = sweep_dir / "sweep.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `python -m train sweep` first")
    return read_yaml(path)


def plan_jobs(cfg: ExportConfig, sweep_dir: Path, sweep: dict) -> list[CheckpointJob]:
    """One job per (run, checkpoint) to export; finished runs only."""
    runs = sweep["runs"]
    if cfg.runs:
        unknown = sorted(set(cfg.runs) - set(runs))
        if unknown:
            raise ValueError(f"unknown run(s) {unknown}; the sweep has {len(runs)} runs, e.g. {runs[0]}")
        runs = [r for r in runs if r in cfg.runs]
    jobs = []
    for run_id in runs:
        run_dir = sweep_dir / check_name("run", run_id)  # sweep.yaml is read from disk: never trusted as a path
        if not (run_dir / "done.json").is_file():
            print(f"skipping {run_id}: the sweep has not finished it", file=sys.stderr)
            continue
        steps = json.loads((run_dir / "config.json").read_text())["checkpoint_steps"]
        for step in (steps if cfg.checkpoints == "all" else steps[-1:]):
            jobs.append(CheckpointJob(run_id, step, steps[-1], run_dir))
    return jobs


# -- the worker side ------------------------------------------------------------------

class Reference:
    """The torch checkpoint, its dev prompts and its greedy outputs, loaded once per job."""

    def __init__(self, checkpoint: Path, splits: dict, batch_size: int, parity_batch: int):
        from transformers import AutoModelForCausalLM

        from train.base import load_tokenizer
        from train.evaluate import max_answer_tokens

        self.checkpoint = checkpoint
        self.digit_format = json.loads((checkpoint / "fracture.json").read_text())["digit_format"]
        self.model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
        self.tokenizer = load_tokenizer(str(checkpoint))
        self.batch_size = batch_size
        self.max_new = max_answer_tokens(splits)
        self.prompts = [format_prompt(it["prompt"], self.digit_format) for it in splits["id"]]
        self.parity_ids = [self.tokenizer(p, add_special_tokens=False)["input_ids"]
                           for p in self.prompts[:parity_batch]]

    @functools.cached_property
    def outputs(self) -> list[str]:
        """Greedy outputs on the whole dev split (only computed when a variant is built)."""
        return self.greedy(self.model)

    def logits(self, model=None):
        from export.parity import torch_logits

        return torch_logits(model or self.model, self.parity_ids, self.tokenizer.pad_token_id)

    def greedy(self, model) -> list[str]:
        from train.evaluate import greedy_decode

        return greedy_decode(model, self.tokenizer, self.prompts, self.max_new, self.batch_size)


def _simulated_reference(ref: Reference, variant: Variant, folder: Path):
    """The torch model a fp32-stored variant simulates, for its export parity: the checkpoint
    with the same rounding (sim-w{k}) or the same noise, rebuilt from the noise record
    in ``folder`` (noise@{q})."""
    import copy

    if variant.noise_of:
        from export.noise import noised_reference, read_record

        return noised_reference(ref.model, read_record(folder))
    from export.onnx_export import round_block_weights_

    return round_block_weights_(copy.deepcopy(ref.model), variant.simulated_bits)


def _check_graph(variant: Variant, folder: Path, fp32_dir: Path | None) -> dict:
    """Quantized operators, quantized tensors and effective bits, read off the saved graph."""
    from export import graph

    model = graph.load(folder / "model.onnx")
    # a noise control is derived from the checkpoint, not from the fp32 graph: nothing in it is replaced
    derived = bool(fp32_dir and variant.needs and not variant.noise_of)
    reference = graph.load(fp32_dir / "model.onnx") if derived else model
    summary = graph.quantization_summary(model, reference)
    summary["fused_attention_layers"] = sum(n.op_type == "MultiHeadAttention" for n in model.graph.node)
    problems = [f"graph has no {op} (it would silently stay full precision)"
                for op in variant.expect_ops if not summary["quantized_ops"].get(op)]
    for role in ("blocks", "embeddings", "lm_head"):
        n = summary["quantized_tensors"][role]
        if variant.needs and variant.bits < 16 and role in variant.quantizes and n == 0:
            problems.append(f"no {role} tensor was quantized")
        if role not in variant.quantizes and n:
            problems.append(f"{n} {role} tensor(s) were quantized but the variant keeps {role} in full precision")
    if variant.simulated_bits:
        levels = graph.distinct_levels_per_group(model, group=32)
        summary["max_levels_per_group"] = levels
        summary["simulated_bits_per_weight"] = variant.simulated_bits + 2 * 16 / 32  # fp16 scale + zero per group
        if levels > 2 ** variant.simulated_bits:
            problems.append(f"block weights hold {levels} distinct values per group > 2**{variant.simulated_bits}")
        summary["quantized_tensors"]["blocks"] = sum(1 for r in graph.weight_roles(model).values() if r == "blocks")
    if variant.noise_of:
        problems += _check_noise(variant, folder, summary)
    summary["problems"] = problems
    return summary


def _check_noise(variant: Variant, folder: Path, summary: dict) -> list[str]:
    """A noise control's record (targets, realised errors, seeds) goes into its manifest; the
    tensors it perturbed count as its "quantized" ones, as sim-w{k}'s rounded ones do."""
    from collections import Counter

    from export.noise import check_record, read_record

    record = read_record(folder)
    summary["noise"] = record
    roles = Counter(t["role"] for t in record["tensors"].values())
    summary["quantized_tensors"] = {role: roles.get(role, 0) for role in ("blocks", "embeddings", "lm_head")}
    return check_record(record, variant.quantizes)


def _torch_summary(folder: Path, ref: Reference) -> dict:
    """Effective bits and quantized tensors of a saved torch variant, from its safetensors."""
    from collections import Counter

    from export.bnb import safetensors_bits

    bits, dtypes = safetensors_bits(folder)
    params = sum(p.numel() for p in ref.model.parameters())
    head = "embed_out" if any("embed_out" in k for k in dtypes) else "lm_head"
    roles = Counter("embeddings" if "embed_in" in k or "embed_tokens" in k else "lm_head" if head in k else "blocks"
                    for k, dtype in dtypes.items() if k.endswith(".weight") and dtype in ("I8", "U8"))
    return {"stored_dtypes": dict(Counter(dtypes.values())), "parameters": params,
            "quantized_tensors": {role: roles.get(role, 0) for role in ("blocks", "embeddings", "lm_head")},
            "effective_bits_per_param": round(bits / params, 4),
            "problems": [] if roles.get("blocks") else ["no block weight was stored as an integer tensor"]}


def _parity(variant: Variant, runner, ref: Reference, folder: Path) -> tuple[dict, list[str]]:
    """The parity verdict, and the variant's greedy outputs on the id split (its evaluation grades them)."""
    from export.parity import agreement, judge, max_logit_diff

    if variant.tolerance.reference == "simulated":
        ref_model = _simulated_reference(ref, variant, folder)
        ref_logits, mask = ref.logits(ref_model)
        ref_outputs = ref.greedy(ref_model)
    else:
        ref_logits, mask = ref.logits()
        ref_outputs = ref.outputs
    logits, _ = runner.logits(ref.parity_ids)
    outputs = runner.decoder()(ref.prompts, ref.max_new, ref.batch_size)
    result = judge(variant.tolerance, max_logit_diff(logits, ref_logits, mask), agreement(outputs, ref_outputs),
                   len(ref_outputs), len(ref.parity_ids))
    if variant.tolerance.reference == "simulated":  # how far the rounding (or noise) itself moved the model
        result["agreement_with_checkpoint"] = agreement(outputs, ref.outputs)
    return result, outputs


def _build(variant: Variant, job: CheckpointJob, ckpt: Path, fp32_dir: Path | None, needs_dir: Path | None,
           ref: Reference, threads: int, dest: Path, device: str) -> tuple[dict, object, list[str]]:
    """Build, check and publish one variant; returns (manifest, runner, its outputs on the id split) or
    raises ExportCheckFailed. Its scratch folders have names of their own (a worker of a killed export can
    never share one with a resumed export); the sweep's lock means any older ones are leftovers."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    for stale in dest.parent.glob(f".{dest.name}.*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    tmp.chmod(0o755)  # it becomes the published folder: the usual permissions, not mkdtemp's 0700
    scratch = Path(tempfile.mkdtemp(prefix=f".{dest.name}.scratch-", suffix=".tmp", dir=dest.parent))
    started = time.perf_counter()
    try:
        built = variant.build(BuildContext(ckpt, fp32_dir, scratch, device, needs_dir), tmp)
        build_seconds = time.perf_counter() - started
        if variant.runner == "onnx":
            summary = _check_graph(variant, tmp, fp32_dir)
            runner = variant.open(tmp, threads)
        else:  # the model the builder returns, as it is (a reload would quantize it again)
            summary = _torch_summary(tmp, ref)
            runner = TorchRunner(built, ref.tokenizer)
        parity, id_outputs = _parity(variant, runner, ref, tmp)
        problems = summary.pop("problems") + parity["failures"]
        if problems:
            raise ExportCheckFailed(f"{job} {variant.name}: " + "; ".join(problems))
        manifest = {
            "variant": variant.name, "run": job.run, "step": job.step,
            "source": {"checkpoint": str(ckpt), "sha256": sha256_file(ckpt / "model.safetensors")},
            "backend": variant.backend, "runner": variant.runner, "weight_bits": variant.bits,
            "method": variant.method,
            "quantizes": {role: role in variant.quantizes for role in ("blocks", "embeddings", "lm_head")},
            **summary, "graph_versions": graph_versions(variant), "parity": parity, "tool_versions": tool_versions(),
            "build_seconds": round(build_seconds, 2),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        # the session read the graph into memory when it was created: it stays valid after the move
        return publish(tmp, dest, "variant", manifest), runner, id_outputs
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)


class ExportCheckFailed(RuntimeError):
    pass


def reference_of(sweep_dir: Path, job: CheckpointJob, parity_batch: int = ExportConfig.parity_batch) -> Reference:
    """The torch checkpoint of ``job`` with the sweep's id split: what ``build_checked`` checks a variant against."""
    data = EvalData.of_sweep(load_sweep(sweep_dir))
    return Reference(job.checkpoint, data.load(), data.batch_size, parity_batch)


def build_checked(ref: Reference, job: CheckpointJob, variant: Variant, dest: Path, fp32_dir: Path | None = None,
                  threads: int = 1) -> dict:
    """``variant`` of ``job``'s checkpoint built from it (and from the published ``fp32_dir`` where the variant
    derives from onnx-fp32), checked as the export checks it (its graph; parity against ``ref``, the checkpoint
    on the sweep's id split: ``reference_of``, within its tolerance) and published at ``dest`` with the export's
    manifest, which it returns; raises ExportCheckFailed. ``dest`` may lie outside the sweep: for what a
    benchmark serves that the sweep did not export, where the sweep is left as it was. onnx-fp32 and the
    variants made from it only: one made from another variant (``Variant.needs``) is built by the export."""
    if variant.needs not in (None, FP32):
        raise ValueError(f"{variant.name} is made from {variant.needs}: build it with `python -m export`")
    if variant.needs and fp32_dir is None:
        raise ValueError(f"{variant.name} is made from {FP32}: give its published folder")
    manifest, _, _ = _build(variant, job, job.checkpoint, fp32_dir, fp32_dir if variant.needs else None, ref,
                            threads, dest, "cpu")
    return manifest


def reusable(dest: Path, ckpt_sha: str) -> str | None:
    """``None`` when the published variant can be reused, else why it must be rebuilt."""
    problem = verify(dest, "variant")
    if problem:
        return problem
    manifest = read_manifest(dest)
    if manifest.get("source", {}).get("sha256") != ckpt_sha:
        return "made from a different checkpoint"
    if not manifest.get("parity", {}).get("passed"):
        return "its parity check did not pass"
    return None


def graph_versions(variant: Variant) -> dict[str, int]:
    """The versions of fracture's own rewrites a variant's graph goes through, from its registry entry: the
    attention fusion for every ONNX Runtime graph (``export_onnx`` fuses, or leaves a model it cannot fuse
    as it is, which a later version tries again), the per-token int8 activations where it runs
    MatMulInteger. TensorRT's graph (unfused) and torch variants go through neither. Recorded in the
    manifest at build."""
    from export.fusion import FUSION_VERSION
    from export.quantize import PER_TOKEN_VERSION

    versions = {}
    if variant.runner == "onnx" and variant.backend == "onnxruntime":
        versions["fusion"] = FUSION_VERSION
    if "MatMulInteger" in variant.expect_ops:
        versions["per_token"] = PER_TOKEN_VERSION
    return versions


def stale_graph(manifest: dict, variant: Variant) -> str | None:
    """``None`` when a published variant's graph was made by the rewrites this fracture makes, else why it is
    rebuilt: an export from before a rewrite changed (or from before versions were recorded) computes the
    same answers with more nodes a step, and a re-run gives the sweep the current graph (and grades it again).
    Only the export rebuilds: ``python -m export evaluate`` grades such a variant as it is."""
    want, have = graph_versions(variant), manifest.get("graph_versions", {})
    if have == want:
        return None
    return f"its graph was made by other versions of fracture's rewrites ({have or 'none recorded'}; now {want})"


@dataclass(frozen=True)
class EvalData:
    """A sweep's eval splits and how they are graded, resolved once by the parent from its sweep.yaml."""

    task: TaskConfig
    data_dir: Path
    eval_items: int  # items per split (0 = the task's n_eval)
    batch_size: int  # the sweep's fixed eval batch size, so variants and torch are graded alike

    @classmethod
    def of_sweep(cls, sweep: dict, batch_size: int = 0) -> EvalData:
        return cls(load_config(TaskConfig, overrides=sweep["task"]), Path(sweep["data"]),
                   sweep["config"].get("eval_items", 0), batch_size or sweep["config"]["eval_batch_size"])

    def load(self) -> dict[str, list[dict]]:
        """``{split: items}``, the id split first."""
        from train.finetune import load_eval_splits

        return load_eval_splits(self.data_dir, self.task, self.eval_items)[0]


@dataclass(frozen=True)
class ExportJob:
    """All one worker needs to build, check and grade the variants of one checkpoint."""

    checkpoint: CheckpointJob
    variants: tuple[Variant, ...]  # in build order (``registry.resolve``)
    data: EvalData
    graded: frozenset[str]  # variants accuracy.csv has every row of: not graded again unless rebuilt
    threads: int  # ONNX Runtime / torch intra-op threads
    parity_batch: int  # dev items in the logit comparison
    force: bool  # rebuild even a variant that verifies


def export_checkpoint(job: ExportJob) -> dict:
    """Worker: build/reuse and evaluate the variants of one checkpoint. Returns rows and a log."""
    import torch

    from train.evaluate import evaluate_splits

    torch.set_num_threads(job.threads)
    where = job.checkpoint
    ckpt = where.checkpoint
    problem = verify_checkpoint(ckpt)
    if problem:
        return {"job": where, "rows": [], "log": [], "failed": [f"{where}: {problem}"], "rebuilt": [], "warnings": []}
    splits, batch = job.data.load(), job.data.batch_size
    ref = Reference(ckpt, splits, batch, job.parity_batch)
    ckpt_sha = sha256_file(ckpt / "model.safetensors")
    device = "cuda" if torch.cuda.is_available() else "cpu"

    rows, log, failed, rebuilt, warnings, published = [], [], [], [], [], {}
    for variant in job.variants:
        name = variant.name
        dest = where.variant_dir(name)
        needs_dir = published.get(variant.needs) if variant.needs else None
        if variant.needs and needs_dir is None:
            failed.append(f"{where} {name}: needs {variant.needs}, which is not available")
            continue
        fp32_dir = published.get(FP32) if variant.needs else None  # resolve() built it first where needed
        why = "forced" if job.force else reusable(dest, ckpt_sha)
        published_manifest = read_manifest(dest) if why is None else None  # it verified: read once
        stale = stale_graph(published_manifest, variant) if published_manifest is not None else None
        why = why or stale
        runner, decoded = None, {}
        try:
            if why is None:
                manifest = published_manifest
                log.append((name, "reused", manifest))
            else:
                manifest, runner, decoded["id"] = _build(variant, where, ckpt, fp32_dir, needs_dir, ref, job.threads,
                                                         dest, device)
                log.append((name, "built", manifest))
                if stale:
                    rebuilt.append(f"{where} {name}: rebuilt: {stale}")
        except Exception as exc:  # noqa: BLE001 - one failed variant must not stop the others
            detail = str(exc) if isinstance(exc, ExportCheckFailed) else traceback.format_exc(limit=3)
            if not stale:
                failed.append(f"{where} {name}: {detail}")
                continue
            # the published variant still verifies and answers as before: kept, so its dependents build
            warnings.append(f"{where} {name}: kept as it was ({stale}): rebuilding it failed: {detail}")
            manifest, runner, why = published_manifest, None, None
            log.append((name, "reused", manifest))
        published[name] = dest
        if name in job.graded and why is None:
            continue
        if runner is None:  # a torch variant loads its saved, already quantized weights
            runner = variant.open(dest, job.threads, device, ref.tokenizer)
        decode = runner.decoder()
        started = time.perf_counter()
        results = evaluate_splits(decode, ref.digit_format, splits, batch_size=batch, decoded=decoded)
        log.append((name, "evaluated", {"seconds": round(time.perf_counter() - started, 2)}))
        rows += [{"run": where.run, "step": where.step, "variant": name, "split": split, **r}
                 for split, r in results.items()]
    return {"job": where, "rows": rows, "log": log, "failed": failed, "rebuilt": rebuilt, "warnings": warnings}


# -- the parent side ------------------------------------------------------------------

def _rows_present(table: list[dict], splits: list[str]) -> dict[tuple[str, int], list[str]]:
    """{(run, step): [variants with a row for every split]}."""
    have: dict[tuple[str, int, str], set] = {}
    for r in table:
        have.setdefault((r["run"], int(r["step"]), r["variant"]), set()).add(r["split"])
    out: dict[tuple[str, int], list[str]] = {}
    for (run, step, variant), got in have.items():
        if set(splits) <= got:
            out.setdefault((run, step), []).append(variant)
    return out


def export_sweep(cfg: ExportConfig) -> dict:
    """Export the sweep at ``cfg.sweep``; returns {built, reused, evaluated, skipped, failed, seconds}.
    One sweep or export at a time per sweep folder."""
    load_sweep(Path(cfg.sweep))  # a missing sweep is said before any lock file is made
    with folder_lock(Path(cfg.sweep), f"an export ({' '.join(sys.argv)})"):
        return _export_sweep(cfg)


def _export_sweep(cfg: ExportConfig) -> dict:
    from tqdm import tqdm

    started = time.perf_counter()
    sweep_dir = Path(cfg.sweep)
    sweep = load_sweep(sweep_dir)
    variants = resolve(cfg.variants)
    skipped = {}
    for v in variants:
        reason = v.requires()
        if reason:
            skipped[v.name] = reason
            print(f"skipping {v.name}: {reason}", file=sys.stderr)
    chosen = tuple(v for v in variants if v.name not in skipped and v.needs not in skipped)
    jobs = plan_jobs(cfg, sweep_dir, sweep)
    if not jobs or not chosen:
        raise ValueError(f"nothing to export in {sweep_dir} (checkpoints: {len(jobs)}, "
                         f"variants: {[v.name for v in chosen]})")
    data = EvalData.of_sweep(sweep, cfg.eval_batch_size)
    table_path = sweep_dir / "accuracy.csv"
    present = _rows_present(read_table(table_path), list(data.task.specs))
    workers = max(1, min(cfg.workers, len(jobs)))
    print(f"export {sweep_dir}: {len(jobs)} checkpoint(s) x {len(chosen)} variant(s) "
          f"({', '.join(v.name for v in chosen)}), {workers} worker(s), eval batch {data.batch_size}")

    results, rebuilt = [], []
    bar = progress_bar(len(jobs), "checkpoints", "ckpt")

    def done(res):
        results.append(res)
        if res["rows"]:
            upsert_rows(table_path, res["rows"])  # after every checkpoint: a killed export keeps what it did
        if res["rebuilt"] and not rebuilt:  # said once: a sweep exported before a rewrite changed has hundreds
            tqdm.write(f"{res['rebuilt'][0]} (so is every variant made by other rewrites: counted at the end)",
                       file=sys.stderr)
        rebuilt.extend(res["rebuilt"])
        for msg in res["warnings"]:
            tqdm.write(f"WARNING {msg}", file=sys.stderr)
        for msg in res["failed"]:
            tqdm.write(f"FAILED {msg}", file=sys.stderr)
        bar.update(1)

    if cfg.executor == "ray":  # a Ray worker may start elsewhere: absolute paths (on the shared filesystem)
        jobs = [replace(job, run_dir=job.run_dir.resolve()) for job in jobs]
        data = replace(data, data_dir=data.data_dir.resolve())
    export_jobs = [ExportJob(job, chosen, data, frozenset(present.get((job.run, job.step), ())), cfg.threads,
                             cfg.parity_batch, cfg.force) for job in jobs]
    with open_executor(cfg.executor, cfg.ray_address, cfg.max_retries) as executor:
        executor.map(export_checkpoint, [(job,) for job in export_jobs], lambda _, res: done(res), workers=workers,
                     resources=Resources(cpus=cfg.threads))
    bar.close()

    summary = {"built": 0, "reused": 0, "evaluated": 0, "skipped": skipped, "rebuilt_stale": len(rebuilt),
               "failed": [m for r in results for m in r["failed"]]}
    for r in results:
        for _, what, _ in r["log"]:
            summary[what] = summary.get(what, 0) + 1
    summary["seconds"] = round(time.perf_counter() - started, 1)
    summary["manifests"] = [m for r in results for n, what, m in r["log"] if what in ("built", "reused")]
    return summary
