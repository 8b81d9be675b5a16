"""Task items -> token ids for causal-LM training, and the padding collator."""

from __future__ import annotations

from tasks.formatting import format_answer, format_prompt


def encode_items(items: list[dict], tokenizer, digit_format: str) -> list[dict]:
    """Prompt and answer tokenized apart (as at inference) and joined; loss on the answer + EOS."""
    prompts = [format_prompt(it["prompt"], digit_format) for it in items]
    answers = [format_answer(it["answer"], digit_format) for it in items]
    p_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    a_ids = tokenizer(answers, add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    out = []
    for p, a in zip(p_ids, a_ids):
        ids = p + a + [eos]
        out.append({"input_ids": ids, "labels": [-100] * len(p) + a + [eos]})
    return out


class PadCollator:
    """Right-pads a batch for training (evaluation pads left, see train.evaluate)."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, batch: list[dict]) -> dict:
        import torch

        width = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, b in enumerate(batch):
            n = len(b["input_ids"])
            ids[i, :n] = torch.tensor(b["input_ids"])
            labels[i, :n] = torch.tensor(b["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}
