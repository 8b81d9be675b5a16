"""What an exported graph really holds: operator counts, quantized tensors, stored bits.

A "quantized" model can silently stay full precision (docs/design.md, Pitfalls), so every
claim in a manifest is read off the saved graph rather than off the settings used to
make it: the operators present, which weights were replaced, and the bits per parameter
computed from the tensors actually stored.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

QUANTIZED_OPS = ("MatMulInteger", "DynamicQuantizeMatMul", "MatMulNBits", "DequantizeLinear", "GatherBlockQuantized")

_BITS = {
    TensorProto.FLOAT: 32, TensorProto.FLOAT16: 16, TensorProto.BFLOAT16: 16, TensorProto.DOUBLE: 64,
    TensorProto.INT8: 8, TensorProto.UINT8: 8, TensorProto.INT16: 16, TensorProto.UINT16: 16,
    TensorProto.INT32: 32, TensorProto.INT64: 64, TensorProto.BOOL: 8, TensorProto.INT4: 4, TensorProto.UINT4: 4,
}
_FLOATS = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE)


def load(path: str | Path) -> onnx.ModelProto:
    return onnx.load(str(path), load_external_data=True)


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    return dict(Counter(n.op_type for n in model.graph.node))


def quantized_op_counts(model: onnx.ModelProto) -> dict[str, int]:
    counts = op_counts(model)
    return {op: counts[op] for op in QUANTIZED_OPS if counts.get(op)}


def _numel(t: onnx.TensorProto) -> int:
    return int(np.prod(t.dims)) if t.dims else 1


def stored_bits(model: onnx.ModelProto) -> dict[str, int]:
    """Bits each initializer occupies as stored (packed 4-/2-bit weights count as their uint8 bytes)."""
    return {t.name: _numel(t) * _BITS.get(t.data_type, 32) for t in model.graph.initializer}


def node_index(nodes) -> tuple[dict, dict[str, list]]:
    """({tensor name: the node that writes it}, {tensor name: the nodes that read it}) over ``nodes`` (a
    graph's ``node`` list); where two nodes write one name, the later one is its producer."""
    producers, consumers = {}, {}
    for n in nodes:
        for name in n.input:
            consumers.setdefault(name, []).append(n)
        for name in n.output:
            producers[name] = n
    return producers, consumers


def weight_roles(model: onnx.ModelProto) -> dict[str, str]:
    """Float initializers of a full-precision export, by role: embeddings, lm_head, blocks or other.

    The embedding is the table a Gather reads with ``input_ids``; the LM head is the
    weight of the MatMul whose result becomes ``logits``; other MatMul weights are the
    transformer blocks; layer norms and biases are "other".
    """
    floats = {t.name for t in model.graph.initializer if t.data_type in _FLOATS}
    _, consumers = node_index(model.graph.node)

    def feeds_logits(node) -> bool:
        # the LM head MatMul's output reaches "logits" through at most a few shape-only ops
        frontier = list(node.output)
        for _ in range(4):
            if "logits" in frontier:
                return True
            frontier = [out for name in frontier for n in consumers.get(name, ())
                        if n.op_type in ("Identity", "Reshape", "Cast", "Add") for out in n.output]
        return False

    roles = dict.fromkeys(floats, "other")
    for node in model.graph.node:
        weights = [i for i in node.input if i in floats]
        if not weights:
            continue
        if node.op_type == "Gather" and "input_ids" in node.input:
            roles[weights[0]] = "embeddings"
        elif node.op_type == "MatMul":
            roles[weights[0]] = "lm_head" if feeds_logits(node) else "blocks"
    return roles


def float_parameters(model: onnx.ModelProto) -> int:
    return sum(_numel(t) for t in model.graph.initializer if t.data_type in _FLOATS)


def quantization_summary(quantized: onnx.ModelProto, reference: onnx.ModelProto) -> dict:
    """Compare a quantized graph with the full-precision graph it was made from.

    Returns the quantized operator counts, which reference weights were replaced (by
    role), bits per parameter over the whole model and over the replaced weights alone.
    """
    roles = weight_roles(reference)
    ref_sizes = {t.name: _numel(t) for t in reference.graph.initializer}
    q_bits = stored_bits(quantized)
    replaced = sorted(n for n in ref_sizes if n not in q_bits and n in roles)
    new = [n for n in q_bits if n not in ref_sizes]
    params = float_parameters(reference)
    replaced_params = sum(ref_sizes[n] for n in replaced)
    by_role = Counter(roles[n] for n in replaced)
    return {
        "quantized_ops": quantized_op_counts(quantized),
        "quantized_tensors": {role: by_role.get(role, 0) for role in ("blocks", "embeddings", "lm_head")},
        "quantized_tensor_names": replaced,
        "parameters": params,
        "quantized_parameters": replaced_params,
        "effective_bits_per_param": round(sum(q_bits.values()) / params, 4),
        "bits_per_quantized_weight": (round(sum(q_bits[n] for n in new) / replaced_params, 4)
                                      if replaced_params else None),
    }


def distinct_levels_per_group(model: onnx.ModelProto, group: int, role: str = "blocks") -> int:
    """Most distinct values any (column, group of ``group`` input rows) holds among ``role`` weights.

    A simulated k-bit export keeps fp32 storage; this shows the weights really were
    rounded to at most 2**k levels per group.
    """
    roles = weight_roles(model)
    worst = 0
    for t in model.graph.initializer:
        if roles.get(t.name) != role:
            continue
        w = numpy_helper.to_array(t)  # [in, out] (MatMul layout)
        rows = w.shape[0] // group * group
        if rows == 0:
            continue
        g = np.sort(w[:rows].reshape(rows // group, group, -1), axis=1)
        distinct = 1 + (np.diff(g, axis=1) != 0).sum(axis=1)
        worst = max(worst, int(distinct.max()))
    return worst


def _is_lookup(node) -> bool:
    """A row lookup per token: a Gather (or GatherBlockQuantized) indexed by the graph's ``input_ids``."""
    return node.op_type in ("Gather", "GatherBlockQuantized") and "input_ids" in node.input[1:]


def bytes_read_per_token(model: onnx.ModelProto) -> int:
    """Bytes of stored weights one decode step must read: every initializer in full, except a table
    that a Gather indexes with ``input_ids`` (directly or through a DequantizeLinear; or a
    GatherBlockQuantized, with its scales and zero points), of which one row is read per token. A
    table that any other node reads too (an embedding tied to the LM head) is read in full. The memory
    floor of a decode step is this over the memory bandwidth."""
    producers, consumers = node_index(model.graph.node)
    lookups, dequantized = set(), set()  # the tables read one row at a time; those made by a DequantizeLinear
    for node in model.graph.node:
        if not _is_lookup(node):
            continue
        table = node.input[0]
        lookups.add(table)
        if node.op_type == "GatherBlockQuantized":
            lookups.update(node.input[2:])  # its scales and zero points, one row of blocks per token
        source = producers.get(table)
        if (source is not None and source.op_type == "DequantizeLinear"
                and all(_is_lookup(c) for c in consumers[table])):  # a table only lookups read
            lookups.update(source.input)  # the quantized table, its scale and zero point
            dequantized.add(table)
    lookups -= {name for n in model.graph.node
                if not _is_lookup(n) and not (n.op_type == "DequantizeLinear" and n.output[0] in dequantized)
                for name in n.input}
    total = 0
    for t in model.graph.initializer:
        size = _numel(t) * _BITS.get(t.data_type, 32) // 8
        total += size // t.dims[0] if t.name in lookups and t.dims else size
    return total
