"""One manifest for every folder fracture publishes whole: a checkpoint, a variant, a Trainer's resume state.

``{"kind": ..., "schema": 1, <the kind's own fields>, "files": {path: {"bytes", "sha256"}}, "total_bytes"}``,
written last (after every file it lists) and, for a published folder, moved into place with it in one
rename: a folder whose manifest is missing or does not verify is a partial or corrupt write, redone or
refused, never used. ``verify`` re-hashes the files and checks the manifest is of the kind asked for.

Manifests written before this schema are still read: a checkpoint's or a resume state's
``{"files": {name: sha256}}`` and a variant's manifest without ``kind`` (sweeps on disk resume as they are).
Standard library only.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from common.files import atomic_write_json, publish_folder, sha256_file

MANIFEST = "manifest.json"
SCHEMA = 1
KINDS = ("checkpoint", "variant", "trainer-state")


def file_table(folder: Path, manifest: str = MANIFEST) -> dict[str, dict]:
    """``{relative path: {bytes, sha256}}`` of every file under ``folder`` but the manifest itself."""
    out = {}
    for p in sorted(Path(folder).rglob("*")):
        if p.is_file() and p.relative_to(folder).as_posix() != manifest:
            out[p.relative_to(folder).as_posix()] = {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
    return out


def write_manifest(folder: Path, kind: str, fields: dict | None = None, name: str = MANIFEST) -> dict:
    """Hash every file in ``folder`` and write its manifest (atomically); returns the manifest."""
    if kind not in KINDS:
        raise ValueError(f"manifest kind must be one of {', '.join(KINDS)}, got {kind!r}")
    files = file_table(folder, name)
    manifest = {"kind": kind, "schema": SCHEMA, **(fields or {}), "files": files,
                "total_bytes": sum(f["bytes"] for f in files.values())}
    atomic_write_json(Path(folder) / name, manifest)
    return manifest


def publish(tmp: Path, dest: Path, kind: str, fields: dict | None = None) -> dict:
    """Write ``tmp``'s manifest, then move ``tmp`` to ``dest`` in one rename; returns the manifest."""
    manifest = write_manifest(tmp, kind, fields)
    publish_folder(tmp, dest)
    return manifest


def read_manifest(folder: str | Path, name: str = MANIFEST) -> dict:
    return json.loads((Path(folder) / name).read_text())


def _digest(entry) -> tuple[int | None, str | None]:
    """(bytes, sha256) of a manifest entry: ``{bytes, sha256}``, or a bare sha256 (before schema 1)."""
    if isinstance(entry, str):
        return None, entry
    if isinstance(entry, dict):
        return entry.get("bytes"), entry.get("sha256")
    return None, None


def verify(folder: str | Path, kind: str, skip: frozenset[str] = frozenset(), name: str = MANIFEST) -> str | None:
    """``None`` when ``folder`` is whole and untouched and its manifest is a ``kind``'s, else the reason it is
    not. Files in ``skip`` are left to the caller (which reads and checks them itself: ``read_verified``)."""
    folder = Path(folder)
    if not (folder / name).is_file():
        return f"{folder}: no {name} (partial or failed write)"
    try:
        manifest = read_manifest(folder, name)
        files = manifest["files"]
        found = manifest.get("kind", kind)  # no kind: written before schema 1, where each name had one kind
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return f"{folder}: unreadable {name} ({exc})"
    if found != kind:
        return f"{folder}: {name} is a {found}'s, not a {kind}'s"
    if not files or not isinstance(files, dict):
        return f"{folder}: {name} lists no files"
    for rel, entry in files.items():
        if rel in skip:
            continue
        size, digest = _digest(entry)
        path = folder / rel
        if not path.is_file():
            return f"{folder}: {rel} is missing"
        if digest is None or (size is not None and path.stat().st_size != size) or sha256_file(path) != digest:
            return f"{folder}: {rel} does not match its sha256 (modified or corrupt)"
    return None


def read_verified(folder: str | Path, name: str) -> bytes:
    """The bytes of one listed file, read once and checked against the manifest: what the caller uses is what
    was verified (no window for the file to change in between)."""
    folder = Path(folder)
    size, digest = _digest(read_manifest(folder).get("files", {}).get(name))
    if digest is None:
        raise ValueError(f"{folder}: {MANIFEST} does not list {name}")
    data = (folder / name).read_bytes()
    if (size is not None and len(data) != size) or hashlib.sha256(data).hexdigest() != digest:
        raise ValueError(f"{folder}: {name} does not match its sha256 (modified or corrupt)")
    return data
