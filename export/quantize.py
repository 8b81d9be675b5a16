"""ONNX Runtime quantizers applied to the full-precision export (no torch needed).

- dynamic int8 (``quantize_dynamic``): weights int8 per output channel; MatMul weights
  only unless the embedding and LM head are asked for too (a labelled ablation: quantized
  embeddings are what collapse small GPT-NeoX models, docs/design.md, Pitfalls). ORT quantizes
  activations with one scale for the whole input tensor, i.e. for the whole *batch*, so a
  row's answer would depend on its batch-mates (a served answer would differ from the
  offline one); ``per_token_activations`` rewrites that step to one scale and zero point
  per row (per token), which keeps MatMulInteger and makes every row independent. ORT's own graph
  is kept beside it as the variant's single-row graph (``ROW_MODEL_FILE``): for a step of one row
  and one token, the only shape where one scale per tensor is one scale per token, it computes the
  same bits in under half the nodes, and the runtime runs it there (batch-1 decoding).
- weight-only k-bit (``MatMulNBitsQuantizer``): round-to-nearest, symmetric, one scale per
  block of input channels, stored packed in MatMulNBits; the LM head stays fp32.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import shutil
from pathlib import Path

import numpy as np
import onnx

from export.graph import node_index, weight_roles
from export.runtime import MODEL_FILE, ROW_MODEL_FILE

log = logging.getLogger("fracture.export")


@contextlib.contextmanager
def _quiet():
    """The quantizers log every node at INFO (and advice at WARNING) on the root logger."""
    loggers = [logging.getLogger(), logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def copy_side_files(src: Path, dest: Path) -> None:
    """Tokenizer, config and fracture.json travel with every variant; the graph does not."""
    dest.mkdir(parents=True, exist_ok=True)
    for p in src.iterdir():
        if p.is_file() and p.suffix != ".onnx" and not p.name.endswith(".onnx_data") and p.name != "manifest.json":
            shutil.copy2(p, dest / p.name)


def _lm_head_nodes(model: onnx.ModelProto) -> list[str]:
    roles = weight_roles(model)
    return [n.name for n in model.graph.node
            if n.op_type == "MatMul" and any(roles.get(i) == "lm_head" for i in n.input)]


def dynamic_int8(fp32_dir: Path, dest: Path, include_embeddings_and_head: bool) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    copy_side_files(fp32_dir, dest)
    model = onnx.load(str(fp32_dir / MODEL_FILE))
    with _quiet():
        quantize_dynamic(
            str(fp32_dir / MODEL_FILE), str(dest / MODEL_FILE), per_channel=True, weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul", "Gather"] if include_embeddings_and_head else ["MatMul"],
            nodes_to_exclude=[] if include_embeddings_and_head else _lm_head_nodes(model),
            # ONNX shape inference stops at contrib ops (the fused attention, export.fusion): the tensors
            # it cannot type are the graph's float activations
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    quantized = onnx.load(str(dest / MODEL_FILE))
    row = onnx.ModelProto()
    row.CopyFrom(quantized)
    if not per_token_activations(quantized):
        raise RuntimeError("quantize_dynamic left no DynamicQuantizeLinear: nothing was quantized")
    # the row graph as ONNX Runtime is given the main one: the same opset and IR version, no shapes inferred
    # beforehand, so that its optimizer sees the two graphs alike
    del row.opset_import[:]
    row.opset_import.extend(quantized.opset_import)
    row.ir_version = quantized.ir_version
    del row.graph.value_info[:]
    onnx.save(quantized, str(dest / MODEL_FILE))
    onnx.save(row, str(dest / ROW_MODEL_FILE))
    try:
        check_row_graph(dest)
    except RowGraphMismatch as exc:  # the variant stands without it: batch-1 steps run the main graph
        (dest / ROW_MODEL_FILE).unlink()
        log.warning("%s: left out, batch-1 steps run %s", exc, MODEL_FILE)


class RowGraphMismatch(RuntimeError):
    """The single-row graph computed other bits than the main graph on a step it would run."""


def check_row_graph(folder: Path, prompts: int = 4, prompt_tokens: int = 8, steps: int = 8, seed: int = 0,
                    threads: tuple[int, ...] = (1, 2)) -> int:
    """Raise ``RowGraphMismatch`` unless the single-row graph computes its main graph's bits on every step it
    would run: random prompts of one row (the first of one token, whose prefill is such a step too) are
    decoded greedily by the main graph, and at each forward pass of one row and one token both graphs run the
    same inputs, every output (logits, every present key and value) compared byte for byte; at each thread
    count in ``threads`` (a product split across threads may sum in another order). Returns the number of
    steps compared.

    Why they agree: on one row of one token, ORT's DynamicQuantizeLinear and the per-token rewrite compute the
    same scale, zero point and uint8 values (tests/export/test_quantize.py); the integer product corrected by
    the zero point is the same int32 in both (``per_token_activations``); the nodes after it are the same in
    both graphs. What this adds is that ONNX Runtime, with the row graph's fusions left out
    (``export.runtime.ROW_DISABLED_FUSIONS``), optimizes and runs them alike on this machine: a sample, not a
    proof, and for this onnxruntime (the manifest records its version)."""
    from export.runtime import OnnxCausalLM

    rng = np.random.default_rng(seed)
    lengths = [1, *[prompt_tokens] * (prompts - 1)] if prompts else []
    compared = 0
    for n_threads in threads:
        runner = OnnxCausalLM(folder, threads=n_threads, providers=["CPUExecutionProvider"])
        if runner.row_session is None:
            raise RuntimeError(f"{folder}: no {ROW_MODEL_FILE} to check")
        vocab = runner.tokenizer.get_vocab_size()
        for length in lengths:
            ids, mask = runner.left_pad([rng.integers(0, vocab, length).tolist()])
            past = runner._empty_past(1)
            for step in range(steps + 1):
                feed = runner._feed(ids, mask, past)
                main = runner.session.run(runner._output_names, feed)
                if runner.session_for(ids) is runner.row_session:  # the runtime's own rule for such a step
                    row = runner.row_session.run(runner._output_names, feed)
                    for name, a, b in zip(runner._output_names, main, row):
                        if a.shape != b.shape or a.tobytes() != b.tobytes():
                            how = (f"max |diff| {np.abs(a - b).max():.3g}" if a.shape == b.shape
                                   else f"{b.shape} for {a.shape}")
                            raise RowGraphMismatch(
                                f"{folder}: {ROW_MODEL_FILE} differs from {MODEL_FILE} on {name} at forward pass "
                                f"{step + 1} of a {length}-token prompt, {n_threads} thread(s) ({how})")
                    compared += 1
                logits, *past = main
                ids = logits[:, -1:].argmax(axis=-1).astype(np.int64)
                mask = np.concatenate([mask, np.ones((1, 1), np.int64)], axis=1)
    return compared


BLOCKED_QUANTIZE_OPSET, BLOCKED_QUANTIZE_IR = 21, 10  # QuantizeLinear with block_size, and the IR version it needs
CHANGED_BY_OPSET_21 = {"DFT", "GridSample", "GroupNormalization"}  # ops whose meaning changed from opset 18 to 21
# bumped whenever per_token_activations' graph changes, or what is exported beside it (the benchmark's model cache
# is keyed on it, and an older export is rebuilt): 3 added the single-row graph, 4 made the zero point's correction
# int32 (it was float32: exact only below 2**24)
PER_TOKEN_VERSION = 4


def per_token_activations(model: onnx.ModelProto) -> int:
    """Replace each DynamicQuantizeLinear (one uint8 scale and zero point for the whole
    tensor, i.e. the batch) by asymmetric uint8 quantization per token (per row of the last
    axis). Returns how many were replaced.

    MatMulInteger only takes a scalar zero point for its activations, so the per-row zero
    point z is applied after the integer product, in int32: (q - z) @ W = q @ W - z * colsum(W),
    exact at any width below 65,000 inputs (|q @ W| and |z * colsum(W)| ≤ 255 · 128 · K < 2**31).
    That is how ONNX Runtime's kernels apply a scalar zero point too (its product of the raw uint8
    values, then a correction by the zero point in int32), so one row of this graph and ORT's own
    per-tensor graph of that row alone (``ROW_MODEL_FILE``) compute the same integers.

    The rounding to uint8 is one blocked QuantizeLinear (opset 21: one block of the whole last
    axis, i.e. one scale and zero point per row), which computes saturate(round(x / scale) + z)
    exactly as the Div, Round, Add, Clip and Cast it replaces (the same bits, tested), in 2 nodes
    instead of 5: at batch 1 a decode step is mostly such small nodes.
    The model's default opset is raised to 21 for it (and its IR version to 10, the first that
    opset needs). Of the ops whose meaning changed between opsets 18 and 21 (DFT, GridSample,
    GroupNormalization), a graph holding one is refused; the others only gained types or
    attributes whose defaults keep the old behaviour.
    """
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    changed = sorted({n.op_type for n in graph.node if n.domain in ("", "ai.onnx")} & CHANGED_BY_OPSET_21)
    if changed:
        raise ValueError(f"the graph holds {changed}, whose meaning changed by opset {BLOCKED_QUANTIZE_OPSET}")
    inits = {t.name: t for t in graph.initializer}
    _, consumers = node_index(graph.node)
    consts = {"pt_axes": np.array([-1], np.int64), "pt_zero": np.array(0.0, np.float32),
              "pt_255": np.array(255.0, np.float32), "pt_tiny": np.array(1e-12, np.float32),
              "pt_zp": np.array(0, np.uint8)}
    new_inits = [numpy_helper.from_array(v, k) for k, v in consts.items()]
    after: dict[str, list] = {}  # Cast node name -> nodes to insert right after it
    nodes, count = [], 0
    for node in graph.node:
        if node.op_type != "DynamicQuantizeLinear":
            nodes.append(node)
            for extra in after.pop(node.name, []):
                nodes.append(extra)
            continue
        count += 1
        x, (q, scale, zero) = node.input[0], node.output
        t = f"{node.name or q}_pt"
        z = f"{t}_z"
        widths = {inits[mm.input[1]].dims[0] for mm in consumers.get(q, []) if mm.op_type == "MatMulInteger"}
        if len(widths) != 1:
            raise ValueError(f"{q} feeds no MatMulInteger with a stored weight (or several widths: {widths})")
        nodes += [
            helper.make_node("ReduceMax", [x, "pt_axes"], [f"{t}_max"], name=f"{t}_ReduceMax", keepdims=1),
            helper.make_node("ReduceMin", [x, "pt_axes"], [f"{t}_min"], name=f"{t}_ReduceMin", keepdims=1),
            helper.make_node("Max", [f"{t}_max", "pt_zero"], [f"{t}_hi"], name=f"{t}_Hi"),  # range holds 0
            helper.make_node("Min", [f"{t}_min", "pt_zero"], [f"{t}_lo"], name=f"{t}_Lo"),
            helper.make_node("Sub", [f"{t}_hi", f"{t}_lo"], [f"{t}_range"], name=f"{t}_Range"),
            helper.make_node("Max", [f"{t}_range", "pt_tiny"], [f"{t}_safe"], name=f"{t}_Safe"),
            helper.make_node("Div", [f"{t}_safe", "pt_255"], [scale], name=f"{t}_Scale"),
            helper.make_node("Div", [f"{t}_lo", scale], [f"{t}_neg"], name=f"{t}_Neg"),
            helper.make_node("Neg", [f"{t}_neg"], [f"{t}_zraw"], name=f"{t}_ZRaw"),
            helper.make_node("Round", [f"{t}_zraw"], [z], name=f"{t}_Z"),  # in 0..255: lo <= 0 <= hi
            helper.make_node("Cast", [z], [f"{t}_zq"], name=f"{t}_ZQ", to=TensorProto.UINT8),
            helper.make_node("Cast", [f"{t}_zq"], [f"{t}_zi"], name=f"{t}_ZI", to=TensorProto.INT32),
            helper.make_node("QuantizeLinear", [x, scale, f"{t}_zq"], [q], name=f"{t}_Quantize", axis=-1,
                             block_size=widths.pop()),
        ]
        for mm in consumers.get(zero, []):
            if mm.op_type != "MatMulInteger":
                raise ValueError(f"{zero} feeds a {mm.op_type}; only MatMulInteger is handled")
            mm.input[2] = "pt_zp"
            w = numpy_helper.to_array(inits[mm.input[1]]).astype(np.int64)
            w_zero = numpy_helper.to_array(inits[mm.input[3]]).astype(np.int64) if len(mm.input) > 3 else 0
            colsum = f"{mm.name}_pt_colsum"
            new_inits.append(numpy_helper.from_array((w - w_zero).sum(axis=0).astype(np.int32), colsum))
            fixed = mm.output[0]  # what the product's Cast reads: the corrected integers
            raw = f"{fixed}_pt_raw"
            mm.output[0] = raw
            after.setdefault(mm.name, []).extend([
                helper.make_node("Mul", [f"{t}_zi", colsum], [f"{mm.name}_pt_corr"], name=f"{mm.name}_pt_Corr"),
                helper.make_node("Sub", [raw, f"{mm.name}_pt_corr"], [fixed], name=f"{mm.name}_pt_Sub"),
            ])
    if after:
        raise ValueError(f"could not place the zero-point correction after {sorted(after)}")
    if count:
        for opset in model.opset_import:
            if opset.domain in ("", "ai.onnx"):
                opset.version = max(opset.version, BLOCKED_QUANTIZE_OPSET)
        model.ir_version = max(model.ir_version, BLOCKED_QUANTIZE_IR)
        graph.initializer.extend(new_inits)
        del graph.node[:]
        graph.node.extend(nodes)
        del graph.value_info[:]  # shapes inferred for the per-tensor version no longer hold
    return count


def matmul_nbits(fp32_dir: Path, dest: Path, bits: int, block_size: int = 32, include_head: bool = False,
                 accuracy_level: int = 0) -> None:
    """MatMulNBits quantization of the block MatMuls' weights (and the LM head's with ``include_head``).

    ``accuracy_level`` is the kernel's compute type (ONNX Runtime's contrib op spec): 0 computes in fp32
    from the dequantized weights (weight-only); 4 quantizes the activations to int8 per block and uses
    integer dot products, several times faster at batch 1 on x86.
    """
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    copy_side_files(fp32_dir, dest)
    model = onnx.load(str(fp32_dir / MODEL_FILE))
    with _quiet():
        quantizer = MatMulNBitsQuantizer(model, bits=bits, block_size=block_size, is_symmetric=True,
                                         accuracy_level=accuracy_level or None,
                                         nodes_to_exclude=[] if include_head else _lm_head_nodes(model))
        quantizer.process()
    quantizer.model.save_model_to_file(str(dest / MODEL_FILE), use_external_data_format=False)


@functools.cache  # probing quantizes and runs a graph: once per process
def nbits_supported(bits: int) -> str | None:
    """``None`` when this ONNX Runtime can quantize to and run MatMulNBits with ``bits``, else why not."""
    try:
        from onnxruntime.quantization import matmul_nbits_quantizer as mnq
    except ImportError as exc:
        return f"onnxruntime's MatMulNBits quantizer cannot be imported ({exc})"
    try:
        mnq.DefaultWeightOnlyQuantConfig(bits=bits)
    except (AssertionError, TypeError, ValueError) as exc:
        return f"this onnxruntime's MatMulNBits quantizer has no {bits}-bit mode ({exc})"
    return _nbits_kernel_runs(bits)


def _nbits_kernel_runs(bits: int) -> str | None:
    """Quantize and run a 64x64 MatMul: the quantizer may accept bits the CPU kernel lacks."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((64, 64)).astype("float32"), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    try:
        with _quiet():
            q = MatMulNBitsQuantizer(model, bits=bits, block_size=32, is_symmetric=True)
            q.process()
        sess = ort.InferenceSession(q.model.model.SerializeToString(), providers=["CPUExecutionProvider"])
        sess.run(None, {"x": np.ones((1, 64), "float32")})
    except Exception as exc:  # noqa: BLE001 - any failure means "not supported here"
        return f"this onnxruntime cannot run {bits}-bit MatMulNBits on the CPU ({type(exc).__name__}: {exc})"
    return None
