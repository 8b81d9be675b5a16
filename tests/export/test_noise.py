"""noise@<variant>: fp32 plus Gaussian noise of a quantized variant's per-tensor error energy.

Built here from the embedded base (a real pretrained checkpoint) with the same export and
quantization functions the pipeline calls: exporting and quantizing it takes seconds,
where the shared ``exported`` sweep trains and exports every variant first.
"""

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from export.registry import NOISE_PATTERN, get_variant, resolve
from tests.train.conftest import REPO

CHECKPOINT = REPO / "models" / "embedded-base"
PROMPTS = ["12+345=", "123+456=", "4+5=", "999+999=", "70+8=", "31+469=", "5+55=", "808+191="]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """onnx-fp32, ort-int8, ort-int8-all, ort-int4 (and ort-int2 where it runs) of the embedded
    base, and noise@ort-int4 built from them by the registry's builder."""
    from export.onnx_export import export_onnx
    from export.quantize import dynamic_int8, matmul_nbits, nbits_supported
    from export.registry import BuildContext

    root = tmp_path_factory.mktemp("noise")
    fp32 = root / "onnx-fp32"
    export_onnx(CHECKPOINT, fp32)
    dynamic_int8(fp32, root / "ort-int8", include_embeddings_and_head=False)
    dynamic_int8(fp32, root / "ort-int8-all", include_embeddings_and_head=True)
    matmul_nbits(fp32, root / "ort-int4", bits=4)
    if nbits_supported(2) is None:
        matmul_nbits(fp32, root / "ort-int2", bits=2)
    (root / "scratch").mkdir()
    ctx = BuildContext(CHECKPOINT, fp32, root / "scratch", "cpu", needs_dir=root / "ort-int4")
    get_variant("noise@ort-int4").build(ctx, root / "noise@ort-int4")
    return root


@pytest.fixture(scope="module")
def model():
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(CHECKPOINT).eval()


def _block_weights(model) -> set[str]:
    from export.onnx_export import block_linears

    return {f"{n}.weight" for n, _ in block_linears(model)}


def test_names_resolve_after_their_source_and_bad_sources_fail():
    v = get_variant("noise@ort-int4")
    q = get_variant("ort-int4")
    assert (v.name, v.backend, v.bits, v.runner, v.needs, v.noise_of) == (
        "noise@ort-int4", "onnxruntime", 32, "onnx", "ort-int4", "ort-int4")
    assert v.quantizes == q.quantizes and v.expect_ops == () and v.requires is q.requires
    assert v.tolerance.reference == "simulated" and v.tolerance.max_logit_diff == 1e-4
    assert v.tolerance.min_agreement >= 0.99
    assert "ort-int4" in v.method and "noise" in v.method
    assert get_variant("noise@ort-int8-all").quantizes == ("blocks", "embeddings", "lm_head")
    assert get_variant("noise@sim-w5").needs == "sim-w5"
    assert [x.name for x in resolve(["noise@ort-int4"])] == ["onnx-fp32", "ort-int4", "noise@ort-int4"]
    assert [x.name for x in resolve(["noise@sim-w3", "ort-int2", "noise@ort-int2"])] == [
        "sim-w3", "noise@sim-w3", "onnx-fp32", "ort-int2", "noise@ort-int2"]
    for name in ("noise@ort-int8", "noise@ort-int2", "noise@sim-w2", "noise@sim-w8"):
        assert NOISE_PATTERN.match(get_variant(name).name)  # one '@', then [a-z0-9-]: a safe folder name
    bad = {
        "noise@foo": "unknown variant 'foo'", "noise@ort-itn4": "did you mean 'ort-int4'",
        "noise@onnx-fp32": "must be a quantized ONNX Runtime variant", "noise@bnb-int8": "torch\\+bitsandbytes",
        "noise@bnb-nf4": "must be a quantized", "noise@trt-fp16": "tensorrt",
        "noise@noise@ort-int4": "not to another control", "noise@": "a-z, 0-9", "noise@../ort-int4": "a-z, 0-9",
        "noise@sim-w9": "2 to 8 bits",
    }
    for name, why in bad.items():
        with pytest.raises(KeyError, match=why):
            get_variant(name)


@pytest.mark.parametrize("source", ["ort-int8", "ort-int4", "ort-int2"])
def test_dequantized_weights_are_the_fp32_weights_within_one_step(built, model, source):
    """Read off the saved graph: close to fp32 (within a quantization step, small against the
    weights), not equal to it, and mapped to the right torch parameters."""
    from export.noise import dequantized_weights, onnx_error

    if not (built / source).is_dir():
        pytest.skip(f"{source} cannot run on this onnxruntime")
    q = onnx.load(str(built / source / "model.onnx"))
    fp32_graph = onnx.load(str(built / "onnx-fp32" / "model.onnx"))
    fp32 = {t.name: numpy_helper.to_array(t) for t in fp32_graph.graph.initializer}
    inits = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
    weights = dequantized_weights(q)
    assert len(weights) == 16  # 4 layers x 4 block matrices
    rel_rms = {"ort-int8": 0.02, "ort-int4": 0.2, "ort-int2": 0.8}[source]
    for name, w_q in weights.items():
        w = fp32[name]
        err = np.abs(w_q - w)
        if source == "ort-int8":  # per output column: round to nearest of the column's steps
            bound = 0.5 * np.broadcast_to(inits[f"{name}_scale"], w.shape)
        else:  # per (column, block of 32 inputs), stored [N, blocks]; symmetric codes run -2**(b-1)..2**(b-1)-1,
            # so the side opposite the largest magnitude can be clipped by up to one whole step
            bound = np.repeat(np.abs(inits[f"{name}_scales"]).T, 32, axis=0)[: w.shape[0]]
        assert (err <= bound * (1 + 1e-5)).all(), name
        assert err.max() > 0, f"{name}: the dequantized weight equals fp32 (nothing was quantized?)"
        assert np.sqrt(np.mean(err ** 2)) < rel_rms * np.sqrt(np.mean(w ** 2)), name
    errors = onnx_error(model, built / source, built / "onnx-fp32")
    assert set(errors) == _block_weights(model) and all(e > 0 for e in errors.values())
    everything = onnx_error(model, built / "ort-int8-all", built / "onnx-fp32")
    assert set(everything) - set(errors) == {"gpt_neox.embed_in.weight", "embed_out.weight"}


@pytest.mark.parametrize("source", ["ort-int4", "ort-int2"])
def test_matmul_nbits_dequantization_equals_onnxruntime(built, source):
    """Each MatMulNBits node run by ONNX Runtime on the identity matrix returns its dequantized
    weight: ours must be that, exactly."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from export.noise import dequantized_weights

    if not (built / source).is_dir():
        pytest.skip(f"{source} cannot run on this onnxruntime")
    q = onnx.load(str(built / source / "model.onnx"))
    inits = {t.name: t for t in q.graph.initializer}
    ours = dequantized_weights(q)
    for node in [n for n in q.graph.node if n.op_type == "MatMulNBits"][:4]:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        k, n = attrs["K"], attrs["N"]
        probe = helper.make_graph(
            [helper.make_node("MatMulNBits", ["x", *node.input[1:]], ["y"], domain="com.microsoft", **attrs)], "probe",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [k, k])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [k, n])], [inits[i] for i in node.input[1:] if i])
        opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
        m = helper.make_model(probe, opset_imports=opsets, ir_version=10)
        sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        (theirs,) = sess.run(None, {"x": np.eye(k, dtype=np.float32)})
        name = node.input[1].rsplit("_Q", 1)[0]
        np.testing.assert_allclose(ours[name], theirs, rtol=1e-6, atol=1e-7)


def test_simulated_error_shrinks_with_bits_and_noise_matches_it(model):
    import copy

    from export.noise import add_noise_, simulated_error

    errors = {bits: simulated_error(model, bits) for bits in (2, 3, 8)}
    assert set(errors[3]) == _block_weights(model)
    for name in errors[3]:
        assert errors[2][name] > errors[3][name] > errors[8][name] > 0
    record = add_noise_(copy.deepcopy(model), errors[3], {name: i for i, name in enumerate(errors[3])})
    for t in record.values():
        assert t["realised_mse"] == pytest.approx(t["target_mse"], rel=0.05)


def test_noise_matches_the_error_energy_tensor_by_tensor(built, model):
    from export.noise import check_record, onnx_error, read_record, tensor_seed

    record = read_record(built / "noise@ort-int4")
    assert record["source"] == "ort-int4" and record["seed"] and record["source_model_sha256"]
    targets = onnx_error(model, built / "ort-int4", built / "onnx-fp32")
    assert set(record["tensors"]) == set(targets)
    for name, t in record["tensors"].items():
        assert t["target_mse"] == pytest.approx(targets[name], rel=1e-12)
        assert t["realised_mse"] == pytest.approx(t["target_mse"], rel=0.05), name
        assert t["seed"] == tensor_seed(name, record["seed_key"]) and t["role"] == "blocks"
    assert record["seed_key"].startswith("ort-int4:")  # a draw of its own for every source and checkpoint
    assert tensor_seed("w", record["seed_key"]) != tensor_seed("w", "ort-int4:another-checkpoint")
    assert check_record(record, ("blocks",)) == []
    assert check_record(record, ("blocks", "lm_head"))  # the roles must be the source's
    doubled = {n: {**t, "realised_mse": 2 * t["target_mse"]} for n, t in record["tensors"].items()}
    inflated = {**record, "tensors": doubled}
    assert len(check_record(inflated, ("blocks",))) == 16


def test_noise_graph_is_fp32_and_computes_the_noised_torch_model(built, model):
    from export import graph
    from export.noise import noised_reference, read_record
    from export.parity import torch_logits
    from export.runtime import OnnxCausalLM
    from train.base import load_tokenizer
    from train.evaluate import greedy_decode

    folder = built / "noise@ort-int4"
    g = graph.load(folder / "model.onnx")
    assert graph.quantized_op_counts(g) == {}
    assert not [t.name for t in g.graph.initializer if t.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)]
    assert graph.quantization_summary(g, g)["effective_bits_per_param"] == pytest.approx(32, abs=0.1)
    fp32 = graph.load(built / "onnx-fp32" / "model.onnx")
    roles = graph.weight_roles(fp32)
    before = {t.name: numpy_helper.to_array(t) for t in fp32.graph.initializer}
    after = {t.name: numpy_helper.to_array(t) for t in g.graph.initializer}
    changed = {n for n, w in before.items() if n in after and not np.array_equal(w, after[n])}
    assert changed == {n for n, r in roles.items() if r == "blocks"}  # blocks noised, the rest untouched

    noised = noised_reference(model, read_record(folder))
    tok = load_tokenizer(str(CHECKPOINT))
    runner = OnnxCausalLM(folder, threads=1)
    ids = runner.encode(PROMPTS)
    ours, mask = runner.logits(ids)
    ref, _ = torch_logits(noised, ids, tok.pad_token_id)
    assert np.abs(ours - ref)[mask.astype(bool)].max() <= 1e-4
    assert runner.decoder()(PROMPTS, 6, 8) == greedy_decode(noised, tok, PROMPTS, 6, 8)
    plain, _ = torch_logits(model, ids, tok.pad_token_id)
    assert np.abs(plain - ref)[mask.astype(bool)].max() > 1e-3  # the noise is really there


def test_pipeline_rebuild_is_reproducible_and_records_the_noise(built, tmp_path):
    """The pipeline's build of noise@ort-int4 (check, parity against the noised model, publish)
    gives the same bytes as the fixture's, and its manifest carries the noise record."""
    import random

    from common.files import sha256_file
    from common.manifest import verify
    from export.pipeline import CheckpointJob, Reference, _build

    rng = random.Random(0)
    pairs = [(rng.randrange(1000), rng.randrange(1000)) for _ in range(12)]
    splits = {"id": [{"prompt": f"{a}+{b}=", "answer": str(a + b)[::-1]} for a, b in pairs]}
    ref = Reference(CHECKPOINT, splits, batch_size=12, parity_batch=12)
    dest = tmp_path / "variants" / "noise@ort-int4"
    job = CheckpointJob("embedded", 0, 0, tmp_path)
    manifest, _, _ = _build(get_variant("noise@ort-int4"), job, CHECKPOINT,
                         built / "onnx-fp32", built / "ort-int4", ref, 1, dest, "cpu")
    assert verify(dest, "variant") is None
    assert manifest["files"]["model.onnx"]["sha256"] == sha256_file(built / "noise@ort-int4" / "model.onnx")
    assert manifest["parity"]["passed"] and manifest["parity"]["tolerance"]["reference"] == "simulated"
    assert manifest["parity"]["greedy_agreement"] == 1.0 and "agreement_with_checkpoint" in manifest["parity"]
    assert manifest["weight_bits"] == 32 and manifest["quantized_ops"] == {}
    assert manifest["quantized_tensors"] == {"blocks": 16, "embeddings": 0, "lm_head": 0}
    noise = manifest["noise"]
    assert noise["source"] == "ort-int4" and noise["seed"] and len(noise["tensors"]) == 16
    assert all({"target_mse", "realised_mse", "seed"} <= set(t) for t in noise["tensors"].values())



def test_noise_graph_is_what_exporting_the_noised_checkpoint_gives(built, model, tmp_path):
    """The control is written as the published onnx-fp32 graph with the noised values put in
    (no second export): the same nodes and the same initializers, bit for bit, as optimum's
    export of the noised checkpoint."""
    from export import graph
    from export.noise import noised_reference, read_record
    from export.onnx_export import export_onnx, save_derived_checkpoint

    folder = built / "noise@ort-int4"
    save_derived_checkpoint(noised_reference(model, read_record(folder)), CHECKPOINT, tmp_path / "noised")
    export_onnx(tmp_path / "noised", tmp_path / "exported")
    ours = graph.load(folder / "model.onnx").graph
    theirs = graph.load(tmp_path / "exported" / "model.onnx").graph
    assert [n.op_type for n in ours.node] == [n.op_type for n in theirs.node]
    a = {t.name: numpy_helper.to_array(t) for t in ours.initializer}
    b = {t.name: numpy_helper.to_array(t) for t in theirs.initializer}
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert sorted(p.name for p in (tmp_path / "exported").iterdir()) == sorted(
        p.name for p in folder.iterdir() if p.name != "noise.json")


def test_reweighting_a_graph_refuses_a_parameter_it_cannot_place(built, model, tmp_path):
    import copy

    import torch

    from export.noise import reweighted_graph

    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.gpt_neox.final_layer_norm.weight.add_(1.0)  # a vector: stored as is, but not a matrix
    with pytest.raises(ValueError, match="no initializer holds .*final_layer_norm.weight"):
        reweighted_graph(built / "onnx-fp32", model, changed, tmp_path / "out")
