"""manifest.json of a variant: what it is, where it came from, and the sha256 of every file.

Written last, when every check has passed, and published with the variant in one
rename, so a variant folder without a valid manifest is a partial or failed build.
``verify_variant`` re-hashes the files: the export skips a variant only when it
verifies, and the server refuses one that does not. Standard library only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from importlib import metadata
from pathlib import Path

from common.files import atomic_write_json, publish_folder, sha256_file

MANIFEST = "manifest.json"
TOOLS = ("onnx", "onnxruntime", "optimum", "optimum-onnx", "torch", "transformers", "tokenizers", "bitsandbytes",
         "tensorrt")


def tool_versions() -> dict[str, str]:
    versions = {}
    for name in TOOLS:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


def file_table(folder: Path) -> dict[str, dict]:
    """``{relative path: {bytes, sha256}}`` of every file under ``folder`` but the manifest."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            out[p.relative_to(folder).as_posix()] = {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
    return out


def publish(tmp: Path, dest: Path, manifest: dict) -> dict:
    """Hash the files in ``tmp``, write the manifest, and move ``tmp`` to ``dest`` atomically."""
    files = file_table(tmp)
    manifest = {**manifest, "files": files, "total_bytes": sum(f["bytes"] for f in files.values())}
    atomic_write_json(tmp / MANIFEST, manifest)
    publish_folder(tmp, dest)
    return manifest


def read_manifest(folder: str | Path) -> dict:
    return json.loads((Path(folder) / MANIFEST).read_text())


def verify_variant(folder: str | Path, skip: frozenset[str] = frozenset()) -> str | None:
    """``None`` when the variant is whole and untouched, else the reason it is not. Files in ``skip`` are
    left to the caller (which reads and checks them itself, see ``read_verified``)."""
    folder = Path(folder)
    if not (folder / MANIFEST).is_file():
        return f"{folder}: no {MANIFEST} (partial or failed build)"
    try:
        manifest = read_manifest(folder)
        files = manifest["files"]
    except (ValueError, KeyError, TypeError) as exc:
        return f"{folder}: unreadable {MANIFEST} ({exc})"
    if not files:
        return f"{folder}: {MANIFEST} lists no files"
    for name, entry in files.items():
        if name in skip:
            continue
        path = folder / name
        if not path.is_file():
            return f"{folder}: {name} is missing"
        if path.stat().st_size != entry.get("bytes") or sha256_file(path) != entry.get("sha256"):
            return f"{folder}: {name} does not match its sha256 (modified or corrupt)"
    return None


def read_verified(folder: str | Path, name: str) -> bytes:
    """The bytes of one listed file of a published variant, read once and checked against the manifest:
    what the caller uses is what was verified (no window for the file to change in between)."""
    folder = Path(folder)
    entry = read_manifest(folder).get("files", {}).get(name)
    if not entry:
        raise ValueError(f"{folder}: {MANIFEST} does not list {name}")
    data = (folder / name).read_bytes()
    if len(data) != entry.get("bytes") or hashlib.sha256(data).hexdigest() != entry.get("sha256"):
        raise ValueError(f"{folder}: {name} does not match its sha256 (modified or corrupt)")
    return data
