"""Base models and tokenizers: the embedded GPT-NeoX shipped in models/, or any HF causal LM.

``load_base("embedded")`` reads models/embedded-base; anything else goes through
AutoModelForCausalLM / AutoTokenizer, so ``EleutherAI/pythia-70m`` (hub) and a local
``save_pretrained`` directory take the same path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tasks.formatting import DIGITS

REPO_ROOT = Path(__file__).resolve().parents[1]
EMBEDDED_BASE_DIR = REPO_ROOT / "models" / "embedded-base"
EMBEDDED = "embedded"

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"
# Every character the task writes, plus the space of the spaced digit format.
TASK_CHARS = DIGITS + "+-*=|b "


def build_char_tokenizer():
    """The embedded base's digit-level tokenizer: one token per character."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {PAD: 0, EOS: 1, UNK: 2}
    for ch in TASK_CHARS:
        vocab.setdefault(ch, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token=UNK,
                                   padding_side="left", model_input_names=["input_ids", "attention_mask"])


def embedded_model_config(vocab_size: int, hidden: int = 128, layers: int = 4, heads: int = 4,
                          ffn: int = 512, max_positions: int = 64, rotary_pct: float = 0.25):
    """A Pythia-family GPT-NeoX config: rotary position embeddings, parallel residual."""
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(
        vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=ffn, max_position_embeddings=max_positions, rotary_pct=rotary_pct,
        use_parallel_residual=True, tie_word_embeddings=False, bos_token_id=1, eos_token_id=1,
        pad_token_id=0, hidden_dropout=0.0, attention_dropout=0.0,
    )


def detect_digit_format(tokenizer) -> str:
    """``compact`` when the tokenizer already gives one token per digit, else ``spaced``.

    GPT-NeoX's BPE merges digit runs ("1234" -> a few tokens); with a space before each
    digit every " d" is its own token. Fails loudly when neither holds.
    """
    digits = "1234567890"
    if len(tokenizer.encode(digits, add_special_tokens=False)) == len(digits):
        return "compact"
    spaced = " ".join(digits)
    ids = tokenizer.encode(" " + spaced, add_special_tokens=False)
    if len(ids) == len(digits):
        return "spaced"
    raise ValueError(f"tokenizer {tokenizer.name_or_path!r} gives neither one token per digit "
                     f"compact ({digits!r}) nor spaced ({spaced!r})")


@dataclass
class Base:
    model: object  # a transformers PreTrainedModel (causal LM)
    tokenizer: object  # a PreTrainedTokenizerFast with pad and eos tokens, left padding
    digit_format: str  # "compact" or "spaced" (tasks.formatting)
    source: str  # what was asked for: "embedded", a hub id or a directory


def resolve_base_path(name_or_path: str) -> str:
    if name_or_path == EMBEDDED:
        if not (EMBEDDED_BASE_DIR / "model.safetensors").is_file():
            raise FileNotFoundError(
                f"the embedded base is missing at {EMBEDDED_BASE_DIR}; rebuild it with "
                "`python -m train pretrain --config train/configs/pretrain.yaml` (see models/README.md)")
        return str(EMBEDDED_BASE_DIR)
    return name_or_path


def check_base(name_or_path: str, timeout: float = 5.0) -> None:
    """Fail within seconds, before a sweep writes anything, when ``--base`` cannot be loaded.

    The embedded base and a local directory are checked on disk; a hub id passes when it is in
    the local Hugging Face cache (it then loads offline too), else after one request to the hub
    (no retries: transformers would retry for minutes and print a traceback per attempt).
    """
    if name_or_path == EMBEDDED:
        resolve_base_path(name_or_path)
        return
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"--base {path} has no config.json: not a Hugging Face model directory")
        return
    from huggingface_hub import constants, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(name_or_path, "config.json"), str):
        return
    advice = "pass a local model directory as --base, or set HF_HUB_OFFLINE=1 with the model in the local cache"
    if constants.HF_HUB_OFFLINE:
        raise ValueError(f"--base {name_or_path!r} is neither a local directory nor in the Hugging Face cache "
                         f"({constants.HF_HUB_CACHE}), and HF_HUB_OFFLINE is set: download it there first, or "
                         "pass a local model directory as --base")
    import requests

    url = f"{constants.ENDPOINT}/{name_or_path}/resolve/main/config.json"
    try:
        status = requests.head(url, timeout=timeout, allow_redirects=True).status_code
    except requests.RequestException as exc:
        raise ValueError(f"--base {name_or_path!r}: cannot reach the Hugging Face hub at {constants.ENDPOINT} "
                         f"({type(exc).__name__}); {advice}") from None
    if status >= 400:
        raise ValueError(f"--base {name_or_path!r} is neither a local directory nor a model the hub serves "
                         f"(HTTP {status} for its config.json)")


def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_base_path(name_or_path))
    if tok.eos_token is None:
        raise ValueError(f"tokenizer of {name_or_path!r} has no EOS token; answers could never stop")
    if tok.pad_token is None:  # Pythia ships none; padding is masked out, so EOS serves
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def load_base(name_or_path: str = EMBEDDED, dtype=None) -> Base:
    """Load a causal LM and its tokenizer the way every user of fracture does."""
    from transformers import AutoModelForCausalLM

    path = resolve_base_path(name_or_path)
    tok = load_tokenizer(name_or_path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype) if dtype else \
        AutoModelForCausalLM.from_pretrained(path)
    model.config.pad_token_id = tok.pad_token_id
    meta_path = Path(path) / "fracture.json"
    digit_format = json.loads(meta_path.read_text())["digit_format"] if meta_path.is_file() else \
        detect_digit_format(tok)
    return Base(model=model, tokenizer=tok, digit_format=digit_format, source=name_or_path)
