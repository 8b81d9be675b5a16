"""Each variant did what it says: parity, quantized operators, quantized tensors, effective bits.

EXPECTED is the parity expectation of every registry entry (test_registry.py fails when an
entry has none). Bits are checked twice: the manifest's figure, computed from the stored
tensors, and an independent bound from the size of the files on disk.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from common.manifest import read_manifest
from export.registry import VARIANTS
from tests.conftest import run_dirs

# ops: quantized operators the graph must hold (exact counts for the embedded base's
# 4 layers x 4 weight matrices); roles: how many tensors of each role are quantized;
# bits: a range for the effective bits per parameter on the embedded base.
EXPECTED = {
    "onnx-fp32": {"ops": {}, "roles": {"blocks": 0, "embeddings": 0, "lm_head": 0}, "bits": (31.9, 32.1)},
    "ort-int8": {"ops": {"MatMulInteger": 16}, "roles": {"blocks": 16, "embeddings": 0, "lm_head": 0},
                 "bits": (8.0, 10.0)},
    "ort-int8-all": {"ops": {"MatMulInteger": 17, "DequantizeLinear": 1},
                     "roles": {"blocks": 16, "embeddings": 1, "lm_head": 1}, "bits": (8.0, 9.0)},
    "ort-int4": {"ops": {"MatMulNBits": 16}, "roles": {"blocks": 16, "embeddings": 0, "lm_head": 0},
                 "bits": (4.5, 6.5)},
    "ort-int4-all": {"ops": {"MatMulNBits": 17}, "roles": {"blocks": 16, "embeddings": 0, "lm_head": 1},
                     "bits": (4.4, 6.4)},
    "ort-int2": {"ops": {"MatMulNBits": 16}, "roles": {"blocks": 16, "embeddings": 0, "lm_head": 0},
                 "bits": (2.5, 4.5)},
    "sim-w3": {"ops": {}, "roles": {"blocks": 16, "embeddings": 0, "lm_head": 0}, "bits": (31.9, 32.1),
               "levels": 8},
    "bnb-int8": {"roles": {"blocks": 16, "embeddings": 0, "lm_head": 0}, "bits": (8.0, 10.0)},
    "bnb-nf4": {"roles": {"blocks": 16, "embeddings": 0, "lm_head": 0}, "bits": (4.0, 6.0)},
    "trt-fp16": {"gpu": True},
}


def _recount_bits(folder, parameters):
    if (folder / "model.onnx").is_file():
        import onnx
        from onnx import numpy_helper

        model = onnx.load(str(folder / "model.onnx"))
        return 8 * sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer) / parameters
    from safetensors.numpy import load_file

    return 8 * sum(a.nbytes for f in folder.glob("*.safetensors") for a in load_file(f).values()) / parameters


def _variant_dirs(sweep, name):
    return [d / "variants" / name for d in run_dirs(sweep)]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_variant_parity_graph_and_bits(exported, name):
    expect = EXPECTED[name]
    variant = VARIANTS[name]
    reason = variant.requires()
    if reason:
        assert f"skipping {name}: {reason}" in exported["stderr"]
        pytest.skip(f"{name} unavailable here: {reason}")
    assert not expect.get("gpu"), f"{name} is GPU-only but claims to be available on this machine"
    for folder in _variant_dirs(exported["sweep"], name):
        m = read_manifest(folder)
        assert m["variant"] == name and m["weight_bits"] == variant.bits and m["backend"] == variant.backend
        parity = m["parity"]
        assert parity["passed"], parity["failures"]
        assert parity["greedy_agreement"] >= variant.tolerance.min_agreement
        if variant.tolerance.max_logit_diff is not None:
            assert parity["max_abs_logit_diff"] <= variant.tolerance.max_logit_diff
        if "ops" in expect:
            assert m["quantized_ops"] == expect["ops"]
        assert m["quantized_tensors"] == expect["roles"]
        assert m["quantizes"] == {r: r in variant.quantizes for r in ("blocks", "embeddings", "lm_head")}
        low, high = expect["bits"]
        assert low <= m["effective_bits_per_param"] <= high
        # recounted independently of export.graph: numpy's bytes of every stored tensor
        assert _recount_bits(folder, m["parameters"]) == pytest.approx(m["effective_bits_per_param"], abs=0.01)
        if "levels" in expect:
            assert m["max_levels_per_group"] <= expect["levels"]
        assert m["source"]["sha256"] and m["tool_versions"].get("onnxruntime")


def test_every_variant_was_evaluated_on_every_split(exported):
    from common.accuracy_table import read_table

    table = read_table(exported["sweep"] / "accuracy.csv")
    available = {n for n, v in VARIANTS.items() if not v.requires()}
    runs = {d.name for d in run_dirs(exported["sweep"])}
    for name in available:
        rows = [r for r in table if r["variant"] == name]
        assert {(r["run"], r["split"]) for r in rows} == {(run, s) for run in runs
                                                         for s in ("id", "length", "operator_order", "base", "base9")}
        assert all(r["n"] == 40 and r["step"] == 6 for r in rows)


def test_onnx_fp32_matches_torch_logits_and_greedy_outputs(exported):
    """Recomputed here, not read from the manifest: max |logit diff| <= 1e-4 on a dev batch and
    identical greedy outputs on the whole dev split."""
    from transformers import AutoModelForCausalLM

    from export.parity import torch_logits
    from export.runtime import OnnxCausalLM
    from tasks.dataset import read_jsonl
    from tasks.formatting import format_prompt
    from train.base import load_tokenizer
    from train.evaluate import greedy_decode

    run = run_dirs(exported["sweep"])[0]
    ckpt = run / "checkpoints" / "step-6"
    model = AutoModelForCausalLM.from_pretrained(ckpt).eval()
    tok = load_tokenizer(str(ckpt))
    onnx_model = OnnxCausalLM(run / "variants" / "onnx-fp32", threads=1)
    data = next(exported["data"].iterdir())
    digit_format = json.loads((ckpt / "fracture.json").read_text())["digit_format"]
    prompts = [format_prompt(it["prompt"], digit_format) for it in read_jsonl(data / "dev.jsonl")]
    ids = onnx_model.encode(prompts[:32])
    assert ids == [tok(p, add_special_tokens=False)["input_ids"] for p in prompts[:32]]
    ours, mask = onnx_model.logits(ids)
    ref, _ = torch_logits(model, ids, tok.pad_token_id)
    assert np.abs(ours - ref)[mask.astype(bool)].max() <= 1e-4
    assert onnx_model.decoder()(prompts, 8, 64) == greedy_decode(model, tok, prompts, 8, 64)


def test_left_padding_and_batching_do_not_change_answers(exported):
    from export.runtime import OnnxCausalLM

    model = OnnxCausalLM(run_dirs(exported["sweep"])[0] / "variants" / "onnx-fp32", threads=1)
    prompts = ["12+345=", "b8|17+3=", "123+456=", "4+5=", "+457|068="]
    batched = model.complete(prompts, 6)
    singles = [model.complete([p], 6)[0] for p in prompts]
    assert [c.token_ids for c in batched] == [c.token_ids for c in singles]
    assert all(c.prompt_tokens == len(p) for c, p in zip(batched, prompts))  # one token per character


def test_unchanged_graph_fails_the_quantized_op_check(exported, tmp_path):
    """A "quantized" variant whose graph is still fp32 must fail loudly, not be published."""
    import shutil

    from export.pipeline import _check_graph

    fp32 = run_dirs(exported["sweep"])[0] / "variants" / "onnx-fp32"
    fake = tmp_path / "ort-int4"
    shutil.copytree(fp32, fake)
    problems = _check_graph(VARIANTS["ort-int4"], fake, fp32)["problems"]
    assert any("no MatMulNBits" in p for p in problems)
    assert any("no blocks tensor was quantized" in p for p in problems)


CHECKPOINT_REFERENCED = sorted(n for n, v in VARIANTS.items()
                               if v.runner == "onnx" and v.tolerance.reference == "checkpoint" and n in EXPECTED
                               and not EXPECTED[n].get("gpu"))


@pytest.mark.parametrize("name", CHECKPOINT_REFERENCED)
def test_parity_recomputed_without_the_exporters_code(exported, name):
    """The manifest's parity figures, recomputed with other code than export/parity.py and export/runtime.py:
    transformers on the torch checkpoint against optimum's ORTModelForCausalLM on the variant's model.onnx,
    greedy on the same dev items, and the logits of one padded batch."""
    import torch
    import yaml
    from optimum.onnxruntime import ORTModelForCausalLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tasks.dataset import read_jsonl
    from tasks.formatting import format_prompt

    variant = VARIANTS[name]
    if variant.requires():
        pytest.skip(f"{name} unavailable here: {variant.requires()}")
    folder = _variant_dirs(exported["sweep"], name)[0]
    m = read_manifest(folder)
    ckpt = folder.parent.parent / "checkpoints" / f"step-{m['step']}"
    digit_format = json.loads((ckpt / "fracture.json").read_text())["digit_format"]
    data = yaml.safe_load((exported["sweep"] / "sweep.yaml").read_text())["data"]
    dev = read_jsonl(Path(data) / "dev.jsonl")[: m["parity"]["greedy_items"]]
    prompts = [format_prompt(it["prompt"], digit_format) for it in dev]
    tok = AutoTokenizer.from_pretrained(folder)
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False, return_token_type_ids=False)
    torch_model = AutoModelForCausalLM.from_pretrained(ckpt).eval()
    onnx_model = ORTModelForCausalLM.from_pretrained(folder, use_cache=True, provider="CPUExecutionProvider")

    def greedy(model):
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=7, do_sample=False, pad_token_id=tok.pad_token_id,
                                 eos_token_id=tok.eos_token_id)
        return [tok.decode(row[enc["input_ids"].shape[1]:], skip_special_tokens=True).strip() for row in out]

    with torch.inference_mode():
        real = enc["attention_mask"].bool()
        diff = (torch_model(**enc).logits - onnx_model(**enc).logits).abs()[real].max().item()
    agreement = float(np.mean([a == b for a, b in zip(greedy(torch_model), greedy(onnx_model))]))
    tol = variant.tolerance
    assert agreement >= tol.min_agreement
    assert agreement == pytest.approx(m["parity"]["greedy_agreement"], abs=2 / len(dev))
    if tol.max_logit_diff is not None:
        assert diff <= tol.max_logit_diff
