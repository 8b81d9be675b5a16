"""Manifests catch tampering; a re-run reuses verified variants and rebuilds only what changed."""

import json
import shutil

from common.manifest import verify
from tests.conftest import ALL_BUT_GPU, export_cli, run_dirs


def test_manifest_sha256_detects_a_modified_or_missing_file(exported, tmp_path):
    src = run_dirs(exported["sweep"])[0] / "variants" / "ort-int8"
    assert verify(src, "variant") is None
    copy = tmp_path / "ort-int8"
    shutil.copytree(src, copy)
    data = bytearray((copy / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "model.onnx").write_bytes(bytes(data))
    assert "does not match its sha256" in verify(copy, "variant")
    shutil.copytree(src, tmp_path / "b")
    (tmp_path / "b" / "tokenizer.json").unlink()
    assert "tokenizer.json is missing" in verify(tmp_path / "b", "variant")
    (tmp_path / "b" / "manifest.json").write_text("{not json")
    assert "unreadable" in verify(tmp_path / "b", "variant")


def test_rerun_is_idempotent_and_rebuilds_only_a_tampered_variant(exported):
    sweep = exported["sweep"]
    table = (sweep / "accuracy.csv").read_text()
    res = export_cli(sweep, f"--variants={ALL_BUT_GPU}")
    assert res.returncode == 0, res.stderr
    assert "built 0," in res.stdout and "evaluated 0," in res.stdout
    assert (sweep / "accuracy.csv").read_text() == table

    victim = run_dirs(sweep)[1] / "variants" / "ort-int4" / "model.onnx"
    victim.write_bytes(victim.read_bytes()[:-100])  # truncated: a crash mid-copy
    res = export_cli(sweep, "--variants=ort-int4")
    assert res.returncode == 0, res.stderr
    assert "built 1," in res.stdout and "reused 3," in res.stdout  # 2 onnx-fp32 + the intact ort-int4
    assert verify(victim.parent, "variant") is None
    assert (sweep / "accuracy.csv").read_text() == table  # same checkpoint, same rows


def test_bad_arguments_get_clear_errors(exported):
    res = export_cli(exported["sweep"], "--variants=ort-itn8")
    assert res.returncode == 2 and "did you mean 'ort-int8'" in res.stderr
    res = export_cli(exported["sweep"], "--checkpoints=some")
    assert res.returncode == 2 and "checkpoints='some'" in res.stderr
    res = export_cli(exported["sweep"].parent / "nope")
    assert res.returncode == 2 and "python -m train sweep" in res.stderr


def test_a_variant_made_by_older_graph_rewrites_is_rebuilt_and_said_so(exported):
    """An export from before a rewrite of the graph changed (here: a manifest without the versions, as every
    export before they were recorded) is rebuilt by the next export, which says why; the rewrites change no
    answer, so the accuracy rows stay as they were."""
    from export.pipeline import graph_versions, stale_graph

    sweep = exported["sweep"]
    table = (sweep / "accuracy.csv").read_text()
    folder = run_dirs(sweep)[0] / "variants" / "ort-int8"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert stale_graph(manifest) is None and set(manifest["graph_versions"]) == {"fusion", "per_token"}
    del manifest["graph_versions"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert verify(folder, "variant") is None  # a valid export: only its graph is old
    assert "older rewrites" in stale_graph(manifest)

    res = export_cli(sweep, "--variants=ort-int8")
    assert res.returncode == 0, res.stderr
    assert "built 1 (1 made by older graph rewrites)," in res.stdout
    assert "ort-int8: rebuilt: its graph was made by older rewrites" in res.stderr
    assert json.loads((folder / "manifest.json").read_text())["graph_versions"] == graph_versions(manifest)
    assert (sweep / "accuracy.csv").read_text() == table


def test_graph_versions_follow_what_the_graph_holds():
    """The fusion's version where attention was fused, the per-token rewrite's where MatMulInteger runs, none
    for a torch variant (TensorRT's graph is not fused either)."""
    from export.fusion import FUSION_VERSION
    from export.pipeline import graph_versions
    from export.quantize import PER_TOKEN_VERSION

    assert graph_versions({"fused_attention_layers": 2, "quantized_ops": {}}) == {"fusion": FUSION_VERSION}
    assert graph_versions({"fused_attention_layers": 2, "quantized_ops": {"MatMulInteger": 8}}) == {
        "fusion": FUSION_VERSION, "per_token": PER_TOKEN_VERSION}
    assert graph_versions({"fused_attention_layers": 0, "quantized_ops": {"MatMulNBits": 8}}) == {}
    assert graph_versions({"quantized_tensors": {}}) == {}
