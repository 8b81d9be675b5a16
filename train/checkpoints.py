"""Checkpoints that are either whole or absent.

A checkpoint is written to a hidden temporary folder, given a manifest with the sha256
of every file, and renamed into place in one step. ``verify_checkpoint`` re-hashes the
files, so a partial or corrupted checkpoint is detected and redone, never evaluated.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from common.files import atomic_write_json, publish_folder, sha256_file

MANIFEST = "manifest.json"


def save_checkpoint(model, tokenizer, dest: Path, meta: dict) -> Path:
    """``save_pretrained`` layout + tokenizer + fracture.json, published atomically."""
    dest = Path(dest)
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    atomic_write_json(tmp / "fracture.json", meta)
    files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
    atomic_write_json(tmp / MANIFEST, {"files": files})
    publish_folder(tmp, dest)
    return dest


def verify_checkpoint(path: Path) -> str | None:
    """``None`` when the checkpoint is whole, else the reason it is not."""
    path = Path(path)
    manifest = path / MANIFEST
    if not manifest.is_file():
        return f"{path}: no {MANIFEST} (partial write)"
    try:
        files = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError) as exc:
        return f"{path}: unreadable {MANIFEST} ({exc})"
    if "model.safetensors" not in files and not any(f.endswith(".safetensors") for f in files):
        return f"{path}: manifest lists no weights"
    for name, digest in files.items():
        f = path / name
        if not f.is_file():
            return f"{path}: {name} is missing"
        if sha256_file(f) != digest:
            return f"{path}: {name} does not match its sha256 (corrupt)"
    return None
