"""Fused attention for GPT-NeoX graphs: ONNX Runtime's contrib ops in place of optimum's op-by-op attention.

optimum exports each layer's attention as ~60 small ONNX nodes (reshapes, slices of the fused QKV
projection, the partial rotary embedding written out op by op, the cache concatenation, the mask, the
softmax and its NaN guard). At pythia-70m's size a batch-1 decode step spends more time in those nodes'
dispatch than in reading the weights of a 4-bit or int8 model. This pass replaces, in every layer, the
nodes between the QKV projection and the output projection by three contrib ops that ONNX Runtime's
CPU provider runs as single kernels (they are in every onnxruntime wheel, domain ``com.microsoft``):

- ``RotaryEmbedding`` on the query and on the key (non-interleaved, ``rotary_embedding_dim`` = the
  partial rotary width, cos/sin tables computed once from the config as transformers computes them);
- ``MultiHeadAttention`` with the past key/value in and the present key/value out (BNSH, the graph's
  existing ``past_key_values.*`` / ``present.*`` names), causal (``unidirectional``), and the
  attention mask as its key padding mask, so left-padded batches decode as before.

The QKV projection's columns are reordered from GPT-NeoX's per-head ``[heads, (q, k, v), head_dim]`` to
``[(q, k, v), heads, head_dim]`` (its weight and bias, the same numbers in another order), so one Split gives
the query, key and value in the ``[batch, seq, heads * head_dim]`` layout both contrib ops take, with no
Reshape around them (four per layer, a quarter of a 4-bit step's nodes). The other projections (the MatMuls
the quantizers act on), the layer norms, the MLP and the LM head are left
as they are, and the graph's inputs and outputs keep their names and shapes: ``export/runtime.py``
runs the fused graph unchanged. The pass finds each layer's attention by structure (from the
``present.<i>.value`` output back to the QKV projection and forward to the output projection) and
refuses, naming the layer, when the graph is not the shape it expects; ``fuse_attention`` then checks
the fused graph against the original on a left-padded batch with a past before it is kept.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from export.graph import node_index

FUSION_VERSION = 2  # bumped whenever the fused graph changes (the benchmark's model cache is keyed on it)
MS = "com.microsoft"
MASK = "fracture_attention_mask_int32"
COS, SIN = "fracture_rotary_cos", "fracture_rotary_sin"
# fused vs unfused logits on the self-check: float reordering only (the softmax and rotary are computed in
# a different order), far below the 1e-2 scale at which a greedy answer could move on its own
SELF_CHECK_ATOL = 1e-3


class FusionError(ValueError):
    """The graph is not the GPT-NeoX attention this pass knows; nothing was changed."""


def rotary_tables(config: dict) -> tuple[np.ndarray, np.ndarray, int]:
    """(cos, sin, rotary width) as transformers' GPTNeoXRotaryEmbedding computes them, in float32,
    one row per position up to ``max_position_embeddings`` and ``rotary width / 2`` columns."""
    if config.get("rope_scaling"):
        raise FusionError(f"rope_scaling {config['rope_scaling']!r} is not handled (plain RoPE only)")
    head_dim = config["hidden_size"] // config["num_attention_heads"]
    pct = config.get("partial_rotary_factor", config.get("rotary_pct", 1.0))
    width = int(head_dim * pct)
    base = float(config.get("rope_theta", config.get("rotary_emb_base", 10000)))
    inv_freq = (1.0 / (base ** (np.arange(0, width, 2, dtype=np.int64).astype(np.float32) / width))).astype(np.float32)
    t = np.arange(config["max_position_embeddings"], dtype=np.float32)
    freqs = np.outer(t, inv_freq).astype(np.float32)
    return np.cos(freqs).astype(np.float32), np.sin(freqs).astype(np.float32), width


def _expect(node, op: str, layer: int, what: str):
    if node is None or node.op_type != op:
        found = "nothing" if node is None else f"{node.op_type} {node.name!r}"
        raise FusionError(f"layer {layer}: expected a {op} for {what}, found {found}")
    return node


def _only_consumer(consumers, name: str, op: str, layer: int, what: str):
    users = consumers.get(name, [])
    if len(users) != 1:
        raise FusionError(f"layer {layer}: {what} ({name}) has {len(users)} consumers, expected one {op}")
    return _expect(users[0], op, layer, what)


def _layer_anchors(producer, consumers, layer: int) -> tuple[str, object]:
    """(the QKV projection's output, the Reshape whose output feeds the output projection)."""
    concat = _expect(producer.get(f"present.{layer}.value"), "Concat", layer, "the value cache")
    if concat.input[0] != f"past_key_values.{layer}.value":
        raise FusionError(f"layer {layer}: the value cache does not start from past_key_values.{layer}.value")
    value = _expect(producer.get(concat.input[1]), "Slice", layer, "the value slice of QKV")
    heads_first = _expect(producer.get(value.input[0]), "Transpose", layer, "QKV to heads-first")
    split_heads = _expect(producer.get(heads_first.input[0]), "Reshape", layer, "QKV into heads")
    mixes = [n for n in consumers.get(f"present.{layer}.value", []) if n.op_type == "MatMul"]
    if len(mixes) != 1:
        raise FusionError(f"layer {layer}: expected one MatMul of the probabilities with the values, "
                          f"found {len(mixes)}")
    back = _only_consumer(consumers, mixes[0].output[0], "Transpose", layer, "the attention output")
    merged = _only_consumer(consumers, back.output[0], "Reshape", layer, "the merged heads")
    return split_heads.input[0], merged


def _qkv_projection(producer, inits: dict, qkv: str, layer: int, width: int) -> list[tuple[object, int, str]]:
    """Where the projection writing ``qkv`` reads its weight and its bias: (node, input index, initializer)
    each. optimum exports it as ``Add(bias, MatMul(x, weight))``, both constants."""
    add = _expect(producer.get(qkv), "Add", layer, "the QKV projection's bias")
    constants = [_constant(producer, inits, x) for x in add.input]
    found = [(j, producer.get(add.input[1 - j])) for j in (0, 1) if constants[j]]
    if len(found) != 1 or found[0][1] is None or found[0][1].op_type != "MatMul":
        raise FusionError(f"layer {layer}: the QKV projection is not Add(bias, MatMul(x, weight))")
    bias_index, matmul = found[0]
    weight, bias = _constant(producer, inits, matmul.input[1]), constants[bias_index]
    if weight is None:
        raise FusionError(f"layer {layer}: the QKV projection's weight is not a constant")
    dims = list(inits[weight].dims), list(inits[bias].dims)
    if dims[0][-1:] != [width] or dims[1] != [width]:
        raise FusionError(f"layer {layer}: the QKV projection is {dims[0]} + {dims[1]}, "
                          f"expected [*, {width}] + [{width}]")
    return [(matmul, 1, weight), (add, bias_index, bias)]


def _constant(producer, inits: dict, name: str) -> str | None:
    """The initializer ``name`` stands for, through the Identity nodes by which the exporter shares equal
    constants (the biases of a fresh model are all zero), or None when it is computed."""
    while name not in inits and name in producer and producer[name].op_type == "Identity":
        name = producer[name].input[0]
    return name if name in inits else None


def qkv_major(array: np.ndarray, heads: int, head_dim: int) -> np.ndarray:
    """A QKV weight's (or bias's) last axis from per-head [heads, 3, head_dim] to [3, heads, head_dim]."""
    lead = array.shape[:-1]
    return np.ascontiguousarray(array.reshape(*lead, heads, 3, head_dim).swapaxes(-3, -2).reshape(*lead, -1))


def fuse_graph(model: onnx.ModelProto, config: dict) -> int:
    """Fuse every layer's attention in place; returns the number of layers fused. Raises FusionError,
    leaving ``model`` as it was, when a layer is not the expected pattern."""
    graph = model.graph
    layers = config["num_hidden_layers"]
    heads = config["num_attention_heads"]
    head_dim = config["hidden_size"] // heads
    inputs = {i.name: i for i in graph.input}
    for name in ("attention_mask", "position_ids", "past_key_values.0.key"):
        if name not in inputs:
            raise FusionError(f"the graph has no {name} input (export with text-generation-with-past)")
    if inputs["past_key_values.0.key"].type.tensor_type.elem_type != TensorProto.FLOAT:
        raise FusionError("only float32 graphs are fused")
    cos, sin, width = rotary_tables(config)
    producer, consumers = node_index(graph.node)
    inits = {t.name: t for t in graph.initializer}
    anchors = [_layer_anchors(producer, consumers, i) for i in range(layers)]  # all or nothing
    projections = [_qkv_projection(producer, inits, qkv, i, 3 * heads * head_dim) for i, (qkv, _) in enumerate(anchors)]

    replacements: dict[str, list] = {}  # name of the Reshape replaced -> nodes that take its place
    reordered = []  # each layer's QKV weight and bias, columns query-key-value major
    for i, ((qkv, merged), projection) in enumerate(zip(anchors, projections)):
        p = f"/fracture/layers.{i}/attention"
        # a copy per layer: optimum stores equal initializers once (e.g. the zero biases of a fresh model)
        for (node, index, source), what in zip(projection, ("weight", "bias")):
            name = f"{p}/query_key_value.{what}.qkv_major"
            array = qkv_major(numpy_helper.to_array(inits[source]), heads, head_dim)
            reordered.append(numpy_helper.from_array(array, name))
            node.input[index] = name
        q, k, v = f"{p}/q", f"{p}/k", f"{p}/v"
        replacements[merged.name] = [
            helper.make_node("Split", [qkv, "fracture_qkv_split"], [q, k, v], name=f"{p}/Split", axis=-1),
            *[helper.make_node("RotaryEmbedding", [x, "position_ids", COS, SIN], [f"{x}_rot"],
                               name=f"{x}/Rotary", domain=MS, interleaved=0, num_heads=heads,
                               rotary_embedding_dim=width)
              for x in (q, k)],
            helper.make_node("MultiHeadAttention",
                             [f"{q}_rot", f"{k}_rot", v, "", MASK, "",
                              f"past_key_values.{i}.key", f"past_key_values.{i}.value"],
                             [merged.output[0], f"present.{i}.key", f"present.{i}.value"],
                             name=f"{p}/MultiHeadAttention", domain=MS, num_heads=heads, unidirectional=1),
        ]

    nodes = [helper.make_node("Cast", ["attention_mask"], [MASK], name="/fracture/MaskToInt32", to=TensorProto.INT32)]
    for node in graph.node:
        nodes += replacements.get(node.name, [node])
    graph.initializer.extend([
        *reordered, numpy_helper.from_array(cos, COS), numpy_helper.from_array(sin, SIN),
        numpy_helper.from_array(np.array([heads * head_dim] * 3, np.int64), "fracture_qkv_split"),
    ])
    del graph.node[:]  # the old writers of present.* come before the fused ones: _live keeps the later only
    graph.node.extend(_live(nodes, [o.name for o in graph.output]))
    used = {i for n in graph.node for i in n.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    del graph.value_info[:]  # intermediate shapes of the removed nodes
    if not any(o.domain == MS for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS, 1))
    return layers


def _live(nodes: list, outputs: list[str]) -> list:
    """The nodes the graph outputs depend on, in their order (a name written twice: its later writer)."""
    producer, _ = node_index(nodes)
    needed, stack = set(), list(outputs)
    while stack:
        node = producer.get(stack.pop())
        if node is None or id(node) in needed:
            continue
        needed.add(id(node))
        stack += [i for i in node.input if i]
        for sub in (a.g for a in node.attribute if a.type == onnx.AttributeProto.GRAPH):
            stack += [i for n in sub.node for i in n.input if i]
    return [n for n in nodes if id(n) in needed]


def fuse_attention(model_path: Path, config_path: Path) -> int:
    """Fuse ``model_path`` in place when it is a GPT-NeoX graph; returns the layers fused (0 when the
    architecture is not GPT-NeoX, or when the weights are stored outside the graph, as optimum stores a
    graph over 2 GB: the fused graph is checked and saved in memory, in one protobuf). The fused graph
    must give the original's logits on a left-padded batch, prefill then two cached steps, within
    ``SELF_CHECK_ATOL``, or nothing is written."""
    config = json.loads(config_path.read_text())
    if config.get("model_type") != "gpt_neox":
        return 0
    if any(model_path.parent.glob("*.onnx_data")):  # over 2 GB: kept as optimum wrote it (external weights)
        return 0
    original = onnx.load(str(model_path))
    fused = onnx.ModelProto()
    fused.CopyFrom(original)
    count = fuse_graph(fused, config)
    gap = self_check(original, fused, config)
    if not gap <= SELF_CHECK_ATOL:
        raise FusionError(f"the fused graph's logits differ from the original's by {gap:.3g} (> {SELF_CHECK_ATOL})")
    onnx.save(fused, str(model_path))
    return count


def self_check(original: onnx.ModelProto, fused: onnx.ModelProto, config: dict) -> float:
    """Largest |Δlogit| between the two graphs over a left-padded batch of 3: a prefill, then two steps
    fed from each graph's own cache."""
    import onnxruntime as ort

    from export.runtime import PAST_PREFIX, left_pad, position_ids

    rng = np.random.default_rng(0)
    vocab = config["vocab_size"]
    prompts = [rng.integers(2, vocab, n).tolist() for n in (5, 9, 2)]
    heads = config["num_attention_heads"]
    head_dim = config["hidden_size"] // heads
    gap = 0.0
    sessions = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
                for m in (original, fused)]
    names = [i.name for i in sessions[0].get_inputs() if i.name.startswith(PAST_PREFIX)]
    outputs = ["logits"] + ["present" + n[len(PAST_PREFIX) - 1:] for n in names]
    ids, mask = left_pad(prompts, 0)
    states = [[np.zeros((3, heads, 0, head_dim), np.float32) for _ in names] for _ in sessions]
    for _ in range(3):  # the prefill, then two steps
        feed = {"input_ids": ids, "attention_mask": mask, "position_ids": position_ids(mask)[:, -ids.shape[1]:]}
        results = [s.run(outputs, feed | dict(zip(names, past))) for s, past in zip(sessions, states)]
        real = mask[:, -ids.shape[1]:].astype(bool)  # padded positions' logits are never read
        gap = max(gap, float(np.abs(results[0][0] - results[1][0])[real].max()))
        states = [r[1:] for r in results]
        ids = results[0][0][:, -1, :].argmax(-1)[:, None].astype(np.int64)
        mask = np.concatenate([mask, np.ones((3, 1), np.int64)], axis=1)
    return gap
