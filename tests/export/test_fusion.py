"""export/fusion.py: the fused graph decodes exactly as optimum's, and anything unexpected is refused."""

import json

import numpy as np
import onnx
import pytest

from export.fusion import FusionError, fuse_attention, fuse_graph, rotary_tables
from export.graph import node_index
from export.onnx_export import export_onnx
from export.runtime import OnnxCausalLM
from tests.conftest import run_dirs

PROMPTS = ["12+345=", "b8|17+3=", "4+5=", "+457|068=", "999+999=", "1="]  # mixed lengths: left padding


@pytest.fixture(scope="module")
def unfused(exported, tmp_path_factory):
    """optimum's graph of a checkpoint of the exported sweep, and the published (fused) onnx-fp32 of it."""
    run = run_dirs(exported["sweep"])[0]
    manifest = json.loads((run / "variants" / "onnx-fp32" / "manifest.json").read_text())
    dest = tmp_path_factory.mktemp("unfused")
    export_onnx(run / "checkpoints" / f"step-{manifest['step']}", dest, fuse=False)
    return dest, run / "variants" / "onnx-fp32"


def test_published_fp32_is_fused_and_decodes_as_optimums_graph(unfused):
    plain, fused = unfused
    config = json.loads((fused / "config.json").read_text())
    graph = onnx.load(str(fused / "model.onnx")).graph
    ops = [n.op_type for n in graph.node]
    plain_ops = [n.op_type for n in onnx.load(str(plain / "model.onnx")).graph.node]
    assert ops.count("MultiHeadAttention") == config["num_hidden_layers"]
    assert ops.count("RotaryEmbedding") == 2 * config["num_hidden_layers"]
    assert len(ops) < len(plain_ops) / 2
    # the QKV projection, reordered query-key-value major, is split straight into the contrib ops: no Reshape
    producer, _ = node_index(graph.node)
    for mha in (n for n in graph.node if n.op_type == "MultiHeadAttention"):
        q, k = (producer[x] for x in mha.input[:2])
        split = producer[mha.input[2]]
        assert split.op_type == "Split" and q.op_type == k.op_type == "RotaryEmbedding"
        assert [producer[q.input[0]], producer[k.input[0]]] == [split, split]
        assert list(split.output) == [q.input[0], k.input[0], mha.input[2]]
        assert producer[split.input[0]].op_type == "Add"  # the projection's bias
    a, b = OnnxCausalLM(plain, threads=1), OnnxCausalLM(fused, threads=1)
    ids = a.encode(PROMPTS)
    assert a.generate_ids(ids, 8) == b.generate_ids(ids, 8)
    la, mask = a.logits(ids)
    lb, _ = b.logits(ids)
    assert np.abs(la - lb)[mask.astype(bool)].max() < 1e-4  # the fp32 export's own parity bound


def test_rotary_tables_are_transformers(unfused):
    """The cos/sin tables the fused graph stores equal transformers' GPT-NeoX rotary embedding."""
    import torch
    from transformers import GPTNeoXConfig
    from transformers.models.gpt_neox.modeling_gpt_neox import GPTNeoXRotaryEmbedding

    config = json.loads((unfused[1] / "config.json").read_text())
    cos, sin, width = rotary_tables(config)
    rope = GPTNeoXRotaryEmbedding(GPTNeoXConfig(**{k: v for k, v in config.items() if k != "transformers_version"}))
    positions = torch.arange(config["max_position_embeddings"])[None]
    ref_cos, ref_sin = rope(torch.zeros(1, dtype=torch.float32), positions)
    assert width == ref_cos.shape[-1]
    np.testing.assert_allclose(cos, ref_cos[0, :, :width // 2].numpy(), atol=1e-6)
    np.testing.assert_allclose(sin, ref_sin[0, :, :width // 2].numpy(), atol=1e-6)


def test_an_unexpected_graph_is_refused_whole(unfused):
    """A layer whose attention is not the expected shape: FusionError naming it, and no layer fused."""
    plain, _ = unfused
    config = json.loads((plain / "config.json").read_text())
    model = onnx.load(str(plain / "model.onnx"))
    last = config["num_hidden_layers"] - 1
    concat = next(n for n in model.graph.node if f"present.{last}.value" in n.output)
    concat.input[0], concat.input[1] = concat.input[1], concat.input[0]  # the cache no longer starts from past
    before = model.SerializeToString()
    with pytest.raises(FusionError, match=f"layer {last}"):
        fuse_graph(model, config)
    assert model.SerializeToString() == before


def test_other_architectures_and_external_weights_are_left_as_exported(unfused, tmp_path):
    plain, _ = unfused
    config = json.loads((plain / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config | {"model_type": "llama"}))
    (tmp_path / "model.onnx").write_bytes((plain / "model.onnx").read_bytes())
    assert fuse_attention(tmp_path / "model.onnx", tmp_path / "config.json") == 0
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.onnx_data").write_bytes(b"")  # how optimum stores the weights of a graph over 2 GB
    assert fuse_attention(tmp_path / "model.onnx", tmp_path / "config.json") == 0
    assert (tmp_path / "model.onnx").read_bytes() == (plain / "model.onnx").read_bytes()
