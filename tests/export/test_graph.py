"""export/graph.py's count of the bytes a decode step reads (the memory floor of bench/edge.py), on small
hand-made graphs where the answer can be written down."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from export.graph import bytes_read_per_token

V, D, N = 100, 8, 6  # vocabulary, width, the head's outputs


def _model(nodes, initializers):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, 1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(a, n) for n, a in initializers.items()])
    return helper.make_model(graph)


def test_an_embedding_is_read_one_row_a_token_and_a_matmul_weight_in_full():
    m = _model([helper.make_node("Gather", ["table", "input_ids"], ["h"]),
                helper.make_node("MatMul", ["h", "w"], ["y"])],
               {"table": np.zeros((V, D), np.float32), "w": np.zeros((D, N), np.float32)})
    assert bytes_read_per_token(m) == D * 4 + D * N * 4


def test_a_quantized_embedding_reads_one_row_of_its_values_and_scales():
    """Through a DequantizeLinear (per row), and as one GatherBlockQuantized with its scales and zero points."""
    dq = _model([helper.make_node("DequantizeLinear", ["q", "scale", "zp"], ["table"], axis=0),
                 helper.make_node("Gather", ["table", "input_ids"], ["y"])],
                {"q": np.zeros((V, D), np.int8), "scale": np.ones(V, np.float32), "zp": np.zeros(V, np.int8)})
    assert bytes_read_per_token(dq) == D + 4 + 1
    blocks = _model([helper.make_node("GatherBlockQuantized", ["packed", "input_ids", "scales", "zps"], ["y"],
                                      domain="com.microsoft", block_size=4)],
                    {"packed": np.zeros((V, D // 2), np.uint8), "scales": np.ones((V, D // 4), np.float32),
                     "zps": np.zeros((V, 1), np.uint8)})
    assert bytes_read_per_token(blocks) == D // 2 + 4 * (D // 4) + 1


def test_a_table_the_lm_head_also_reads_is_read_in_full():
    """Tied embeddings: the same table gathered for the input and multiplied for the logits."""
    m = _model([helper.make_node("Gather", ["table", "input_ids"], ["h"]),
                helper.make_node("MatMul", ["h", "table_t"], ["h2"]),
                helper.make_node("Transpose", ["table"], ["table_t"]),
                helper.make_node("Identity", ["h2"], ["y"])],
               {"table": np.zeros((V, D), np.float32)})
    assert bytes_read_per_token(m) == V * D * 4


def test_a_quantized_table_the_lm_head_also_reads_is_read_in_full():
    """Tied through one DequantizeLinear: the gathered table is also what the head multiplies."""
    m = _model([helper.make_node("DequantizeLinear", ["q", "scale", "zp"], ["table"], axis=0),
                helper.make_node("Gather", ["table", "input_ids"], ["h"]),
                helper.make_node("Transpose", ["table"], ["table_t"]),
                helper.make_node("MatMul", ["h", "table_t"], ["y"])],
               {"q": np.zeros((V, D), np.int8), "scale": np.ones(V, np.float32), "zp": np.zeros(V, np.int8)})
    assert bytes_read_per_token(m) == V * D + V * 4 + V
