"""Offline evaluation: one grading path for every backend, batched greedy decoding.

``evaluate_splits`` takes a *decoder* (prompts, max_new_tokens, batch_size -> texts), so
torch checkpoints (``torch_decoder``) and exported variants (``export.runtime``) are
graded by the same code at the same fixed batch size with left padding (docs/design.md, Pitfalls:
accuracy depends on batch size and padding). A torch batch of ``ONEDNN_MIN_ROWS`` rows or more runs its Linear
layers through oneDNN (``onednn_linears``). This module imports torch only inside the functions that need it,
so the ONNX side can use the grading path without it.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Mapping

from tasks.formatting import format_prompt
from tasks.grader import grade

# (formatted prompts, max_new_tokens, batch_size) -> decoded continuations, cut at EOS
Decoder = Callable[[list[str], int, int], list[str]]

# From this many rows a batch runs its Linear layers through oneDNN (``onednn_linears``); below it oneDNN's
# per-call cost outweighs its faster product (embedded base, one thread, 2026-12-07: generate 0.80x as fast
# at batch 1, 0.96x at 4, 1.07x at 16, 1.18x at 32, 1.56x at 400)
ONEDNN_MIN_ROWS = 16


def greedy_decode(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int,
                  onednn: bool | None = None) -> list[str]:
    """Greedy continuations of ``prompts`` (already formatted) with transformers ``generate``.

    ``onednn``: run the Linear layers through oneDNN with their weights packed once (``onednn_linears``);
    ``None`` does so for batches of at least ``ONEDNN_MIN_ROWS`` rows of an fp32 model on the CPU where this
    torch can (``onednn_supported``)."""
    import torch

    rows = min(batch_size, len(prompts))  # the largest batch this call decodes
    if onednn is None:
        onednn = uses_onednn(model, rows)
    outputs: list[str] = []
    tokenizer.padding_side = "left"
    model.eval()
    packed = onednn_linears(model, max(rows, 1)) if onednn else contextlib.nullcontext()
    with torch.inference_mode(), packed:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start:start + batch_size]
            enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False,
                            return_token_type_ids=False)
            enc = {k: v.to(model.device) for k, v in enc.items()}
            gen = model.generate(
                **enc, max_new_tokens=max_new_tokens, do_sample=False, use_cache=True,
                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
            )
            new = gen[:, enc["input_ids"].shape[1]:]
            outputs.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
    return outputs


@functools.cache  # a probe runs a product: once per process
def _onednn_probe() -> str | None:
    """``None`` when this torch runs a packed oneDNN linear (and it matches ``F.linear``), else why not."""
    import torch
    import torch.nn.functional as F

    if not torch.backends.mkldnn.is_available():
        return "this torch is built without oneDNN (mkldnn)"
    if not torch.backends.mkldnn.enabled:
        return "oneDNN is switched off (torch.backends.mkldnn.enabled is False)"
    try:
        x = torch.randn(24, 40, generator=torch.Generator().manual_seed(0))
        w, b = x[:8].clone(), x[0, :8].clone()
        y = torch.ops.mkldnn._linear_pointwise(x, torch.ops.mkldnn._reorder_linear_weight(w, 24), b, "none", [], "")
    except (AttributeError, RuntimeError) as exc:
        return f"this torch cannot run oneDNN's packed linear ({type(exc).__name__}: {exc})"
    if not torch.allclose(y, F.linear(x, w, b), rtol=1e-4, atol=1e-4):
        return "oneDNN's packed linear disagrees with torch.nn.functional.linear here"
    return None


def uses_onednn(model, rows: int) -> bool:
    """Whether ``greedy_decode`` left to choose (``onednn=None``) runs batches of ``rows`` rows of ``model``
    through ``onednn_linears``."""
    return rows >= ONEDNN_MIN_ROWS and onednn_supported(model) is None


def onednn_supported(model) -> str | None:
    """``None`` when ``onednn_linears`` can run ``model``: fp32 weights on the CPU and a torch that runs oneDNN's
    packed linear; else why not."""
    import torch

    params = list(model.parameters())
    if any(p.device.type != "cpu" for p in params):
        return "the model is not on the CPU"
    if any(p.dtype != torch.float32 for p in params):
        return "the model is not fp32"
    return _onednn_probe()


@contextlib.contextmanager
def onednn_linears(model, rows: int) -> Iterator[None]:
    """Within the block, every plain ``nn.Linear`` of ``model`` (not a subclass, which may compute otherwise)
    computes through oneDNN with its weight packed once into oneDNN's layout for about ``rows`` rows (the
    ops torch's inductor uses for oneDNN linears on the CPU), instead of ``F.linear``, i.e. MKL's sgemm with
    the weight as stored; in a GPT-NeoX MLP with exact GELU, the GELU is computed in the up-projection's
    product (oneDNN's post-op) instead of in a pass of its own.

    On this machine (AMD EPYC with AVX-512, one core) MKL's sgemm ran the evaluation's products at 82-92
    GFLOP/s and oneDNN at 210-250, and torch's GELU took about a nanosecond an element. The sums run in
    another order and oneDNN has its own erf, so logits move by ~1e-5: the demo's 192,000 answers are the
    same (README "The sweep"). For inference only (no autograd); on exit each layer's forward is what it
    was before (an enclosing block's too). Not for a model another thread uses meanwhile."""
    import torch

    why = onednn_supported(model)
    if why:
        raise RuntimeError(f"oneDNN linears: {why}")
    packed = {m: (torch.ops.mkldnn._reorder_linear_weight(m.weight.detach(), rows),
                  None if m.bias is None else m.bias.detach())
              for m in model.modules() if type(m) is torch.nn.Linear}
    forwards = {m: functools.partial(_packed_linear, weight, bias, "none") for m, (weight, bias) in packed.items()}
    for m in model.modules():
        if _exact_gelu_mlp(m):
            up_with_gelu = functools.partial(_packed_linear, *packed[m.dense_h_to_4h], "gelu")
            forwards[m] = functools.partial(_mlp_forward, up_with_gelu, m.dense_4h_to_h)
    before = {m: vars(m).get("forward") for m in forwards}  # None: the class's own forward
    for m, forward in forwards.items():
        m.forward = forward
    try:
        yield
    finally:
        for m, forward in before.items():
            if forward is None:
                del m.forward
            else:
                m.forward = forward


def _exact_gelu_mlp(module) -> bool:
    """A GPT-NeoX MLP (up-projection, activation, down-projection) whose activation is exact (erf) GELU."""
    import torch
    from transformers.activations import GELUActivation
    from transformers.models.gpt_neox.modeling_gpt_neox import GPTNeoXMLP

    return (type(module) is GPTNeoXMLP and type(module.act) is GELUActivation
            and module.act.act is torch.nn.functional.gelu
            and type(module.dense_h_to_4h) is type(module.dense_4h_to_h) is torch.nn.Linear)


def _packed_linear(weight, bias, post_op: str, x):
    import torch

    # post_op "none", or "gelu" with oneDNN's erf algorithm ("none"; "tanh" would be the approximation)
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, post_op, [], "none" if post_op == "gelu" else "")


def _mlp_forward(up_with_gelu, down, x):
    return down(up_with_gelu(x))


def torch_decoder(model, tokenizer) -> Decoder:
    return functools.partial(greedy_decode, model, tokenizer)


def max_answer_tokens(splits: Mapping[str, list[dict]]) -> int:
    longest = max(len(it["answer"]) for items in splits.values() for it in items)
    # One token per digit in either format, plus EOS and one spare so overlong answers show.
    return longest + 2


def grade_split(predictions: list[str], items: list[dict]) -> dict:
    """``{n, correct, digit_correct, digit_total}`` of one split's predictions."""
    grades = [grade(p, it["answer"]) for p, it in zip(predictions, items, strict=True)]
    return {
        "n": len(items),
        "correct": sum(g.exact for g in grades),
        "digit_correct": sum(g.digit_correct for g in grades),
        "digit_total": sum(g.digit_total for g in grades),
    }


def evaluate_splits(decode: Decoder, digit_format: str, splits: Mapping[str, list[dict]],
                    batch_size: int = 256, max_new_tokens: int | None = None,
                    on_split: Callable[[str], None] | None = None,
                    decoded: Mapping[str, list[str]] | None = None) -> dict[str, dict]:
    """``{split: {n, correct, digit_correct, digit_total}}`` for each split's items.

    ``decoded`` holds continuations already produced by this very decoder for a split's items at
    this batch size and ``max_answer_tokens(splits)`` (the export's parity check decodes the id
    split that way): they are graded instead of being decoded again.
    """
    max_new = max_new_tokens or max_answer_tokens(splits)
    results = {}
    for name, items in splits.items():
        known = (decoded or {}).get(name)
        if known is not None and len(known) != len(items):
            raise ValueError(f"{len(known)} decoded continuations for the {len(items)} items of {name}")
        prompts = [format_prompt(it["prompt"], digit_format) for it in items]
        results[name] = grade_split(known if known is not None else decode(prompts, max_new, batch_size), items)
        if on_split:
            on_split(name)
    return results
