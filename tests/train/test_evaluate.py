"""Batched greedy evaluation of torch checkpoints: oneDNN's packed linears against torch's own."""

import random

import pytest

from tasks.formatting import format_prompt
from train.base import EMBEDDED, load_base
from train.evaluate import ONEDNN_MIN_ROWS, greedy_decode, onednn_linears, onednn_supported


@pytest.fixture(scope="module")
def base():
    return load_base(EMBEDDED)


def _prompts(digit_format: str, n: int = 48) -> list[str]:
    """Sums and products of 1 to 5 digits: prompts of several lengths, so the batch is left padded."""
    rng = random.Random(0)
    items = []
    for _ in range(n):
        a, b = rng.randrange(10 ** rng.randint(1, 5)), rng.randrange(10 ** rng.randint(1, 5))
        items.append(f"{a}{rng.choice('+*')}{b}=")
    return [format_prompt(p, digit_format) for p in items]


def _needs_onednn(model) -> None:
    why = onednn_supported(model)
    if why:
        pytest.skip(why)


def test_onednn_linears_give_the_answers_and_logits_of_torchs_own(base):
    import torch

    _needs_onednn(base.model)
    prompts = _prompts(base.digit_format)
    tok = base.tokenizer
    assert len({len(tok(p)["input_ids"]) for p in prompts}) > 3  # padded rows are covered
    plain = greedy_decode(base.model, tok, prompts, 8, len(prompts), onednn=False)
    packed = greedy_decode(base.model, tok, prompts, 8, len(prompts), onednn=True)
    assert packed == plain
    assert len(set(plain)) > 5  # answers that differ from prompt to prompt, not one constant

    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False, return_token_type_ids=False)
    with torch.inference_mode():
        ref = base.model(**enc).logits
        with onednn_linears(base.model, len(prompts)):
            ours = base.model(**enc).logits
    real = enc["attention_mask"].bool()
    assert (ours - ref)[real].abs().max().item() <= 1e-4


def test_onednn_linears_restore_every_layer_even_after_an_error(base):
    """Every Linear is packed, every MLP's GELU fused into its up-projection; all of it undone on exit."""
    import torch
    from transformers.models.gpt_neox.modeling_gpt_neox import GPTNeoXMLP

    import train.evaluate as evaluate

    _needs_onednn(base.model)
    layers = [m for m in base.model.modules() if isinstance(m, torch.nn.Linear | GPTNeoXMLP)]
    assert sum(isinstance(m, GPTNeoXMLP) for m in layers) == base.model.config.num_hidden_layers
    with pytest.raises(KeyError), onednn_linears(base.model, 32):
        assert all("forward" in vars(m) for m in layers)
        assert all(vars(m)["forward"].func is evaluate._mlp_forward for m in layers if isinstance(m, GPTNeoXMLP))
        outer = [vars(m)["forward"] for m in layers]
        with onednn_linears(base.model, 64):  # a nested block gives the enclosing one's layers back
            assert all(vars(m)["forward"] is not f for m, f in zip(layers, outer))
        assert all(vars(m)["forward"] is f for m, f in zip(layers, outer))
        raise KeyError("boom")
    assert not any("forward" in vars(m) for m in layers)


def test_a_model_onednn_cannot_run_is_refused_by_name_and_decoded_by_torch():
    import torch
    from transformers import GPTNeoXForCausalLM

    from train.base import build_char_tokenizer, embedded_model_config

    tok = build_char_tokenizer()
    model = GPTNeoXForCausalLM(embedded_model_config(len(tok), hidden=32, layers=1, heads=2, ffn=64)).to(torch.float64)
    assert onednn_supported(model) == "the model is not fp32"
    with pytest.raises(RuntimeError, match="not fp32"), onednn_linears(model, 32):
        pass
    prompts = _prompts("compact", ONEDNN_MIN_ROWS)
    assert len(greedy_decode(model, tok, prompts, 3, ONEDNN_MIN_ROWS)) == ONEDNN_MIN_ROWS  # falls back by itself


def test_only_batches_of_at_least_onednn_min_rows_use_onednn(base, monkeypatch):
    import train.evaluate as evaluate

    _needs_onednn(base.model)
    sizes = []
    real = evaluate.onednn_linears

    def spy(model, rows):
        sizes.append(rows)
        return real(model, rows)

    monkeypatch.setattr(evaluate, "onednn_linears", spy)
    prompts = _prompts(base.digit_format, ONEDNN_MIN_ROWS)
    greedy_decode(base.model, base.tokenizer, prompts, 2, ONEDNN_MIN_ROWS - 1)
    greedy_decode(base.model, base.tokenizer, prompts, 2, ONEDNN_MIN_ROWS, onednn=False)
    assert sizes == []
    greedy_decode(base.model, base.tokenizer, prompts, 2, ONEDNN_MIN_ROWS)
    assert sizes == [ONEDNN_MIN_ROWS]
