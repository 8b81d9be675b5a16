"""export/runtime.py: torch-free, equal to optimum's ORTModelForCausalLM, stop handling."""

import subprocess
import sys

import pytest

from tests.conftest import run_dirs


@pytest.mark.parametrize("module", ["export.runtime", "export.registry", "export.manifest"])
def test_runtime_side_never_imports_torch_or_transformers(module):
    code = (f"import sys, importlib; importlib.import_module({module!r}); "
            "hit = [m for m in ('torch', 'transformers', 'optimum') if m in sys.modules]; "
            "sys.exit(str(hit) if hit else 0)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, f"{module} imported {res.stderr or res.stdout}"


@pytest.mark.parametrize("variant", ["onnx-fp32", "ort-int8"])
def test_runtime_equals_optimum_generate_on_the_same_file(exported, variant):
    """Same ONNX file, same left-padded batch: our loop and ORTModelForCausalLM.generate give
    identical tokens."""
    from optimum.onnxruntime import ORTModelForCausalLM

    from export.runtime import OnnxCausalLM
    from train.base import load_tokenizer

    folder = run_dirs(exported["sweep"])[1] / "variants" / variant
    ours = OnnxCausalLM(folder, threads=1)
    ref = ORTModelForCausalLM.from_pretrained(folder, use_cache=True, provider="CPUExecutionProvider")
    tok = load_tokenizer(str(folder))
    prompts = ["12+345=", "b8|17+3=", "123+456=", "4+5=", "+457|068=", "999+999="]
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False, return_token_type_ids=False)
    gen = ref.generate(**enc, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id,
                       eos_token_id=tok.eos_token_id)
    theirs = [row[enc["input_ids"].shape[1]:].tolist() for row in gen]
    mine = ours.generate_ids(ours.encode(prompts), 6)
    for a, b in zip(mine, theirs):
        assert a == b[:len(a)] and all(t == tok.pad_token_id for t in b[len(a):])


def test_stop_strings_and_finish_reasons(exported):
    from export.runtime import OnnxCausalLM

    model = OnnxCausalLM(run_dirs(exported["sweep"])[0] / "variants" / "onnx-fp32", threads=1)
    free = model.complete(["123+456="], 8)[0]
    assert free.finish_reason in ("stop", "length")
    first = free.text[:1]
    assert first, "the model produced nothing to stop on"
    stopped = model.complete(["123+456="], 8, stop=[first])[0]
    assert stopped.text == "" and stopped.finish_reason == "stop"
    short = model.complete(["123+456="], 1)[0]
    assert len(short.token_ids) == 1
    assert short.finish_reason == ("stop" if short.token_ids[0] == model.eos_id else "length")


def test_runtime_refuses_what_it_cannot_run(exported, tmp_path):
    from export.runtime import OnnxCausalLM

    with pytest.raises(FileNotFoundError, match="not an exported variant"):
        OnnxCausalLM(tmp_path)
    model = OnnxCausalLM(run_dirs(exported["sweep"])[0] / "variants" / "onnx-fp32", threads=1)
    with pytest.raises(ValueError, match="empty prompt"):
        model.generate_ids([[]], 3)
    assert model.unknown_characters("12+3=") == ""
    assert model.unknown_characters("12€+3=x") == "€x"


def test_batch_one_steps_run_the_row_graph_and_answer_as_the_main_graph(exported):
    """A step of one row and one token runs the per-token int8 variant's single-row graph, every other shape the
    main graph; batch-1 answers are the main graph's token for token. Variants without one have none."""
    import numpy as np

    from export.runtime import OnnxCausalLM

    folder = run_dirs(exported["sweep"])[0] / "variants"
    model = OnnxCausalLM(folder / "ort-int8", threads=1)
    assert model.row_session is not None
    assert model.session_for(np.zeros((1, 1), np.int64)) is model.row_session
    assert model.session_for(np.zeros((1, 7), np.int64)) is model.session  # a prompt's prefill
    assert model.session_for(np.zeros((2, 1), np.int64)) is model.session  # a batch's step
    main_only = OnnxCausalLM(folder / "ort-int8", threads=1)
    main_only.row_session = None
    row, steps = model.row_session, []

    class Counted:  # the row graph's session, counting its runs
        def run(self, *args, **kwargs):
            steps.append(1)
            return row.run(*args, **kwargs)

    model.row_session = Counted()
    prompts = ["12+345=", "b8|17+3=", "999+999=", "+457|068=", "4+5="]
    for p in prompts:
        ids = model.encode([p])
        assert model.generate_ids(ids, 8, ignore_eos=True) == main_only.generate_ids(ids, 8, ignore_eos=True), p
    assert len(steps) == 7 * len(prompts)  # every step after the prefill
    assert OnnxCausalLM(folder / "onnx-fp32", threads=1).row_session is None
