"""The fleet: tampered or incomplete variants are refused (the rest served); LRU under a budget."""

import shutil

import httpx
import pytest

from serve.config import ServeConfig
from serve.fleet import Fleet, ModelUnavailable
from tests.conftest import run_dirs
from tests.serve.conftest import running, serve_config


@pytest.fixture()
def sweep_copy(exported, tmp_path):
    dest = tmp_path / "sweep"
    shutil.copytree(exported["sweep"], dest, ignore=shutil.ignore_patterns("checkpoints"))
    return dest


def test_tampered_and_incomplete_variants_are_refused_and_the_rest_served(sweep_copy, caplog):
    first, second = run_dirs(sweep_copy)
    onnx = first / "variants" / "ort-int8" / "model.onnx"
    onnx.write_bytes(onnx.read_bytes()[:-64])
    (second / "variants" / "ort-int4" / "manifest.json").unlink()
    with running(serve_config(sweep_copy)) as (url, app, _), httpx.Client(base_url=url) as c:
        body = c.get("/v1/models").json()
        served = {m["id"] for m in body["data"]}
        assert f"{first.name}/ort-int8" not in served and len(served) == 4
        assert "does not match its sha256" in body["refused"][f"{first.name}/ort-int8"]
        assert str(sweep_copy) not in str(body["refused"])  # clients never see the server's file paths
        assert f"{second.name}/ort-int4" not in served  # no manifest: not a published variant
        resp = c.post("/v1/completions", json={"model": f"{first.name}/ort-int8", "prompt": "1+1="})
        assert resp.status_code == 404 and "refused" in resp.json()["error"]["message"]
        assert c.post("/v1/completions", json={"model": f"{first.name}/onnx-fp32", "prompt": "1+1="}).status_code == 200
    assert any("refusing" in r.message for r in caplog.records)


def test_a_variant_in_a_folder_its_manifest_does_not_name_is_refused(sweep_copy):
    """The fleet takes a variant's identity from its manifest: a folder copied under another variant's or run's
    name (hashes intact) is refused rather than served and counted under the wrong label."""
    first, second = run_dirs(sweep_copy)
    shutil.copytree(first / "variants" / "ort-int8", first / "variants" / "renamed")
    shutil.rmtree(second / "variants" / "ort-int4")
    shutil.copytree(first / "variants" / "ort-int4", second / "variants" / "ort-int4")
    fleet = Fleet.from_config(ServeConfig(sweep=str(sweep_copy)))
    assert "manifest describes" in fleet.refused[f"{first.name}/renamed"]
    assert f"{first.name}/ort-int4" in fleet.refused[f"{second.name}/ort-int4"]
    assert f"{first.name}/ort-int8" in fleet.entries and f"{second.name}/ort-int4" not in fleet.entries


def test_variant_tampered_after_start_is_refused_at_reload(sweep_copy):
    cfg = ServeConfig(sweep=str(sweep_copy), variants=("onnx-fp32",), memory_budget_mb=0.001)
    fleet = Fleet.from_config(cfg)
    a, b = sorted(fleet.entries)
    fleet.runner(a)
    fleet.runner(b)  # the budget holds one model: a is released
    assert fleet.loaded_ids() == [b]
    onnx = fleet.entries[a].folder / "model.onnx"
    onnx.write_bytes(b"garbage")
    with pytest.raises(ModelUnavailable, match="sha256"):
        fleet.runner(a)
    assert a in fleet.refused and a not in fleet.entries


def test_variant_changed_after_discovery_is_refused_at_its_first_load(sweep_copy):
    """Lazy loading: discovery hashes at start-up; a model.onnx swapped before the first request used to be
    loaded unchecked and its wrong answers graded into the metrics."""
    cfg = ServeConfig(sweep=str(sweep_copy), variants=("onnx-fp32", "ort-int4"), memory_budget_mb=100)
    fleet = Fleet.from_config(cfg)
    victim = sorted(i for i in fleet.entries if i.endswith("onnx-fp32"))[0]
    other = victim.replace("onnx-fp32", "ort-int4")
    shutil.copy(fleet.entries[other].folder / "model.onnx", fleet.entries[victim].folder / "model.onnx")
    with pytest.raises(ModelUnavailable, match="sha256"):
        fleet.runner(victim)
    assert victim in fleet.refused and fleet.runner(other) is not None


def test_the_session_runs_the_bytes_that_were_verified(sweep_copy, monkeypatch):
    """The graph is read once, hashed, and the session is built from those bytes: a swap of the file after
    the check cannot reach the session."""
    import serve.fleet as fleet_module

    cfg = ServeConfig(sweep=str(sweep_copy), variants=("onnx-fp32",), memory_budget_mb=100)
    fleet = Fleet.from_config(cfg)
    model_id = sorted(fleet.entries)[0]
    opened = []
    real = fleet_module.OnnxCausalLM

    def spy(folder, **kw):
        (folder / "model.onnx").write_bytes(b"swapped after the check")  # the file changes after verification
        opened.append(kw["model_bytes"])
        return real(folder, **kw)

    monkeypatch.setattr(fleet_module, "OnnxCausalLM", spy)
    runner = fleet.runner(model_id)
    assert opened[0][:4] != b"swap" and runner.session.get_inputs()


def test_a_missing_tokenizer_is_named(sweep_copy):
    cfg = ServeConfig(sweep=str(sweep_copy), variants=("onnx-fp32",), memory_budget_mb=100)
    fleet = Fleet.from_config(cfg)
    model_id = sorted(fleet.entries)[0]
    (fleet.entries[model_id].folder / "tokenizer.json").unlink()
    with pytest.raises(ModelUnavailable, match="tokenizer.json is missing"):
        fleet.runner(model_id)
    assert str(sweep_copy) not in fleet.refused[model_id]


def test_lazy_loading_releases_the_least_recently_used(exported):
    """Three models and a budget that holds the two largest and never all three: each load beyond it
    releases the least recently used one, and using a model makes it the most recent."""
    served = ("onnx-fp32", "ort-int8", "ort-int4")
    probe = Fleet.from_config(ServeConfig(sweep=str(exported["sweep"]), variants=served, memory_budget_mb=1e6))
    a, b, c = sorted(probe.entries, key=lambda i: -probe.entries[i].bytes)[:3]  # a >= b >= c in bytes
    size = {i: probe.entries[i].bytes for i in (a, b, c)}
    fleet = Fleet.from_config(ServeConfig(sweep=str(exported["sweep"]), variants=served,
                                          memory_budget_mb=(size[a] + size[b] + 1) / 1e6))
    assert fleet.loaded_ids() == []
    for model in (a, b):
        fleet.runner(model)
    assert fleet.loaded_ids() == [a, b]
    fleet.runner(c)  # a + b + c is over the budget, b + c is not (c <= a)
    assert fleet.loaded_ids() == [b, c]
    fleet.runner(b)
    assert fleet.loaded_ids() == [c, b]  # touching b makes it the most recent
    fleet.runner(a)
    assert fleet.loaded_ids() == [b, a]


def test_missing_sweep_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m export"):
        Fleet.from_config(ServeConfig(sweep=str(tmp_path / "nope")))


def test_runs_and_variants_select_what_is_served(exported):
    """`--runs` and `--variants` narrow the fleet (the serving benchmark serves the one run it measures)."""
    everything = Fleet.from_config(ServeConfig(sweep=str(exported["sweep"]), variants=("onnx-fp32",)))
    first = sorted({e.run for e in everything.entries.values()})[0]
    fleet = Fleet.from_config(ServeConfig(sweep=str(exported["sweep"]), variants=("onnx-fp32", "ort-int4"),
                                          runs=(first,)))
    assert sorted(fleet.entries) == [f"{first}/onnx-fp32", f"{first}/ort-int4"]
    assert len(everything.entries) == len(run_dirs(exported["sweep"])) > 1


def test_per_token_int8_graphs_stay_on_the_cpu_when_the_server_picks_a_faked_cuda(exported, monkeypatch):
    """A variant's own providers (the registry's ``Variant.providers``) win over the server's choice: the
    per-token int8 graphs stay on ONNX Runtime's CPU provider even where the server would pick CUDA (faked
    here: this machine has no GPU), and the other variants take the server's choice."""
    import serve.fleet as fleet_module

    monkeypatch.setattr(fleet_module, "_providers", lambda cfg: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    entries, refused = fleet_module.discover(ServeConfig(sweep=str(exported["sweep"]),
                                                         variants=("onnx-fp32", "ort-int8")))
    assert entries and not refused
    by_variant = {e.variant: e.providers for e in entries}
    assert by_variant["ort-int8"] == ["CPUExecutionProvider"]
    assert by_variant["onnx-fp32"] == ["CUDAExecutionProvider", "CPUExecutionProvider"]


def test_a_tampered_single_row_graph_refuses_its_variant(sweep_copy):
    """The per-token int8 variants' second graph (batch-1 steps) is verified like the main one: a session is never
    built on a row graph that does not match its manifest."""
    from export.runtime import ROW_MODEL_FILE

    first, _ = run_dirs(sweep_copy)
    row = first / "variants" / "ort-int8" / ROW_MODEL_FILE
    row.write_bytes(row.read_bytes()[:-64])
    with running(serve_config(sweep_copy)) as (url, app, _), httpx.Client(base_url=url) as c:
        body = c.get("/v1/models").json()
        assert f"{first.name}/ort-int8" not in {m["id"] for m in body["data"]}
        assert "does not match its sha256" in body["refused"][f"{first.name}/ort-int8"]
        assert c.post("/v1/completions", json={"model": f"{first.name}/onnx-fp32", "prompt": "1+1="}).status_code == 200


def test_the_fleet_serves_batch_one_steps_from_the_verified_row_graph(sweep_copy, monkeypatch):
    """The fleet opens the per-token int8 variant with its row graph, from the bytes it hashed: a swap of the
    file after the check cannot reach the session (as for the main graph)."""
    import serve.fleet as fleet_module
    from export.runtime import ROW_MODEL_FILE

    cfg = ServeConfig(sweep=str(sweep_copy), variants=("ort-int8",), memory_budget_mb=100)
    fleet = Fleet.from_config(cfg)
    real = fleet_module.OnnxCausalLM
    opened = []

    def spy(folder, **kw):
        (folder / ROW_MODEL_FILE).write_bytes(b"swapped after the check")
        opened.append(kw["row_model_bytes"])
        return real(folder, **kw)

    monkeypatch.setattr(fleet_module, "OnnxCausalLM", spy)
    runner = fleet.runner(sorted(fleet.entries)[0])
    assert opened[0] is not None and opened[0][:4] != b"swap" and runner.row_session is not None


def test_row_graph_false_holds_the_int8_weights_once(sweep_copy):
    """``--row_graph=false``: one session a variant (its weights held once), batch-1 steps on the main graph."""
    cfg = ServeConfig(sweep=str(sweep_copy), variants=("ort-int8",), memory_budget_mb=100, row_graph=False)
    fleet = Fleet.from_config(cfg)
    model_id = sorted(fleet.entries)[0]
    runner = fleet.runner(model_id)
    assert runner.row_session is None and runner.generate_ids(runner.encode(["1+1="]), 3)
    with_row = Fleet.from_config(ServeConfig(sweep=str(sweep_copy), variants=("ort-int8",), memory_budget_mb=100))
    row_bytes = (fleet.entries[model_id].folder / "model.row.onnx").stat().st_size
    assert with_row.entries[model_id].bytes - fleet.entries[model_id].bytes == row_bytes  # the budget's estimate
