"""trt-fp16: a TensorRT engine built from the ONNX export, run through ORT's TensorRT EP.

The graph is converted to fp16 first (inputs and outputs stay fp32) rather than asking
the builder for FP16: TensorRT 11 removed the INT8/FP16 builder flags, and an fp16 graph
gives the same engine on 10 and 11. Optimization profiles cover the KV-cache shapes the
runtime feeds (batch 1..MAX_BATCH, past length 0..MAX_SEQ). The engine is built once at
export time into the variant folder (``trt-cache/``) and reused by every session, so
evaluation and serving run the engine that was built and hashed.

Needs ``tensorrt``, onnxruntime-gpu with the TensorRT EP and a CUDA GPU; elsewhere the
variant is skipped with the reason from ``trt_available``.
"""

from __future__ import annotations

import json
from pathlib import Path

MAX_BATCH = 512
MAX_SEQ = 64
CACHE = "trt-cache"


def trt_available() -> str | None:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "tensorrt is not installed (pip install tensorrt on a CUDA machine)"
    import onnxruntime as ort

    if "TensorrtExecutionProvider" not in ort.get_available_providers():
        return "this onnxruntime has no TensorRT execution provider (install onnxruntime-gpu)"
    try:
        import torch

        if not torch.cuda.is_available():
            return "no CUDA GPU"
    except ImportError:
        pass
    return None


def _profiles(model_dir: Path) -> dict[str, str]:
    import onnx

    model = onnx.load(str(model_dir / "model.onnx"), load_external_data=False)
    shapes = {"min": [], "opt": [], "max": []}
    for inp in model.graph.input:
        dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
        if inp.name.startswith("past_key_values."):
            heads, head_dim = dims[1], dims[3]
            for key, (b, s) in {"min": (1, 0), "opt": (64, 8), "max": (MAX_BATCH, MAX_SEQ)}.items():
                shapes[key].append(f"{inp.name}:{b}x{heads}x{s}x{head_dim}")
        elif inp.name == "attention_mask":
            for key, (b, s) in {"min": (1, 1), "opt": (64, 16), "max": (MAX_BATCH, MAX_SEQ)}.items():
                shapes[key].append(f"{inp.name}:{b}x{s}")
        else:  # input_ids, position_ids: the prompt on the first step, one token after
            for key, (b, s) in {"min": (1, 1), "opt": (64, 1), "max": (MAX_BATCH, MAX_SEQ)}.items():
                shapes[key].append(f"{inp.name}:{b}x{s}")
    return {f"trt_profile_{k}_shapes": ",".join(v) for k, v in shapes.items()}


def trt_providers(model_dir: Path) -> list:
    options = {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(model_dir / CACHE),
               "trt_timing_cache_enable": True, **_profiles(model_dir)}
    return [("TensorrtExecutionProvider", options), "CUDAExecutionProvider"]


def build_trt_fp16(fp32_dir: Path, dest: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from export.quantize import copy_side_files
    from export.runtime import MODEL_FILE, OnnxCausalLM

    copy_side_files(fp32_dir, dest)
    model = convert_float_to_float16(onnx.load(str(fp32_dir / MODEL_FILE)), keep_io_types=True)
    onnx.save(model, str(dest / MODEL_FILE))
    (dest / CACHE).mkdir(exist_ok=True)
    runner = OnnxCausalLM(dest, providers=trt_providers(dest))  # builds and caches the engine
    if runner.session.get_providers()[0] != "TensorrtExecutionProvider":
        raise RuntimeError(f"TensorRT EP did not take the graph (providers: {runner.session.get_providers()})")
    runner.complete(["1+1="], max_new_tokens=2)
    (dest / "trt.json").write_text(json.dumps({"max_batch": MAX_BATCH, "max_seq": MAX_SEQ}))
