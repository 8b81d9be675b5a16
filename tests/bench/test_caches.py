"""bench/caches.py: which folders of the benchmark cache this fracture would never read again, and removing them.

The folders are laid out as the builders lay them out (a record in stamp.json, the folder named by its hash),
with small files in place of the models; bench.edge's and bench.serving's own record and key functions name
them, so a change to how either keys its cache is what these tests see. The builders themselves writing the
record is checked where they run (tests/bench/test_smoke.py)."""

from __future__ import annotations

import json
import os

from bench import caches
from bench.edge import QUICK_ARCH, STAMP, VARIANTS, cache_key, cache_record
from bench.serving import served_cache_key, served_cache_record
from common.files import folder_lock


def _model_cache(root, record, stamped=True, payload=1000):
    folder = root / f"gptneox-{cache_key(record)}"
    (folder / "onnx-fp32").mkdir(parents=True)
    (folder / "onnx-fp32" / "model.onnx").write_bytes(b"x" * payload)
    if stamped:
        (folder / STAMP).write_text(json.dumps(record))
    return folder


def _sweep_run(tmp_path, run="r00", manifest='{"step": 10}'):
    sweep = tmp_path / "sweep"
    fp32 = sweep / run / "variants" / "onnx-fp32"
    fp32.mkdir(parents=True, exist_ok=True)
    (fp32 / "manifest.json").write_text(manifest)
    return sweep, fp32


def _served_cache(root, sweep, run):
    record = served_cache_record(sweep, run)
    folder = root / f"served-{served_cache_key(record)}"
    folder.mkdir(parents=True)
    (folder / STAMP).write_text(json.dumps(record))
    return folder


def test_a_model_cache_of_other_tool_versions_is_stale_and_says_what_changed(tmp_path):
    current = _model_cache(tmp_path, cache_record(QUICK_ARCH, VARIANTS))
    old = _model_cache(tmp_path, cache_record(QUICK_ARCH, VARIANTS) | {"onnxruntime": "1.17.0"})
    (stale,) = caches.stale_caches(tmp_path)
    assert stale.path == old and current.is_dir()
    assert "onnxruntime '1.17.0' →" in stale.reason


def test_a_model_the_benchmark_no_longer_builds_is_stale_though_its_record_is_whole(tmp_path):
    """Its record hashes to its name, but neither of today's architectures (pythia-70m's, --quick's) is its."""
    old = _model_cache(tmp_path, cache_record(QUICK_ARCH | {"hidden_size": 32}, VARIANTS))
    (stale,) = caches.stale_caches(tmp_path)
    assert stale.path == old and "no longer builds" in stale.reason


def test_an_unstamped_model_cache_is_current_only_as_one_of_the_benchmarks_own_models(tmp_path):
    """Folders built before the record existed: today's key of the benchmark's own architectures is reused (so an
    upgrade of fracture does not throw away a current 1.2 GB model), any other key is stale."""
    own = _model_cache(tmp_path, cache_record(QUICK_ARCH, VARIANTS), stamped=False)
    other = _model_cache(tmp_path, cache_record(QUICK_ARCH | {"hidden_size": 32}, VARIANTS), stamped=False)
    assert [s.path for s in caches.stale_caches(tmp_path)] == [other]
    assert own.is_dir()


def test_a_record_that_cannot_be_read_is_stale_with_its_reason(tmp_path):
    folder = _model_cache(tmp_path, cache_record(QUICK_ARCH | {"hidden_size": 32}, VARIANTS))
    (folder / STAMP).write_text("{not json")
    (stale,) = caches.stale_caches(tmp_path)
    assert stale.path == folder and STAMP in stale.reason
    (folder / STAMP).write_text("[1, 2]")
    assert "not a record" in caches.stale_caches(tmp_path)[0].reason


def test_a_served_cache_follows_its_sweeps_onnx_fp32_and_the_run_the_benchmark_picks(tmp_path):
    sweep, fp32 = _sweep_run(tmp_path)
    folder = _served_cache(tmp_path / "cache", sweep, "r00")
    assert caches.stale_caches(tmp_path / "cache") == []
    (fp32 / "manifest.json").write_text('{"step": 20}')  # the run exported again
    (stale,) = caches.stale_caches(tmp_path / "cache")
    assert stale.path == folder and "exported again" in stale.reason
    later = _served_cache(tmp_path / "cache", *_sweep_run(tmp_path, "r01")[:1], "r01")  # r00 comes first: picked
    assert "another run" in next(s.reason for s in caches.stale_caches(tmp_path / "cache") if s.path == later)
    (fp32 / "manifest.json").unlink()  # the run gone
    assert "no published onnx-fp32" in next(s.reason for s in caches.stale_caches(tmp_path / "cache")
                                             if s.path == folder)


def test_a_served_cache_without_a_record_is_kept(tmp_path):
    """Its name is still the key the benchmark reads, but nothing says which sweep it serves: a few MB, kept until
    a benchmark that reads it records one."""
    (tmp_path / "served-0123456789ab").mkdir()
    assert caches.stale_caches(tmp_path) == []


def test_only_what_leaves_with_the_folder_counts_as_freed(tmp_path):
    """A file hard-linked from a sweep stays there; two links inside the folder are one file."""
    outside = tmp_path / "sweep-file"
    outside.write_bytes(b"y" * 5000)
    folder = _model_cache(tmp_path / "cache", cache_record(QUICK_ARCH, VARIANTS) | {"optimum": "0.0"}, payload=1000)
    os.link(outside, folder / "linked-from-a-sweep")
    os.link(folder / "onnx-fp32" / "model.onnx", folder / "second-link")
    (stale,) = caches.stale_caches(tmp_path / "cache")
    assert stale.freed == 1000 + (folder / STAMP).stat().st_size


def test_prune_removes_the_stale_and_nothing_else(tmp_path):
    said = []
    current = _model_cache(tmp_path, cache_record(QUICK_ARCH, VARIANTS))
    old = _model_cache(tmp_path, cache_record(QUICK_ARCH, VARIANTS) | {"transformers": "4.0.0"})
    unknown = tmp_path / "gptneox-notes.txt"  # not a folder of the two kinds, or not a folder: never touched
    unknown.write_text("mine")
    (tmp_path / "scratch").mkdir()

    assert [s.path for s in caches.prune(tmp_path, dry_run=True, say=said.append)] == [old]
    assert old.is_dir() and said[0].startswith(f"would remove {old}")
    said.clear()
    assert [s.path for s in caches.prune(tmp_path, say=said.append)] == [old]
    assert not old.exists() and current.is_dir() and unknown.read_text() == "mine" and (tmp_path / "scratch").is_dir()
    assert said[0].startswith(f"removed {old}") and "transformers" in said[0]
    assert caches.prune(tmp_path, say=said.append) == [] and said[-1].startswith("nothing stale")


def test_a_folder_whose_lock_is_held_is_kept(tmp_path):
    """A build holds its folder's lock: pruning at the same time skips that folder and says who holds it."""
    said = []
    old = _model_cache(tmp_path, cache_record(QUICK_ARCH, VARIANTS) | {"base": -1})
    with folder_lock(old, "a test's build"):
        assert caches.prune(tmp_path, say=said.append) == []
    assert old.is_dir() and "a test's build" in said[0] and not any("nothing stale" in x for x in said)


def test_a_folder_is_judged_again_under_its_lock(tmp_path, monkeypatch):
    """Made current between the listing and the lock (a build finished meanwhile): kept."""
    said = []
    old = _model_cache(tmp_path, cache_record(QUICK_ARCH, VARIANTS) | {"base": -1})
    listed = caches.stale_caches(tmp_path)
    monkeypatch.setattr(caches, "stale_caches", lambda root: listed)
    monkeypatch.setattr(caches, "_why_stale", lambda folder: None)
    assert caches.prune(tmp_path, say=said.append) == []
    assert old.is_dir() and said == [f"kept {old}: in use again"]


def test_a_prune_killed_while_deleting_leaves_nothing_behind_the_next(tmp_path):
    (tmp_path / ".pruning-gptneox-0123456789ab" / "onnx-fp32").mkdir(parents=True)
    caches.prune(tmp_path, say=lambda line: None)
    assert list(tmp_path.iterdir()) == []


def test_the_hint_names_the_space_and_the_command(tmp_path):
    assert caches.hint(tmp_path) is None
    _model_cache(tmp_path, cache_record(QUICK_ARCH, VARIANTS) | {"fusion": 0}, payload=2_000_000)
    line = caches.hint(tmp_path)
    assert "1 folder(s)" in line and "2.0 MB" in line and "make bench-prune" in line


def test_python_m_bench_prune_acts_on_the_benchmark_cache(tmp_path, monkeypatch, capsys):
    from bench.__main__ import main

    old = _model_cache(tmp_path, cache_record(QUICK_ARCH, VARIANTS) | {"per_token": 0})
    monkeypatch.setattr(caches, "CACHE", tmp_path)
    assert main(["prune", "--dry-run"]) == 0 and old.is_dir()
    assert main(["prune"]) == 0 and not old.exists()
    out = capsys.readouterr().out
    assert f"would remove {old}" in out and f"removed {old}" in out
