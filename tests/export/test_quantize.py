"""export.quantize's per-token int8 activations, on a one-MatMul graph small enough to reason about."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

K, N = 48, 40


def _sessions(tmp_path, level=ort.GraphOptimizationLevel.ORT_DISABLE_ALL):
    """(ORT's own dynamic int8 graph: one scale and zero point per tensor, the per-token rewrite of it, the
    rewritten model) of x @ W + b, the sessions at optimization ``level``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from export.quantize import per_token_activations

    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"), helper.make_node("Add", ["h", "b"], ["y"])],
        "one_matmul", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", N])],
        [numpy_helper.from_array(rng.standard_normal((K, N)).astype(np.float32), "w"),
         numpy_helper.from_array(rng.standard_normal(N).astype(np.float32), "b")])
    fp32, per_tensor = tmp_path / "fp32.onnx", tmp_path / "per_tensor.onnx"
    # IR 8 and opset 18, as optimum exports them
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8), fp32)
    quantize_dynamic(str(fp32), str(per_tensor), per_channel=True, weight_type=QuantType.QInt8,
                     op_types_to_quantize=["MatMul"])
    model = onnx.load(per_tensor)
    assert per_token_activations(model) == 1

    def session(m) -> ort.InferenceSession:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = level
        return ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])

    return session(onnx.load(per_tensor)), session(model), model


def _rows() -> np.ndarray:
    """Rows of very different ranges: a row quantized with its batch-mates' scale would lose its digits."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 4, K)).astype(np.float32)
    x[0] *= 1e-3
    x[1, 0] = np.abs(x[1, 0]) * 50  # all positive: zero point 0
    x[1, 1] = -np.abs(x[1, 1])  # all negative: zero point 255
    x[2, 2] = 0.0  # all zero: the range floor keeps the scale finite
    return x


LEVELS = {"as_written": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
          "as_served": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}


@pytest.mark.parametrize("level", LEVELS.values(), ids=LEVELS.keys())
def test_each_row_is_quantized_as_onnx_runtime_quantizes_it_alone(tmp_path, level):
    """The rewrite's answer for a row equals ORT's own dynamic quantization (DynamicQuantizeLinear: one scale
    and zero point for the tensor) of that row alone, to the bit, whatever its batch-mates; and the batched
    graph agrees with itself row by row. Both as written and after ORT's fusions (which turn the per-tensor
    graph into one DynamicQuantizeMatMul), as the runtime serves it."""
    per_tensor, per_token, _ = _sessions(tmp_path, level)
    x = _rows()
    batched = per_token.run(None, {"x": x})[0]
    for b in range(x.shape[0]):
        for t in range(x.shape[1]):
            row = x[b:b + 1, t:t + 1]
            np.testing.assert_array_equal(batched[b, t], per_tensor.run(None, {"x": row})[0][0, 0])
            np.testing.assert_array_equal(batched[b, t], per_token.run(None, {"x": row})[0][0, 0])
    # the per-tensor graph on the whole batch is what the rewrite avoids: the small rows lose their digits
    assert not np.array_equal(per_tensor.run(None, {"x": x})[0], batched)


def test_the_rewrite_rounds_with_one_blocked_quantize_linear(tmp_path):
    """No DynamicQuantizeLinear is left; the rounding is one QuantizeLinear whose block is the whole row (the
    MatMul's input width), which needs opset 21 and IR version 10 (the model passes ONNX's checker)."""
    _, _, model = _sessions(tmp_path)
    ops = [n.op_type for n in model.graph.node]
    assert "DynamicQuantizeLinear" not in ops and ops.count("QuantizeLinear") == 1
    (quantize,) = (n for n in model.graph.node if n.op_type == "QuantizeLinear")
    attrs = {a.name: helper.get_attribute_value(a) for a in quantize.attribute}
    assert attrs == {"axis": -1, "block_size": K}
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 21
    assert model.ir_version >= onnx.helper.find_min_ir_version_for([helper.make_opsetid("", 21)])
    onnx.checker.check_model(model, full_check=True)


def test_a_graph_whose_ops_changed_meaning_by_opset_21_is_refused():
    """Raising the opset must not change what the rest of the graph computes: GroupNormalization's scale and
    bias changed shape in opset 21, so a graph holding one is refused, not silently reinterpreted."""
    from export.quantize import per_token_activations

    graph = helper.make_graph([helper.make_node("GroupNormalization", ["x", "s", "b"], ["y"], num_groups=2),
                               helper.make_node("DynamicQuantizeLinear", ["y"], ["q", "qs", "qz"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 3])],
                              [helper.make_tensor_value_info("q", TensorProto.UINT8, [1, 4, 3])])
    with pytest.raises(ValueError, match="GroupNormalization"):
        per_token_activations(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))


@pytest.mark.parametrize("variant", ["ort-int8", "ort-int8-all"])
def test_the_per_token_variants_ship_a_single_row_graph_with_their_bits(exported, variant):
    """Each per-token int8 export carries ONNX Runtime's own graph for a step of one row and one token, listed
    in its manifest (so it is verified as the main graph is), and on every decode step checked it computes the
    main graph's logits and presents bit for bit (prompts other than the export's own check)."""
    from common.manifest import read_manifest
    from export.quantize import check_row_graph
    from export.runtime import ROW_MODEL_FILE
    from tests.conftest import run_dirs

    for run in run_dirs(exported["sweep"]):
        folder = run / "variants" / variant
        assert ROW_MODEL_FILE in read_manifest(folder)["files"]
        # a 1-token prompt (its prefill and 6 steps) and two longer ones (6 steps each), at 1 and 2 threads
        assert check_row_graph(folder, prompts=3, steps=6, seed=1) == 2 * (7 + 6 + 6)


def test_a_single_row_graph_that_computes_other_bits_is_refused(exported, tmp_path):
    """A row graph one weight scale off by a part in a thousand (nearly the main graph, not exactly) fails the
    export's check, naming the output that differs: a batch-1 answer must not depend on which graph decoded it."""
    import shutil

    from export.quantize import RowGraphMismatch, check_row_graph
    from export.runtime import ROW_MODEL_FILE
    from tests.conftest import run_dirs

    folder = tmp_path / "ort-int8"
    shutil.copytree(run_dirs(exported["sweep"])[0] / "variants" / "ort-int8", folder)
    model = onnx.load(folder / ROW_MODEL_FILE)
    scales = [t for t in model.graph.initializer if t.name.endswith("_scale") and t.data_type == TensorProto.FLOAT
              and len(t.dims) == 1 and t.dims[0] > 1]  # per-channel weight scales
    assert scales, "no per-channel weight scale in the row graph"
    nudged = numpy_helper.to_array(scales[0]) * np.float32(1.001)
    scales[0].CopyFrom(numpy_helper.from_array(nudged.astype(np.float32), scales[0].name))
    onnx.save(model, folder / ROW_MODEL_FILE)
    with pytest.raises(RowGraphMismatch, match=f"{ROW_MODEL_FILE} differs from model.onnx on"):
        check_row_graph(folder)


def test_a_row_graph_that_fails_its_check_is_left_out_of_the_variant(exported, tmp_path, monkeypatch, caplog):
    """The export checks every row graph it writes; one that fails is removed with a warning, and the variant
    stands on its main graph (batch-1 steps then run that)."""
    import export.quantize as quantize
    from export.runtime import MODEL_FILE, ROW_MODEL_FILE
    from tests.conftest import run_dirs

    checked = []

    def mismatch(folder, **kw):
        checked.append(folder)
        raise quantize.RowGraphMismatch(f"{folder}: {ROW_MODEL_FILE} differs (made to fail by this test)")

    monkeypatch.setattr(quantize, "check_row_graph", mismatch)
    dest = tmp_path / "ort-int8"
    quantize.dynamic_int8(run_dirs(exported["sweep"])[0] / "variants" / "onnx-fp32", dest, False)
    assert checked == [dest] and (dest / MODEL_FILE).is_file() and not (dest / ROW_MODEL_FILE).exists()
    assert "left out" in caplog.text


def test_the_row_graph_session_leaves_out_the_fusions_it_names(exported, tmp_path):
    """ROW_DISABLED_FUSIONS are names ONNX Runtime knows (a misspelt one would be ignored without a word): with
    them left out the row graph keeps its MatMulInteger, with ORT's defaults it is fused into
    DynamicQuantizeMatMul."""
    from export.runtime import ROW_DISABLED_FUSIONS, ROW_MODEL_FILE, _session_options
    from tests.conftest import run_dirs

    row = run_dirs(exported["sweep"])[0] / "variants" / "ort-int8" / ROW_MODEL_FILE

    def optimized_ops(disabled: str) -> set[str]:
        out = tmp_path / f"optimized{len(disabled)}.onnx"
        opts = _session_options(1, disabled_fusions=disabled)
        opts.optimized_model_filepath = str(out)
        ort.InferenceSession(str(row), opts, providers=["CPUExecutionProvider"])
        return {n.op_type for n in onnx.load(out).graph.node}

    assert "DynamicQuantizeMatMul" in optimized_ops("")
    ops = optimized_ops(ROW_DISABLED_FUSIONS)
    assert {"MatMulInteger", "DynamicQuantizeLinear"} <= ops and not ops & {"DynamicQuantizeMatMul",
                                                                             "MatMulIntegerToFloat"}
