"""Edge decoding at the size users deploy: pythia-70m's architecture, each variant against its memory floor.

A decode step of a 70M-parameter model is bound by reading its weights, not by Python. This part builds
once, and caches under bench/cache/ (ignored by git), a model with pythia-70m's exact architecture
(bench/gpu_check.PYTHIA_70M; random init from a fixed seed, nothing is downloaded) and its variants, each
made by the registry's own builder (onnx-fp32 through optimum, then ort-int8, ort-int8-all, ort-int4,
ort-int4-all). It then times greedy decoding of 12-token prompts at batch 1 and 64, EOS ignored so that
every engine decodes the same number of steps:

- ``export/runtime.py`` (what fracture serves), per variant;
- optimum's ``ORTModelForCausalLM`` on the same ONNX file (onnx-fp32 and the variants with a speed-up target);
- transformers ``generate`` on the torch weights (fp32 only: the variants have no torch twin);
- the floor: the bytes of stored weights a step reads (``export.graph.bytes_read_per_token``) over the
  read bandwidth of this machine with every core, measured in each round of the batch-1 points by two
  readers, the faster of which sets that round's floor: every core summing its own 256 MiB array (numpy),
  and ONNX Runtime's fp32 MatMul of one row by a 512 MiB weight on every core (``GemvReadPass``: the kernel
  the fp32 steps run, which on 2026-12-07's host read 56-61 GB/s where numpy's sums read 35-38, so that
  numpy's pass alone made a floor the fp32 steps beat by half again).

A decode step's time is read inside each decode call, from the first new token to the last, over 15 (the
runtime's ``generate_ids(clock=...)``; in transformers' ``generate``, a stopping criterion that stops
nothing), so the prompt's prefill stays out of it (the time to the first token, over every call, is kept
beside). Every point runs in interleaved rounds (``bench.common.interleaved``), with a rest before each so
that the ONNX Runtime threads of the engine before it have stopped spinning: the results keep the median
and quartiles of every figure and the spread of every ratio over rounds. Each engine's tokens are compared
with the runtime's (greedy: the same tokens from every engine of one variant).

Random weights make parity meaningless as a gate here (near-flat logits flip under any rounding): each
variant's max |Δlogit| and greedy agreement against onnx-fp32 are recorded, not enforced. Its accuracy
comes from the demo's population (the same variant of the embedded base), where the sweep exported it.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import shutil
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from bench.common import RESULTS, interleaved, markdown_table, paired_ratio, publish, ratio_table, record_ratio, spread
from bench.gpu_check import BASE_VERSION, PYTHIA_70M, make_base

CACHE = Path(__file__).parent / "cache"
VARIANTS = ("onnx-fp32", "ort-int8", "ort-int8-all", "ort-int4", "ort-int4-all")
INT8, INT4 = "ort-int8-all", "ort-int4-all"  # the variants that quantize the LM head too: the speed-up ratios
# --quick: the same layout at a size that builds and runs in seconds (the LM head keeps pythia's vocabulary)
QUICK_ARCH = PYTHIA_70M | {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                           "intermediate_size": 256}


STAMP = "stamp.json"  # in every cache folder: what it was built from (bench/caches.py reads it to prune)


def cache_record(arch: dict, names: tuple[str, ...]) -> dict:
    """What a cached model is built from: the architecture, how the base model is drawn, the tools' versions and
    how each variant is built (its registry line). A change to any of them builds afresh."""
    import onnxruntime
    import optimum.version
    import transformers

    from export.fusion import FUSION_VERSION
    from export.quantize import PER_TOKEN_VERSION
    from export.registry import get_variant

    return {"arch": arch, "variants": list(names), "onnxruntime": onnxruntime.__version__,
            "optimum": optimum.version.__version__, "transformers": transformers.__version__,
            "methods": [get_variant(n).method for n in names], "fusion": FUSION_VERSION,
            "per_token": PER_TOKEN_VERSION, "base": BASE_VERSION}


def cache_key(record: dict) -> str:
    """The folder name's hash of a ``cache_record``: these fields in this order, as the folders were named before
    they kept a record, so those folders keep their names."""
    r = record
    stamp = json.dumps([r["arch"], r["onnxruntime"], r["optimum"], r["transformers"], r["methods"], r["fusion"],
                        r["per_token"], r["base"]], sort_keys=True)
    return hashlib.sha256(stamp.encode()).hexdigest()[:12]


def build_models(arch: dict, names: tuple[str, ...] = VARIANTS, root: Path = CACHE) -> tuple[Path, dict[str, Path]]:
    """(torch checkpoint, {variant: folder}), built once per architecture and tool versions. Each piece is
    written to a scratch folder and renamed into place, so an interrupted build is redone, never reused; the
    folder's lock keeps a second benchmark from building into it at the same time."""
    from common.files import atomic_write_json, folder_lock

    record = cache_record(arch, names)
    home = root / f"gptneox-{cache_key(record)}"
    with folder_lock(home, "the edge benchmark's build"):
        atomic_write_json(home / STAMP, record)
        return _build_models(home, arch, names)


def _build_models(home: Path, arch: dict, names: tuple[str, ...]) -> tuple[Path, dict[str, Path]]:
    from export.registry import FP32, BuildContext, resolve

    checkpoint = home / "checkpoint"
    if not (checkpoint / "model.safetensors").is_file():
        scratch = home / ".checkpoint.tmp"
        shutil.rmtree(scratch, ignore_errors=True)
        make_base(scratch, arch)
        shutil.rmtree(checkpoint, ignore_errors=True)
        scratch.rename(checkpoint)
    folders = {}
    for variant in resolve(list(names)):
        dest = home / variant.name
        if not (dest / "model.onnx").is_file():
            started = time.perf_counter()
            tmp, scratch = home / f".{variant.name}.tmp", home / ".scratch"
            for d in (tmp, scratch, dest):
                shutil.rmtree(d, ignore_errors=True)
            scratch.mkdir()
            needs = folders.get(variant.needs) if variant.needs else None
            variant.build(BuildContext(checkpoint, folders.get(FP32), scratch, "cpu", needs), tmp)
            tmp.rename(dest)
            shutil.rmtree(scratch, ignore_errors=True)
            print(f"  built {variant.name} in {time.perf_counter() - started:.0f}s", flush=True)
        folders[variant.name] = dest
    return checkpoint, {n: folders[n] for n in names}


def plain_pages(nbytes: int) -> np.ndarray:
    """``nbytes`` of float64 ones in an anonymous private mapping with no paging advice: paged as ONNX Runtime's
    own allocations of the weights are (glibc malloc, which gives no advice either), under the system's
    transparent huge page policy. numpy advises huge pages for every array of 4 MiB or more, and with the policy
    ``madvise`` (this machine's) only such arrays get them, at first touch where free 2 MiB frames are at hand,
    and later as khugepaged collapses them: one thread read 27 GB/s from 2 MiB pages against 20.5 from 4 KiB
    ones, and one run's arrays read 33.7 GB/s before its rounds and 51.9 in them (2026-11-29). The decode
    steps' weights kept 4 KiB pages throughout (AnonHugePages 0 in a process running only the runtime)."""
    mapping = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    array = np.frombuffer(mapping, dtype=np.float64)
    array[:] = 1.0
    return array


class ReadPass:
    """One pass of every core reading its own array (numpy's reductions release the GIL): called inside
    the timed rounds, so that each round has its own bandwidth and the floor moves with the machine. The
    arrays are paged as the weights they stand for are (``plain_pages``)."""

    def __init__(self, threads: int, mib_per_thread: int = 256):
        self.arrays = [plain_pages(mib_per_thread * 2**20) for _ in range(threads)]
        self.nbytes = sum(a.nbytes for a in self.arrays)
        self.pool = ThreadPoolExecutor(threads)
        self()  # faults the pages in

    def __call__(self) -> None:
        list(self.pool.map(np.sum, self.arrays))

    def close(self) -> None:
        self.pool.shutdown()


class GemvReadPass:
    """One row times a ``mib``-MiB fp32 weight in ONNX Runtime (MatMul over every core): a read pass by the
    kernel the fp32 decode steps themselves run, which streams memory faster than numpy's reductions on some
    hosts. Its threads stop spinning when the pass ends, so that they do not take the cores from the engine
    timed next."""

    def __init__(self, threads: int, mib: int = 512):
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper

        n = 8192
        k = mib * 2**20 // (4 * n)
        weight = numpy_helper.from_array(np.ones((k, n), np.float32), "w")
        graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "gemv_read",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])], [weight])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
        serialized = model.SerializeToString()
        del weight, graph, model  # the session holds its own copy (and may pack another): not two more here
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        opts.add_session_config_entry("session.force_spinning_stop", "1")
        self.session = ort.InferenceSession(serialized, opts, providers=["CPUExecutionProvider"])
        del serialized
        self.feed = {"x": np.ones((1, k), np.float32)}
        self.nbytes = k * n * 4
        self()  # the session's first run allocates

    def __call__(self) -> None:
        self.session.run(None, self.feed)

    def close(self) -> None:
        self.session = None


def read_bandwidth(reader: ReadPass, repeats: int = 5) -> dict:
    """Memory read bandwidth (bytes/s) of ``reader``'s threads, best of ``repeats`` passes; and one thread's
    copy bandwidth (read + write)."""
    reads = []
    for _ in range(repeats):
        t = time.perf_counter()
        reader()
        reads.append(reader.nbytes / (time.perf_counter() - t))
    source = reader.arrays[0]
    dest = plain_pages(source.nbytes)
    copies = []
    for _ in range(repeats + 1):
        t = time.perf_counter()
        np.copyto(dest, source)
        copies.append(2 * source.nbytes / (time.perf_counter() - t))
    return {"read_bytes_per_s": max(reads), "copy_bytes_per_s_one_thread": max(copies[1:]),
            "threads": len(reader.arrays), "bytes": reader.nbytes, "transparent_huge_pages": _thp_policy()}


def _thp_policy() -> str | None:
    """The system's transparent huge page policy (always, madvise or never; Linux), which pages the floor's
    arrays and the runtime's weights alike."""
    try:
        text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return None
    return text[text.find("[") + 1:text.find("]")] if "[" in text else text.strip()


def _prompts(n: int, length: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return ["".join(map(str, rng.integers(0, 10, length - 1))) + "=" for _ in range(n)]


def _agreement(rows: list[list[int]], reference: list[list[int]]) -> float:
    """The share of rows whose tokens are the reference's (one row per prompt, in order)."""
    return float(np.mean([a == b for a, b in zip(rows, reference, strict=True)]))


def _demo_accuracy(sweep: Path | None, names: tuple[str, ...]) -> dict[str, float | None]:
    """Mean per-digit accuracy on ``id`` of each variant's final checkpoints in the demo's accuracy.csv."""
    from common.accuracy_table import read_table

    path = sweep / "accuracy.csv" if sweep else None
    if path is None or not path.is_file():
        return dict.fromkeys(names)
    rows = [r for r in read_table(path) if r["split"] == "id" and r.get("digit_total")]
    last = {}
    for r in rows:
        last[r["run"]] = max(last.get(r["run"], 0), r["step"])
    out = {}
    for name in names:
        mine = [r["digit_correct"] / r["digit_total"] for r in rows
                if r["variant"] == name and r["step"] == last[r["run"]]]
        out[name] = statistics.mean(mine) if mine else None
    return out


def bench_edge(quick: bool = False, sweep: Path | None = Path("runs/demo"), batches=(1, 64), new_tokens: int = 16,
               prompt_tokens: int = 12, repeats: int = 5, min_seconds: float = 0.2, threads: int | None = None,
               cache: Path = CACHE, out_dir: Path | None = RESULTS) -> dict:
    import onnxruntime as ort
    import torch
    from optimum.onnxruntime import ORTModelForCausalLM
    from transformers import AutoModelForCausalLM, StoppingCriteria, StoppingCriteriaList

    from export import graph
    from export.runtime import MODEL_FILE, OnnxCausalLM

    if quick:
        batches, new_tokens, repeats, min_seconds = (1, 4), 8, 2, 0.02
    if new_tokens < 2:
        raise ValueError("new_tokens must be at least 2: a step is timed from the first new token to the last")
    threads = threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    arch = QUICK_ARCH if quick else PYTHIA_70M
    checkpoint, folders = build_models(arch, VARIANTS, cache)
    reader = ReadPass(threads, mib_per_thread=16 if quick else 256)
    gemv = GemvReadPass(threads, mib=64 if quick else 512)  # (64 MiB: twice this machine's L3, still quick)
    bandwidth = read_bandwidth(reader)

    runners = {v: OnnxCausalLM(f, threads=threads, providers=["CPUExecutionProvider"]) for v, f in folders.items()}
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    optimum = {v: ORTModelForCausalLM.from_pretrained(folders[v], use_cache=True, provider="CPUExecutionProvider",
                                                      session_options=opts) for v in ("onnx-fp32", INT8, INT4)}
    torch_model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    pad = runners["onnx-fp32"].pad_id
    prompts = _prompts(max(batches), prompt_tokens)
    ids = runners["onnx-fp32"].encode(prompts)
    assert {len(x) for x in ids} == {prompt_tokens}, "the char tokenizer maps one character to one token"

    class Clock(StoppingCriteria):
        """Stops nothing: notes the time as each token is chosen (generate calls it once per new token)."""

        def __init__(self, times: list[float]):
            self.times = times

        def __call__(self, input_ids, scores, **kwargs):
            self.times.append(time.perf_counter())
            return torch.zeros(input_ids.shape[0], dtype=torch.bool)

    def hf(model, batch: int, clock: list[float]):
        x = torch.tensor(ids[:batch])
        with torch.inference_mode():
            out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=new_tokens,
                                 do_sample=False, eos_token_id=None, pad_token_id=pad,
                                 stopping_criteria=StoppingCriteriaList([Clock(clock)]))
        return out[:, prompt_tokens:].tolist()

    def engines(batch: int) -> dict:
        """{(engine, variant): decode(clock) -> token ids}: ``new_tokens`` greedy tokens of the batch, the
        time noted in ``clock`` as each is chosen"""
        out = {}
        for v in VARIANTS:
            out["runtime", v] = lambda clock, r=runners[v]: r.generate_ids(ids[:batch], new_tokens, ignore_eos=True,
                                                                            clock=clock)
        for v in optimum:
            out["optimum", v] = lambda clock, m=optimum[v]: hf(m, batch, clock)
        out["generate", "onnx-fp32"] = lambda clock: hf(torch_model, batch, clock)
        return out

    # a decode step is timed inside the call, from the first new token to the last: the prompt's prefill (and
    # its full-sequence logits, 154 MB at batch 64) stays out, where the difference of a 16-token and a 1-token
    # call took in two prefills' noise (a step of -2.5 ms in one round of 2026-11-29)
    tokens, first_token_s = {}, {}

    def timed_decode(key: tuple, decode) -> tuple[float, int]:
        clock = [time.perf_counter()]
        tokens[key] = decode(clock)
        if len(clock) != new_tokens + 1:  # a call that stopped early would time fewer steps than it divides by
            raise RuntimeError(f"{key}: {len(clock) - 1} tokens decoded, {new_tokens} asked for")
        first_token_s.setdefault(key, []).append(clock[1] - clock[0])
        return clock[-1] - clock[1], new_tokens - 1  # the steps after the first token, and how many

    def timed_read(read) -> tuple[float, int]:
        started = time.perf_counter()
        read()
        return time.perf_counter() - started, 1

    variants, results, ratios, ratio_spread = {}, {}, {}, {}
    demo = _demo_accuracy(sweep, VARIANTS)

    def put(name: str, num: str, den: str) -> None:  # num's step time over den's: den's speed-up
        record_ratio(ratios, ratio_spread, name, paired_ratio(results[num]["step_samples"],
                                                              results[den]["step_samples"]))

    for batch in batches:
        decoders = engines(batch)
        points = {f"{e}/{v}": (lambda key=(e, v, batch), d=d: timed_decode(key, d)) for (e, v), d in decoders.items()}
        if batch == 1:  # the floor's bandwidth, read in every round beside the steps it is the floor of
            points["read"] = lambda: timed_read(reader)
            points["read-gemv"] = lambda: timed_read(gemv)
        # each engine's ONNX Runtime session has its own intra-op threads, which spin for tens of ms after a
        # run: the pause lets them rest, as they would on a device running one model (measured alternating
        # ort-int4-all with onnx-fp32 at batch 1: 2.36 ms a step, 2.11 with a 5 ms pause, 1.34 with 50 ms,
        # 1.29 alone)
        timed = interleaved(points, repeats=repeats, min_seconds=min_seconds, self_timed=True,
                            pause_s=0.0 if quick else 0.1)
        if batch == 1:  # each round's bandwidth: the faster of its two read passes
            numpy_bw = [reader.nbytes / t for t in timed["read"]["samples"]]
            gemv_bw = [gemv.nbytes / t for t in timed["read-gemv"]["samples"]]
            read_bw = [max(a, b) for a, b in zip(numpy_bw, gemv_bw)]
            results["read_bytes_per_s_in_rounds"] = spread(read_bw)
            results["read_bytes_per_s_numpy"] = spread(numpy_bw)
            results["read_bytes_per_s_gemv"] = spread(gemv_bw)
        for (engine, v) in decoders:
            steps = timed[f"{engine}/{v}"]["samples"]
            results[f"{engine}_{v}_b{batch}"] = {"step_s": spread(steps),
                                                 "tokens_per_s": spread([batch / s for s in steps]),
                                                 "first_token_s": spread(first_token_s[engine, v, batch]),
                                                 "step_samples": steps,
                                                 "calls_per_repeat": timed[f"{engine}/{v}"]["calls_per_repeat"],
                                                 "decode_s_per_repeat": timed[f"{engine}/{v}"]["measured_s_per_repeat"]}
            if engine != "runtime":  # greedy: every engine of a variant chooses the same tokens
                variants.setdefault(v, {}).setdefault("engines_agree", {})[f"{engine}_b{batch}"] = _agreement(
                    tokens[engine, v, batch], tokens["runtime", v, batch])
        put(f"int8_vs_fp32_b{batch}", f"runtime_onnx-fp32_b{batch}", f"runtime_{INT8}_b{batch}")
        put(f"int4_vs_fp32_b{batch}", f"runtime_onnx-fp32_b{batch}", f"runtime_{INT4}_b{batch}")
        put(f"edge_runtime_vs_generate_b{batch}", f"generate_onnx-fp32_b{batch}", f"runtime_onnx-fp32_b{batch}")
        put(f"edge_runtime_vs_optimum_b{batch}", f"optimum_onnx-fp32_b{batch}", f"runtime_onnx-fp32_b{batch}")
    fp32_tokens = tokens["runtime", "onnx-fp32", max(batches)]
    fp32_logits, mask = runners["onnx-fp32"].logits(ids)
    for v, r in runners.items():
        model = graph.load(folders[v] / MODEL_FILE)
        logits, _ = r.logits(ids)
        variants.setdefault(v, {}).update({
            "bytes_read_per_token": graph.bytes_read_per_token(model),
            "file_bytes": (folders[v] / MODEL_FILE).stat().st_size,
            "parity_vs_fp32": {"max_abs_logit_diff": float(np.abs(logits - fp32_logits)[mask.astype(bool)].max()),
                               "greedy_agreement": _agreement(tokens["runtime", v, max(batches)], fp32_tokens)},
            "demo_id_digit_accuracy": demo[v],
        })
    reader.close()
    gemv.close()
    for v in VARIANTS:  # the floor over the measured step, round by round: 1.0 is the limit of the memory
        floors = [variants[v]["bytes_read_per_token"] / bw for bw in read_bw]
        variants[v]["floor_s_per_step_b1"] = statistics.median(floors)
        record_ratio(ratios, ratio_spread, f"decode_b1_{v}_vs_floor",
                     paired_ratio(floors, results[f"runtime_{v}_b1"]["step_samples"]))

    payload = {"arch": arch, "quick": quick, "threads": threads, "batches": list(batches),
               "prompt_tokens": prompt_tokens, "new_tokens": new_tokens, "repeats": repeats,
               "bandwidth": bandwidth, "variants": variants, "results": results, "ratios": ratios,
               "ratio_spread": ratio_spread}
    print(f"read bandwidth {results['read_bytes_per_s_in_rounds']['median'] / 1e9:.1f} GB/s in the rounds "
          f"(median of the faster pass a round; numpy's sums {results['read_bytes_per_s_numpy']['median'] / 1e9:.1f}, "
          f"ONNX Runtime's fp32 GEMV {results['read_bytes_per_s_gemv']['median'] / 1e9:.1f}; numpy's best pass before "
          f"them {bandwidth['read_bytes_per_s'] / 1e9:.1f}, {threads} threads); "
          f"one thread's copy {bandwidth['copy_bytes_per_s_one_thread'] / 1e9:.1f} GB/s (read + write)")
    rows = []
    for v in VARIANTS:
        info = variants[v]
        row = [v, f"{info['bytes_read_per_token'] / 1e6:.0f}",
               f"{1e3 * info['floor_s_per_step_b1']:.2f}"]
        for batch in batches:
            for engine in ("runtime", "optimum", "generate"):
                r = results.get(f"{engine}_{v}_b{batch}")
                row.append(f"{r['tokens_per_s']['median']:.0f}" if r else "—")
        acc = info["demo_id_digit_accuracy"]
        rows.append([*row, "—" if acc is None else f"{acc:.3f}"])
    header = ["variant", "MB/token", "floor ms/token"]
    header += [f"{e} tok/s b{b}" for b in batches for e in ("runtime", "optimum", "generate")]
    publish("edge", payload, out_dir, [
        markdown_table([*header, "demo id accuracy"], rows),
        ratio_table(ratios, ratio_spread)])
    return payload
