"""bitsandbytes variants through transformers' BitsAndBytesConfig, evaluated in torch.

bitsandbytes quantizes every nn.Linear of the blocks (transformers keeps the LM head and
the embeddings in full precision). It has CPU kernels for int8 and NF4 in recent
releases and CUDA kernels everywhere; where neither works the variants are skipped.
The saved folder is ``save_pretrained`` of the quantized model, so the stored tensors
(int8 / packed 4-bit, plus their scales) are what the effective bits are computed from.
"""

from __future__ import annotations

import functools
from pathlib import Path


def _config(mode: str):
    import torch
    from transformers import BitsAndBytesConfig

    if mode == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    if mode == "nf4":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    raise ValueError(f"unknown bitsandbytes mode {mode!r}")


def bnb_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@functools.cache
def bnb_available() -> str | None:
    """``None`` when bitsandbytes can run a quantized Linear on this machine, else why not."""
    try:
        import bitsandbytes as bnb
        import torch
    except ImportError as exc:
        return f"bitsandbytes is not installed ({exc}); pip install '.[quant]'"
    device = bnb_device()
    try:
        layer = bnb.nn.Linear8bitLt(64, 64, has_fp16_weights=False).to(device)
        layer(torch.ones(2, 64, device=device))
    except Exception as exc:  # noqa: BLE001 - any failure means "no usable backend here"
        return f"bitsandbytes has no working {device} backend here ({type(exc).__name__}: {exc})"
    return None


def build_bnb(checkpoint: Path, dest: Path, mode: str, device: str | None = None):
    """Load ``checkpoint`` quantized, save it to ``dest``; returns the model for evaluation."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(checkpoint, quantization_config=_config(mode),
                                                 device_map=device or bnb_device())
    model.save_pretrained(dest, safe_serialization=True)
    AutoTokenizer.from_pretrained(checkpoint).save_pretrained(dest)
    return model


def load_bnb(folder: Path, device: str | None = None):
    """A published bnb variant: transformers reads the quantization config saved with it."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, device_map=device or bnb_device())


def safetensors_bits(folder: Path) -> tuple[int, dict[str, str]]:
    """(total stored bits, {tensor name: dtype}) of every .safetensors file in ``folder``."""
    from safetensors import safe_open

    sizes = {"F32": 32, "F16": 16, "BF16": 16, "I8": 8, "U8": 8, "I32": 32, "I64": 64, "F64": 64, "BOOL": 8}
    total, dtypes = 0, {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), framework="np") as fh:
            for key in fh.keys():  # noqa: SIM118 - safe_open is not a dict
                meta = fh.get_slice(key)
                numel = 1
                for d in meta.get_shape():
                    numel *= d
                dtype = meta.get_dtype()
                total += numel * sizes.get(dtype, 32)
                dtypes[key] = dtype
    return total, dtypes
