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
    export before they were recorded) is rebuilt by the next export, which says why, and graded again; the
    rewrites change no answer, so the accuracy rows stay as they were."""
    from export.pipeline import graph_versions, stale_graph
    from export.registry import get_variant

    sweep = exported["sweep"]
    table = (sweep / "accuracy.csv").read_text()
    folder = run_dirs(sweep)[0] / "variants" / "ort-int8"
    variant = get_variant("ort-int8")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert stale_graph(manifest, variant) is None and set(manifest["graph_versions"]) == {"fusion", "per_token"}
    del manifest["graph_versions"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert verify(folder, "variant") is None  # a valid export: only its graph is old
    assert "none recorded" in stale_graph(manifest, variant)

    res = export_cli(sweep, "--variants=ort-int8")
    assert res.returncode == 0, res.stderr
    assert "built 1 (1 made by older graph rewrites)," in res.stdout and "evaluated 1," in res.stdout
    assert "ort-int8: rebuilt: its graph was made by other versions of fracture's rewrites" in res.stderr
    assert json.loads((folder / "manifest.json").read_text())["graph_versions"] == graph_versions(variant)
    assert (sweep / "accuracy.csv").read_text() == table


def test_a_stale_variant_whose_rebuild_fails_is_kept_for_its_dependents(exported, monkeypatch):
    """A published onnx-fp32 made by older rewrites whose rebuild fails (here: a builder that raises, the
    export's worker run in this process) is kept as it was, with a warning, and ort-int8, which needs it,
    is reused rather than failed."""
    from export import pipeline
    from export.config import ExportConfig
    from export.registry import resolve

    sweep = exported["sweep"]
    folder = run_dirs(sweep)[0] / "variants" / "onnx-fp32"
    original = (folder / "manifest.json").read_text()
    manifest = json.loads(original)
    manifest["graph_versions"] = {"fusion": 1}
    (folder / "manifest.json").write_text(json.dumps(manifest))

    def fails(*args, **kwargs):
        raise pipeline.ExportCheckFailed("parity failed")

    monkeypatch.setattr(pipeline, "_build", fails)
    try:
        cfg = ExportConfig(sweep=str(sweep), variants=("ort-int8",))
        spec = pipeline.load_sweep(sweep)
        job = next(j for j in pipeline.plan_jobs(cfg, sweep, spec) if j.run_dir.name == run_dirs(sweep)[0].name)
        result = pipeline.export_checkpoint(pipeline.ExportJob(
            job, tuple(resolve(["ort-int8"])), pipeline.EvalData.of_sweep(spec), frozenset({"onnx-fp32", "ort-int8"}),
            1, 8, False))
    finally:
        (folder / "manifest.json").write_text(original)
    assert result["failed"] == [] and result["rebuilt"] == [] and result["rows"] == []
    (warning,) = result["warnings"]
    assert "onnx-fp32: kept as it was" in warning and "{'fusion': 1}" in warning and "parity failed" in warning
    assert [(name, what) for name, what, _ in result["log"]] == [("onnx-fp32", "reused"), ("ort-int8", "reused")]


def test_graph_versions_follow_the_registry():
    """The fusion's version for every ONNX Runtime graph, the per-token rewrite's where MatMulInteger runs;
    none for TensorRT's unfused graph or a torch variant, whose manifests need none to be reused."""
    from export.fusion import FUSION_VERSION
    from export.pipeline import graph_versions, stale_graph
    from export.quantize import PER_TOKEN_VERSION
    from export.registry import get_variant

    fused = {"fusion": FUSION_VERSION}
    for name in ("onnx-fp32", "ort-int4", "ort-int4-all", "sim-w4", "noise@ort-int4"):
        assert graph_versions(get_variant(name)) == fused, name
    for name in ("ort-int8", "ort-int8-all"):
        assert graph_versions(get_variant(name)) == fused | {"per_token": PER_TOKEN_VERSION}, name
    for name in ("trt-fp16", "bnb-int8"):
        assert graph_versions(get_variant(name)) == {}, name
        assert stale_graph({"parity": {"passed": True}}, get_variant(name)) is None, name
    assert "{'fusion': 1}" in stale_graph({"graph_versions": {"fusion": 1}}, get_variant("onnx-fp32"))


def test_a_variants_footprint_leaves_out_its_batch_one_graph(exported):
    """The size the reports show is the model's: ort-int8's row graph (the same weights again, a speed-up) is
    not counted, every other file is."""
    from common.manifest import read_manifest
    from export.manifest import ROW_MODEL_FILE, footprint_bytes

    variants = run_dirs(exported["sweep"])[0] / "variants"
    int8, fp32 = read_manifest(variants / "ort-int8"), read_manifest(variants / "onnx-fp32")
    assert footprint_bytes(int8) == int8["total_bytes"] - (variants / "ort-int8" / ROW_MODEL_FILE).stat().st_size
    assert footprint_bytes(fp32) == fp32["total_bytes"] and footprint_bytes(int8) < footprint_bytes(fp32)
