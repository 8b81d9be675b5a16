"""Torch checkpoint -> ONNX with the KV cache (optimum-onnx), and simulated k-bit weights.

``text-generation-with-past`` exports one graph that takes ``past_key_values`` (empty on
the first step), so decoding is linear in the output length. Each layer's attention is then
fused into ONNX Runtime's contrib ops (``export.fusion``: a GPT-NeoX decode step runs ~100
nodes instead of ~500, every input and output unchanged). Simulated k-bit variants
round the block weights in torch, save the result and export it the same way: the graph
is fp32, the values are k-bit, and ``export.graph.distinct_levels_per_group`` checks that.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import warnings
from pathlib import Path

TASK = "text-generation-with-past"
SIM_GROUP = 32  # input channels sharing one scale and zero point, as in MatMulNBits' block size


def export_onnx(checkpoint: Path, dest: Path, fuse: bool = True) -> None:
    """optimum's exporter on a local checkpoint folder, then the attention fusion (``fuse``; TensorRT
    builds from the graph as optimum writes it); fracture.json travels along."""
    from optimum.exporters.onnx import main_export
    from transformers.utils import logging as hf_logging

    dest.mkdir(parents=True, exist_ok=True)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # optimum passes transformers' deprecated `torch_dtype`: not the user's concern
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")  # tracer warnings about python control flow in the model
            # validation is ours (export.parity): stricter, and on real dev prompts
            main_export(str(checkpoint), output=str(dest), task=TASK, do_validation=False, device="cpu")
    finally:
        hf_logging.set_verbosity(verbosity)
    if fuse:
        from export.fusion import fuse_attention

        fuse_attention(dest / "model.onnx", dest / "config.json")
    for name in ("fracture.json",):
        if (checkpoint / name).is_file():
            shutil.copy2(checkpoint / name, dest / name)


def block_linears(model):
    """(name, nn.Linear) of the transformer blocks: not the embeddings, not the LM head."""
    import torch

    head = model.get_output_embeddings()
    return [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m is not head]


def fake_quantize_(weight, bits: int, group: int = SIM_GROUP) -> None:
    """Round ``weight`` [out, in] in place to 2**bits levels per group of ``group`` inputs.

    Asymmetric min-max round-to-nearest (all 2**bits levels used, as RTN baselines in
    GPTQ/AWQ papers do); groups run along the input dimension; a row whose width is not a
    multiple of ``group`` is one group.
    """
    import torch

    out_f, in_f = weight.shape
    g = group if in_f % group == 0 else in_f
    w = weight.data.view(out_f, in_f // g, g)
    lo, hi = w.amin(dim=-1, keepdim=True), w.amax(dim=-1, keepdim=True)
    levels = 2 ** bits - 1
    scale = torch.where(hi > lo, (hi - lo) / levels, torch.ones_like(hi))
    zero = torch.round(-lo / scale)
    q = torch.clamp(torch.round(w / scale) + zero, 0, levels)
    w.copy_((q - zero) * scale)


def round_block_weights_(model, bits: int):
    """Round every block Linear of ``model`` in place to ``bits`` (what sim-w{bits} applies)."""
    import torch

    with torch.no_grad():
        for _, linear in block_linears(model):
            fake_quantize_(linear.weight, bits)
    return model


def simulated_checkpoint(checkpoint: Path, dest: Path, bits: int):
    """Save a copy of ``checkpoint`` with block weights rounded to ``bits``; returns the model."""
    from transformers import AutoModelForCausalLM

    model = round_block_weights_(AutoModelForCausalLM.from_pretrained(checkpoint), bits)
    save_derived_checkpoint(model, checkpoint, dest)
    return model


def save_derived_checkpoint(model, checkpoint: Path, dest: Path) -> None:
    """Save ``model``, changed from ``checkpoint``, in the layout export_onnx reads, with its tokenizer
    and fracture.json."""
    from transformers import AutoTokenizer

    model.save_pretrained(dest, safe_serialization=True)
    AutoTokenizer.from_pretrained(checkpoint).save_pretrained(dest)
    if (checkpoint / "fracture.json").is_file():
        shutil.copy2(checkpoint / "fracture.json", dest / "fracture.json")
