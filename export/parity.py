"""Does an export compute what it claims? Logits and greedy outputs against a reference.

Each variant declares a ``Tolerance`` (docs/design.md, "Every export checks itself": looser for
low bits, as TGI's quantized comparators are): the largest absolute logit difference
on a left-padded dev batch (real positions only) and the share of the whole dev split
whose greedy output must equal the reference's. ``None`` for the logit bound means the
difference is measured and recorded but not enforced (a 2-bit model is expected to
differ; its graph and its effective bits are what is checked).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Tolerance:
    max_logit_diff: float | None  # bound on max |logit - reference logit|; None = recorded only
    min_agreement: float  # share of dev items whose greedy output equals the reference's
    reference: str = "checkpoint"  # "checkpoint" (the fp32 torch model) or "simulated" (its rounded copy)


def torch_logits(model, ids: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Full-sequence logits of a left-padded batch from a torch model (padded and positioned
    exactly as export.runtime feeds the ONNX graph), with its mask."""
    import torch

    from export.runtime import left_pad, position_ids

    input_ids, mask = left_pad(ids, pad_id)
    device = next(model.parameters()).device
    with torch.inference_mode():
        out = model(input_ids=torch.from_numpy(input_ids).to(device), attention_mask=torch.from_numpy(mask).to(device),
                    position_ids=torch.from_numpy(position_ids(mask)).to(device), use_cache=False)
    return out.logits.float().cpu().numpy(), mask


def max_logit_diff(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    real = mask.astype(bool)
    return float(np.abs(a[real].astype(np.float64) - b[real].astype(np.float64)).max())


def agreement(outputs: list[str], reference: list[str]) -> float:
    if len(outputs) != len(reference) or not reference:
        raise ValueError("parity needs the same, non-empty list of items on both sides")
    return sum(a == b for a, b in zip(outputs, reference)) / len(reference)


def judge(tolerance: Tolerance, logit_diff: float, agree: float, items: int, batch: int) -> dict:
    """The parity record that goes into manifest.json; ``passed`` is False when a bound is broken."""
    failures = []
    if tolerance.max_logit_diff is not None and not logit_diff <= tolerance.max_logit_diff:
        failures.append(f"max |logit diff| {logit_diff:.3g} > {tolerance.max_logit_diff:g}")
    if agree < tolerance.min_agreement:
        failures.append(f"greedy agreement {agree:.4f} < {tolerance.min_agreement:g}")
    return {"tolerance": asdict(tolerance), "max_abs_logit_diff": logit_diff, "logit_batch": batch,
            "greedy_agreement": agree, "greedy_items": items, "passed": not failures, "failures": failures}
