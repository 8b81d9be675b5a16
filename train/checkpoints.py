"""Checkpoints that are either whole or absent.

A checkpoint is written to a hidden temporary folder, given a manifest (``common.manifest``,
kind "checkpoint") with the sha256 of every file, and renamed into place in one step.
``verify_checkpoint`` re-hashes the files, so a partial or corrupted checkpoint is detected and
redone, never evaluated.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from common.files import atomic_write_json
from common.manifest import publish, read_manifest, verify


def save_checkpoint(model, tokenizer, dest: Path, meta: dict) -> Path:
    """``save_pretrained`` layout + tokenizer + fracture.json, published atomically."""
    dest = Path(dest)
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    atomic_write_json(tmp / "fracture.json", meta)
    publish(tmp, dest, "checkpoint")
    return dest


def verify_checkpoint(path: Path) -> str | None:
    """``None`` when the checkpoint is whole, else the reason it is not."""
    problem = verify(path, "checkpoint")
    if problem is None and not any(f.endswith(".safetensors") for f in read_manifest(path)["files"]):
        return f"{path}: manifest lists no weights"
    return problem
