"""Noise-matched controls: the fp32 checkpoint plus Gaussian noise of a quantized variant's error energy.

Quantization noise alone attenuates correlations (docs/design.md, "Noise is not quantization"),
so ``noise@<q>`` adds to every weight tensor that ``<q>`` quantizes independent Gaussian
noise whose variance is that tensor's mean squared quantization error, and exports the
result as fp32. An effect that ``<q>`` shows and ``noise@<q>`` shares is generic weight
noise; one that only ``<q>`` shows is specific to quantization.

The error is measured on the weights as ``<q>`` really stores them: dequantized from its
saved ONNX graph (MatMulInteger / quantized Gather tables, MatMulNBits) for ONNX Runtime
variants, and from the same torch rounding for sim-w{k}. Each tensor's noise comes from a
generator seeded with a fixed constant and the tensor's name, so a rebuild gives the same
bytes; the targets, the realised errors and the seeds are written to ``noise.json`` in
the variant folder and copied into its manifest.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import helper, numpy_helper

from export.runtime import MODEL_FILE

if TYPE_CHECKING:
    from export.registry import BuildContext

NOISE_FILE = "noise.json"
NOISE_SEED = 20_250_601  # fixed: the same checkpoint always gets the same noise
SEED_RULE = ("numpy default_rng(first 8 bytes, little-endian, of sha256('<seed>:<source>:<checkpoint sha256>:"
             "<torch parameter name>'))")
# realised vs target mean squared error: the sample mean of n squared N(0, s2) draws has a
# relative standard error of sqrt(2 / n); beyond 5 of those the noise is not what was asked
MAX_SIGMAS = 5.0


# -- the quantized weights as stored ---------------------------------------------------

def _nbits_weight(node: onnx.NodeProto, arr) -> np.ndarray:
    """Dequantized B of one MatMulNBits node, [N, K] (ONNX Runtime contrib op spec).

    B is uint8 [N, k_blocks, blob], codes packed low bits first along K; the weight is
    (code - zero_point) * scale per (column, block). Without a zero_points input the zero
    point is 2**(bits-1); a uint8 zero_points input is packed like B, a float one is not.
    """
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    k, n, bits, block = attrs["K"], attrs["N"], attrs.get("bits", 4), attrs["block_size"]
    if len(node.input) > 4 and node.input[4]:
        raise ValueError(f"{node.name}: MatMulNBits with g_idx (act-order) is not supported")
    k_blocks = -(-k // block)
    codes = _unpack(arr(node.input[1]), bits).reshape(n, k_blocks, block).astype(np.float64)
    scales = arr(node.input[2]).astype(np.float64).reshape(n, k_blocks)
    if len(node.input) > 3 and node.input[3]:
        zp = arr(node.input[3])
        zp = (_unpack(zp.reshape(n, -1), bits)[:, :k_blocks] if zp.dtype == np.uint8 else zp.reshape(n, k_blocks))
    else:
        zp = np.full((n, k_blocks), 2 ** (bits - 1))
    weight = (codes - zp.astype(np.float64)[..., None]) * scales[..., None]
    return weight.reshape(n, k_blocks * block)[:, :k]  # the last block is padded when K % block_size


def _unpack(packed: np.ndarray, bits: int) -> np.ndarray:
    """uint8 bytes -> codes of ``bits`` each, low bits first; the last axis grows by 8 // bits."""
    shifts = np.arange(0, 8, bits, dtype=np.uint8)
    codes = (packed[..., None] >> shifts) & np.uint8(2 ** bits - 1)
    return codes.reshape(*packed.shape[:-1], -1)


def dequantized_weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """{fp32 initializer name: dequantized weight in that initializer's layout} of every weight
    an ONNX Runtime quantizer replaced.

    quantize_dynamic stores weight ``W`` as ``W_quantized`` with ``W_scale`` and ``W_zero_point``
    (MatMulInteger weights per output column, i.e. along the last axis; a quantized Gather
    table per tensor); MatMulNBitsQuantizer stores ``W_Q{bits}`` and ``W_scales`` [+ ``W_zero_points``].
    """
    inits = {t.name: t for t in model.graph.initializer}

    def arr(name: str) -> np.ndarray:
        return numpy_helper.to_array(inits[name])

    out = {}
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            bits = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "bits"), 4)
            out[_stem(node.input[1], f"_Q{bits}")] = _nbits_weight(node, arr).T  # fp32 MatMul layout: [K, N]
    for name in inits:
        if not name.endswith("_quantized"):
            continue
        stem = _stem(name, "_quantized")
        if f"{stem}_scale" not in inits:
            raise ValueError(f"{name}: no {stem}_scale beside it (not quantize_dynamic's layout)")
        q, scale = arr(name), arr(f"{stem}_scale")
        if scale.ndim and scale.shape != q.shape[-1:]:
            raise ValueError(f"{name}: scale of shape {scale.shape} is neither per tensor nor per column of {q.shape}")
        zero = arr(f"{stem}_zero_point").astype(np.float64) if f"{stem}_zero_point" in inits else 0.0
        out[stem] = (q.astype(np.float64) - zero) * scale.astype(np.float64)
    return out


def _stem(name: str, suffix: str) -> str:
    if not name.endswith(suffix):
        raise ValueError(f"quantized weight {name!r} does not end in {suffix!r}: cannot tell which fp32 weight it was")
    return name[: -len(suffix)]


# -- per-tensor error energy (the noise targets) ----------------------------------------

def _digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a, dtype=np.float32).tobytes()).hexdigest()


def _torch_owners(model) -> dict[str, tuple[str, Callable[[np.ndarray], np.ndarray]]]:
    """{sha256 of the values: (torch parameter name, how an fp32 export stores it)} for every matrix, in
    each form an export may store it: as is; transposed (optimum names MatMul weights ``onnx::MatMul_<n>``
    and stores them transposed); and for GPT-NeoX's QKV projection, transposed with its columns
    query-key-value major (``export.fusion``). The values (bit-exact after an fp32 export) are what tie an
    ONNX weight to its torch parameter."""
    from export.fusion import qkv_major

    config, qkv_forms = model.config, []
    if config.model_type == "gpt_neox":
        heads, head_dim = config.num_attention_heads, config.hidden_size // config.num_attention_heads
        qkv_forms = [lambda w: qkv_major(w.T, heads, head_dim)]
    owners: dict[str, tuple[str, Callable]] = {}
    for name, p in model.named_parameters():
        if p.ndim != 2:
            continue
        w = p.detach().cpu().numpy()
        extra = qkv_forms if name.endswith("attention.query_key_value.weight") else []
        for store in (_as_is, np.transpose, *extra):
            key = _digest(store(w))
            if owners.setdefault(key, (name, store))[0] != name:
                raise ValueError(f"{owners[key][0]} and {name} hold the same values: "
                                 "cannot tell their ONNX weights apart")
    return owners


def _as_is(w: np.ndarray) -> np.ndarray:
    return w


def onnx_error(model, quantized_dir: Path, fp32_dir: Path) -> dict[str, float]:
    """{torch parameter name: mean((W_q - W)^2)} of every weight the ONNX Runtime variant in
    ``quantized_dir`` quantized, against the fp32 export in ``fp32_dir``."""
    from export.graph import load

    fp32 = {t.name: numpy_helper.to_array(t) for t in load(fp32_dir / MODEL_FILE).graph.initializer}
    owners = _torch_owners(model)
    out: dict[str, float] = {}
    for name, w_q in dequantized_weights(load(quantized_dir / MODEL_FILE)).items():
        w = fp32.get(name)
        if w is None or w.shape != w_q.shape:
            raise ValueError(f"{quantized_dir.name}: {name} has no fp32 counterpart of shape {w_q.shape} "
                             f"in {fp32_dir.name}")
        owner, _ = owners.get(_digest(w), (None, None))
        if owner is None:
            raise ValueError(f"{fp32_dir.name}: {name} equals no parameter of the checkpoint")
        if owner in out:
            raise ValueError(f"two quantized weights map to {owner}")
        out[owner] = _mse(w_q, w)
    if not out:
        raise ValueError(f"{quantized_dir.name}: its graph holds no quantized weight")
    return out


def simulated_error(model, bits: int) -> dict[str, float]:
    """{torch parameter name: mean((W_q - W)^2)} of sim-w{bits}: the same rounding, in torch."""
    from export.onnx_export import block_linears, round_block_weights_

    fp32 = {name: p.detach().numpy() for name, p in model.named_parameters()}
    rounded = round_block_weights_(copy.deepcopy(model), bits)
    return {f"{n}.weight": _mse(lin.weight.detach().numpy(), fp32[f"{n}.weight"]) for n, lin in block_linears(rounded)}


def _mse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))


# -- the noise ------------------------------------------------------------------------

def tensor_seed(name: str, key: str = "") -> int:
    """One seed per tensor, from the fixed constant, the build's key (source variant and checkpoint)
    and the name: independent of the order tensors are visited in, and a different draw for every
    checkpoint and source, so no noise direction is shared across the runs of a population."""
    return int.from_bytes(hashlib.sha256(f"{NOISE_SEED}:{key}:{name}".encode()).digest()[:8], "little")


def _roles(model) -> dict[str, str]:
    head = model.get_output_embeddings()
    special = {id(model.get_input_embeddings().weight): "embeddings"}
    if head is not None:
        special[id(head.weight)] = "lm_head"
    return {name: special.get(id(p), "blocks") for name, p in model.named_parameters()}


def add_noise_(model, targets: dict[str, float], seeds: dict[str, int]) -> dict[str, dict]:
    """Add N(0, target) noise in place to each named parameter; returns the per-tensor record."""
    import torch

    params, roles = dict(model.named_parameters()), _roles(model)
    tensors = {}
    with torch.no_grad():
        for name in sorted(targets):
            p, target, seed = params[name], float(targets[name]), int(seeds[name])
            before = p.detach().numpy().copy()
            noise = np.random.default_rng(seed).standard_normal(tuple(p.shape), dtype=np.float32)
            p.add_(torch.from_numpy(noise * np.float32(math.sqrt(target))))
            tensors[name] = {"role": roles[name], "numel": p.numel(), "seed": seed, "target_mse": target,
                             "realised_mse": _mse(p.detach().numpy(), before)}
    return tensors


def noised_reference(model, record: dict):
    """A copy of ``model`` with the noise ``record`` describes (the variant's parity reference)."""
    noised = copy.deepcopy(model)
    add_noise_(noised, {name: t["target_mse"] for name, t in record["tensors"].items()},
               {name: t["seed"] for name, t in record["tensors"].items()})
    return noised


def check_record(record: dict, roles: tuple[str, ...]) -> list[str]:
    """Problems with a build's noise: energies that miss their target, roles other than the source's."""
    problems = []
    for name, t in record["tensors"].items():
        allowed = MAX_SIGMAS * t["target_mse"] * math.sqrt(2 / t["numel"])
        if abs(t["realised_mse"] - t["target_mse"]) > allowed:
            problems.append(f"{name}: realised mse {t['realised_mse']:.3g} is not the target {t['target_mse']:.3g}")
    noised = {t["role"] for t in record["tensors"].values()}
    if noised != set(roles):
        problems.append(f"noise reached {sorted(noised)} but {record['source']} quantizes {sorted(roles)}")
    return problems


def read_record(folder: Path) -> dict:
    return json.loads((folder / NOISE_FILE).read_text())


def build_noise_control(ctx: BuildContext, source: str, simulated_bits: int | None, dest: Path) -> dict:
    """Write ``noise@<source>`` into ``dest``: measure the source's error per tensor, noise the
    fp32 checkpoint to match, and write it as fp32: the published onnx-fp32 graph with the noised
    values where that exists, else an export of the noised checkpoint (like sim-w{k}); returns the
    noise record."""
    from transformers import AutoModelForCausalLM

    from common.files import sha256_file
    from export.onnx_export import export_onnx, save_derived_checkpoint

    model = AutoModelForCausalLM.from_pretrained(ctx.checkpoint).eval()
    original = copy.deepcopy(model) if ctx.fp32_dir is not None else None  # what reweighted_graph maps from
    if simulated_bits:
        targets, source_sha = simulated_error(model, simulated_bits), None
    else:
        if ctx.fp32_dir is None or ctx.needs_dir is None:
            raise ValueError(f"noise@{source} needs the published onnx-fp32 and {source} of this checkpoint")
        targets = onnx_error(model, ctx.needs_dir, ctx.fp32_dir)
        source_sha = sha256_file(ctx.needs_dir / MODEL_FILE)
    key = f"{source}:{sha256_file(ctx.checkpoint / 'model.safetensors')}"
    seeds = {name: tensor_seed(name, key) for name in targets}
    record = {"source": source, "source_model_sha256": source_sha, "simulated_bits": simulated_bits,
              "seed": NOISE_SEED, "seed_key": key, "seed_rule": SEED_RULE,
              "tensors": add_noise_(model, targets, seeds)}
    if ctx.fp32_dir is not None:  # the published fp32 graph with the noised values: no second export
        reweighted_graph(ctx.fp32_dir, original, model, dest)
    else:
        noised = ctx.scratch / "noised-checkpoint"
        save_derived_checkpoint(model, ctx.checkpoint, noised)
        export_onnx(noised, dest)
    (dest / NOISE_FILE).write_text(json.dumps(record, indent=1) + "\n")
    return record


def reweighted_graph(fp32_dir: Path, original, changed, dest: Path) -> None:
    """Write ``fp32_dir``'s graph (an fp32 export of ``original``) into ``dest`` with each matrix that
    ``changed`` holds differently put in place of the weight it was exported from.

    What optimum would export from ``changed``, without tracing the model again: an fp32 export stores
    every matrix bit-exact (MatMul weights transposed, the fused QKV's columns reordered), so the values
    tie an initializer to its torch parameter (``_torch_owners``). A changed parameter no initializer holds
    is an error.
    """
    from export.graph import load
    from export.quantize import copy_side_files

    before = {name: p.detach().cpu().numpy() for name, p in original.named_parameters()}
    after = {name: p.detach().cpu().numpy() for name, p in changed.named_parameters()}
    todo = {name for name, w in after.items() if not np.array_equal(w, before[name])}
    owners = {key: owner for key, owner in _torch_owners(original).items() if owner[0] in todo}
    graph = load(fp32_dir / MODEL_FILE)
    placed = set()
    for init in graph.graph.initializer:
        hit = owners.get(_digest(numpy_helper.to_array(init))) if len(init.dims) == 2 else None
        if hit is None:
            continue
        name, store = hit
        value = store(after[name])
        init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(value, dtype=np.float32), init.name))
        placed.add(name)
    if todo - placed:
        raise ValueError(f"{fp32_dir.name}: no initializer holds {sorted(todo - placed)} of the checkpoint")
    copy_side_files(fp32_dir, dest)
    onnx.save(graph, str(dest / MODEL_FILE))
