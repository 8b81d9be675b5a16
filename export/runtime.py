"""The ONNX Runtime decode loop fracture uses wherever a variant runs.

Batched greedy decoding with the KV cache (the graph is optimum's
``text-generation-with-past`` export), left padding, stop on EOS or stop strings.
Offline evaluation of variants, the parity checks, the benchmarks and the server all
call this one loop, so a served answer is the answer that was evaluated offline.

Imports numpy, onnxruntime and tokenizers only: an edge box has neither torch nor
transformers, and a test checks that importing this module loads neither.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from export.manifest import ROW_MODEL_FILE

MODEL_FILE = "model.onnx"
# (ROW_MODEL_FILE, from export.manifest: a second graph of the same weights for a step of one row and one token,
# where it is exactly the main graph's arithmetic in fewer nodes; the per-token int8 variants carry it)

# ONNX Runtime fusions left out of the row graph's session: they would fold its quantization, product and scales
# into one kernel of its own arithmetic (export.quantize.check_row_graph holds the row graph to the main graph's
# bits), and on pythia-70m's size the fused step was slower (1.24 against 0.93 ms, 2026-12-07)
ROW_DISABLED_FUSIONS = "DynamicQuantizeMatMulFusion;MatMulIntegerToFloatFusion"
PAST_PREFIX = "past_key_values."


@dataclass(frozen=True)
class Completion:
    text: str  # decoded continuation, special tokens dropped, cut before any stop string
    token_ids: tuple[int, ...]  # generated ids up to and including EOS when it came
    prompt_tokens: int  # unpadded prompt length
    finish_reason: str  # "stop" (EOS or a stop string) or "length" (max_new_tokens reached)


def left_pad(ids: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask) of a batch padded on the left, as transformers pads for generation."""
    width = max(len(x) for x in ids)
    input_ids = np.full((len(ids), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(ids), width), dtype=np.int64)
    for row, x in enumerate(ids):
        if x:
            input_ids[row, width - len(x):] = x
            mask[row, width - len(x):] = 1
    return input_ids, mask


def position_ids(mask: np.ndarray) -> np.ndarray:
    """transformers' rule for left padding: count real tokens, pads get position 1."""
    pos = np.cumsum(mask, axis=1) - 1
    pos[mask == 0] = 1
    return pos


def default_providers() -> list[str]:
    """CUDA when onnxruntime-gpu sees a GPU, else CPU."""
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def _special_ids(model_dir: Path, tokenizer: Tokenizer) -> tuple[int, int]:
    """(eos_id, pad_id) from the exported config and tokenizer files (transformers' layout)."""
    config = json.loads((model_dir / "config.json").read_text()) if (model_dir / "config.json").is_file() else {}
    tok_cfg = (json.loads((model_dir / "tokenizer_config.json").read_text())
               if (model_dir / "tokenizer_config.json").is_file() else {})

    def token_id(entry) -> int | None:
        if isinstance(entry, dict):
            entry = entry.get("content")
        return tokenizer.token_to_id(entry) if isinstance(entry, str) else None

    eos = config.get("eos_token_id")
    if isinstance(eos, list):
        eos = eos[0]
    if eos is None:
        eos = token_id(tok_cfg.get("eos_token"))
    if eos is None:
        raise ValueError(f"{model_dir}: no eos_token_id in config.json or tokenizer_config.json")
    pad = token_id(tok_cfg.get("pad_token"))
    if pad is None:
        pad = config.get("pad_token_id")
    return int(eos), int(eos if pad is None else pad)


def _unk_id(model_dir: Path, tokenizer: Tokenizer) -> int | None:
    """The unknown token's id, if the tokenizer has one (byte-level BPEs encode everything)."""
    path = model_dir / "tokenizer_config.json"
    entry = json.loads(path.read_text()).get("unk_token") if path.is_file() else None
    if isinstance(entry, dict):
        entry = entry.get("content")
    for name in (entry, "<unk>", "[UNK]"):
        if isinstance(name, str) and tokenizer.token_to_id(name) is not None:
            return tokenizer.token_to_id(name)
    return None


def _session_options(threads: int | None, disabled_fusions: str = "", stop_spinning: bool = False
                     ) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if disabled_fusions:
        opts.add_session_config_entry("optimization.disable_specified_optimizers", disabled_fusions)
    if stop_spinning:
        opts.add_session_config_entry("session.force_spinning_stop", "1")
    return opts


class OnnxCausalLM:
    """One exported causal LM: an InferenceSession plus its tokenizer."""

    def __init__(self, model_dir: str | Path, threads: int | None = None, providers: list | None = None,
                 model_bytes: bytes | None = None, row_model_bytes: bytes | None = None, row_graph: bool = True):
        """``model_bytes``: the graph as already read (and checked) by the caller, so the session runs exactly
        those bytes whatever happens to the file afterwards; ``row_model_bytes`` likewise for the variant's
        single-row graph (``ROW_MODEL_FILE``), which a caller passing ``model_bytes`` must pass too for it to be
        used (it is never read unchecked beside a checked graph). ``row_graph=False`` leaves the row graph out
        (one session: the weights are held once, batch-1 steps run the main graph, with the same answers)."""
        self.model_dir = Path(model_dir)
        path = self.model_dir / MODEL_FILE
        if model_bytes is None and not path.is_file():
            raise FileNotFoundError(f"{path} does not exist (not an exported variant?)")
        row_path = self.model_dir / ROW_MODEL_FILE
        if not row_graph:
            row_model_bytes = None
        elif row_model_bytes is None and model_bytes is None and row_path.is_file():
            row_model_bytes = row_path.read_bytes()
        providers = providers or default_providers()
        # with a row graph, the main graph's threads stop spinning when its run ends: left spinning after a
        # batch-1 prefill they took the cores from the row graph's steps (1.65 against 1.33 ms a step of
        # ort-int8-all at pythia-70m's size, 9 alternated rounds, 2026-12-07; at batch 64 the same 12.6 ms)
        self.session = ort.InferenceSession(model_bytes if model_bytes is not None else str(path),
                                            _session_options(threads, stop_spinning=row_model_bytes is not None),
                                            providers=providers)
        # a step of one row and one token (batch-1 decoding) runs the row graph: the same weights and the same
        # arithmetic as the main graph's for that shape (checked bit for bit when the variant is exported)
        self.row_session = None if row_model_bytes is None else ort.InferenceSession(
            row_model_bytes, _session_options(threads, disabled_fusions=ROW_DISABLED_FUSIONS), providers=providers)
        tokenizer_file = self.model_dir / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise FileNotFoundError(f"{tokenizer_file} is missing (the variant's tokenizer)")
        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.eos_id, self.pad_id = _special_ids(self.model_dir, self.tokenizer)
        self._unk_id = _unk_id(self.model_dir, self.tokenizer)

        inputs = {i.name: i for i in self.session.get_inputs()}
        self._past_names = [n for n in inputs if n.startswith(PAST_PREFIX)]
        if not self._past_names:
            raise ValueError(f"{path} has no past_key_values inputs: export with text-generation-with-past "
                             "(without the KV cache, generation is quadratic)")
        first = inputs[self._past_names[0]]
        _, self._heads, _, self._head_dim = first.shape
        self._past_dtype = np.float16 if first.type == "tensor(float16)" else np.float32
        self._has_position_ids = "position_ids" in inputs
        self._present_names = ["present" + n[len(PAST_PREFIX) - 1:] for n in self._past_names]
        self._output_names = ["logits", *self._present_names]

    # -- tokens ---------------------------------------------------------------------
    def encode(self, prompts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(prompts, add_special_tokens=False)]

    def decode(self, ids) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def encode_checked(self, prompt: str) -> tuple[list[int], str]:
        """(token ids, characters the tokenizer could only map to its unknown token)."""
        enc = self.tokenizer.encode(prompt, add_special_tokens=False)
        if self._unk_id is None or self._unk_id not in enc.ids:
            return enc.ids, ""
        bad = [prompt[s:e] for tid, (s, e) in zip(enc.ids, enc.offsets) if tid == self._unk_id]
        return enc.ids, "".join(dict.fromkeys("".join(bad)))

    def unknown_characters(self, prompt: str) -> str:
        return self.encode_checked(prompt)[1]

    # -- forward passes -------------------------------------------------------------
    def session_for(self, input_ids: np.ndarray) -> ort.InferenceSession:
        """The session that runs a forward pass over ``input_ids``: the row graph's for one row of one token
        where the variant has one, else the main graph's."""
        if self.row_session is not None and input_ids.shape == (1, 1):
            return self.row_session
        return self.session

    def _feed(self, input_ids: np.ndarray, mask: np.ndarray, past: list[np.ndarray]) -> dict:
        feed = {"input_ids": input_ids, "attention_mask": mask}
        if self._has_position_ids:
            feed["position_ids"] = position_ids(mask)[:, -input_ids.shape[1]:]
        feed.update(zip(self._past_names, past))
        return feed

    def _empty_past(self, batch: int) -> list[np.ndarray]:
        return [np.zeros((batch, self._heads, 0, self._head_dim), self._past_dtype) for _ in self._past_names]

    def left_pad(self, ids: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        return left_pad(ids, self.pad_id)

    def logits(self, ids: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        """Full-sequence logits of a left-padded batch and its attention mask (parity checks)."""
        input_ids, mask = self.left_pad(ids)
        out = self.session.run(["logits"], self._feed(input_ids, mask, self._empty_past(len(ids))))
        return out[0], mask

    def generate_ids(self, ids: list[list[int]], max_new_tokens: int, stop: list[str] | None = None,
                     ignore_eos: bool = False, clock: list[float] | None = None) -> list[list[int]]:
        """Greedy continuations (token ids) of one batch; a row ends at EOS or a stop string
        (``ignore_eos``: at neither, always ``max_new_tokens``, as benchmarks decode). ``clock``, when
        given, gets ``time.perf_counter()`` as each token is chosen: benchmarks time the decode steps
        apart from the prompt's prefill."""
        if any(not x for x in ids):
            raise ValueError("empty prompt: nothing to condition on")
        batch = len(ids)
        input_ids, mask = self.left_pad(ids)
        past = self._empty_past(batch)
        generated = np.full((batch, max_new_tokens), self.pad_id, dtype=np.int64)
        done = np.zeros(batch, dtype=bool)
        steps = 0
        for step in range(max_new_tokens):
            logits, *past = self.session_for(input_ids).run(self._output_names, self._feed(input_ids, mask, past))
            nxt = logits[:, -1, :].argmax(axis=-1)
            nxt = np.where(done, self.pad_id, nxt)  # finished rows only carry padding
            generated[:, step] = nxt
            steps = step + 1
            if clock is not None:
                clock.append(time.perf_counter())
            if not ignore_eos:
                done |= nxt == self.eos_id
            if stop:
                for row in np.flatnonzero(~done):
                    text = self.decode(generated[row, :steps])
                    done[row] = any(s in text for s in stop)
            if done.all():
                break
            input_ids = nxt[:, None].astype(np.int64)
            mask = np.concatenate([mask, np.ones((batch, 1), dtype=np.int64)], axis=1)
        out = []
        for row in range(batch):
            seq = generated[row, :steps].tolist()
            if self.eos_id in seq and not ignore_eos:
                seq = seq[:seq.index(self.eos_id) + 1]
            out.append(seq)
        return out

    def complete(self, prompts: list[str], max_new_tokens: int, stop: list[str] | None = None,
                 batch_size: int | None = None) -> list[Completion]:
        """Completions of ``prompts`` in order, decoded ``batch_size`` at a time."""
        encoded = self.encode(prompts)
        size = batch_size or max(len(prompts), 1)
        results: list[Completion] = []
        for start in range(0, len(prompts), size):
            chunk = encoded[start:start + size]
            results += [self.finish(len(p), gen, stop) for p, gen in
                        zip(chunk, self.generate_ids(chunk, max_new_tokens, stop))]
        return results

    def finish(self, prompt_tokens: int, generated: list[int], stop: list[str] | None = None) -> Completion:
        """A completion from generated ids: decoded, cut before the first stop string."""
        text = self.decode(generated)
        stopped = bool(generated) and generated[-1] == self.eos_id
        for s in stop or ():
            if s in text:
                text, stopped = text[:text.index(s)], True
        return Completion(text=text, token_ids=tuple(generated), prompt_tokens=prompt_tokens,
                          finish_reason="stop" if stopped else "length")

    def decoder(self):
        """This model as a ``train.evaluate`` decoder: (prompts, max_new_tokens, batch_size) -> texts."""
        return lambda prompts, max_new, batch_size: [c.text for c in self.complete(prompts, max_new,
                                                                                    batch_size=batch_size)]
