"""ONNX Runtime quantizers applied to the full-precision export (no torch needed).

- dynamic int8 (``quantize_dynamic``): weights int8 per output channel, activations
  quantized per batch at run time; MatMul weights only unless the embedding and LM head
  are asked for too (a labelled ablation: per-tensor activation int8 and quantized
  embeddings are what collapse small GPT-NeoX models, DESIGN.md Pitfalls).
- weight-only k-bit (``MatMulNBitsQuantizer``): round-to-nearest, symmetric, one scale per
  block of input channels, stored packed in MatMulNBits; the LM head stays fp32.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from pathlib import Path

import onnx

from export.graph import weight_roles
from export.runtime import MODEL_FILE


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
        )


def matmul_nbits(fp32_dir: Path, dest: Path, bits: int, block_size: int = 32) -> None:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    copy_side_files(fp32_dir, dest)
    model = onnx.load(str(fp32_dir / MODEL_FILE))
    with _quiet():
        quantizer = MatMulNBitsQuantizer(model, bits=bits, block_size=block_size, is_symmetric=True,
                                         nodes_to_exclude=_lm_head_nodes(model))
        quantizer.process()
    quantizer.model.save_model_to_file(str(dest / MODEL_FILE), use_external_data_format=False)


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
