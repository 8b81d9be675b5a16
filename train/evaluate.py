"""Offline evaluation: one grading path for every backend, batched greedy decoding.

``evaluate_splits`` takes a *decoder* (prompts, max_new_tokens, batch_size -> texts), so
torch checkpoints (``torch_decoder``) and exported variants (``export.runtime``) are
graded by the same code at the same fixed batch size with left padding (docs/design.md, Pitfalls:
accuracy depends on batch size and padding). This module imports torch only inside
``greedy_decode``, so the ONNX side can use the grading path without it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial

from tasks.formatting import format_prompt
from tasks.grader import grade

# (formatted prompts, max_new_tokens, batch_size) -> decoded continuations, cut at EOS
Decoder = Callable[[list[str], int, int], list[str]]


def greedy_decode(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy continuations of ``prompts`` (already formatted) with transformers ``generate``."""
    import torch

    outputs: list[str] = []
    tokenizer.padding_side = "left"
    model.eval()
    with torch.inference_mode():
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


def torch_decoder(model, tokenizer) -> Decoder:
    return partial(greedy_decode, model, tokenizer)


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
