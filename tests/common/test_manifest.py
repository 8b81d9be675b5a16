"""common/manifest.py: one manifest schema for checkpoints, variants and resume states."""

import json

import pytest

from common.files import sha256_file
from common.manifest import KINDS, MANIFEST, SCHEMA, publish, read_manifest, read_verified, verify, write_manifest


def _folder(tmp_path, name="tmp"):
    folder = tmp_path / name
    (folder / "sub").mkdir(parents=True)
    (folder / "weights.bin").write_bytes(b"\x00\x01" * 100)
    (folder / "sub" / "config.json").write_text('{"a": 1}')
    return folder


def test_publish_writes_kind_schema_and_every_file(tmp_path):
    m = publish(_folder(tmp_path), tmp_path / "dest", "variant", {"variant": "ort-int4", "step": 6})
    dest = tmp_path / "dest"
    assert not (tmp_path / "tmp").exists() and read_manifest(dest) == m
    assert m["kind"] == "variant" and m["schema"] == SCHEMA and m["variant"] == "ort-int4"
    assert m["files"] == {"sub/config.json": {"bytes": 8, "sha256": sha256_file(dest / "sub" / "config.json")},
                          "weights.bin": {"bytes": 200, "sha256": sha256_file(dest / "weights.bin")}}
    assert m["total_bytes"] == 208 and verify(dest, "variant") is None
    assert read_verified(dest, "weights.bin") == b"\x00\x01" * 100


def test_a_changed_missing_or_foreign_file_set_is_named(tmp_path):
    folder = _folder(tmp_path)
    write_manifest(folder, "checkpoint")
    assert "is a checkpoint's, not a variant's" in verify(folder, "variant")
    (folder / "weights.bin").write_bytes(b"\x00\x02" * 100)  # same size, other bytes
    assert "weights.bin does not match its sha256" in verify(folder, "checkpoint")
    with pytest.raises(ValueError, match="does not match"):
        read_verified(folder, "weights.bin")
    (folder / "weights.bin").unlink()
    assert "weights.bin is missing" in verify(folder, "checkpoint")
    (folder / MANIFEST).write_text("{not json")
    assert "unreadable" in verify(folder, "checkpoint")
    (folder / MANIFEST).unlink()
    assert "partial" in verify(folder, "checkpoint")
    with pytest.raises(ValueError, match="kind"):
        write_manifest(folder, "model")
    assert set(KINDS) == {"checkpoint", "variant", "trainer-state"}


def test_manifests_written_before_the_schema_still_verify(tmp_path):
    """A checkpoint's or resume state's {"files": {name: sha256}} and a variant's manifest without kind:
    the sweeps and exports on disk resume as they are."""
    folder = _folder(tmp_path)
    legacy = {"files": {"weights.bin": sha256_file(folder / "weights.bin")}}
    (folder / "fracture-resume.json").write_text(json.dumps(legacy))
    assert verify(folder, "trainer-state", name="fracture-resume.json") is None
    (folder / MANIFEST).write_text(json.dumps(legacy))
    assert verify(folder, "checkpoint") is None
    (folder / "weights.bin").write_bytes(b"changed")
    assert "does not match" in verify(folder, "checkpoint")
