import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def write_tiny_sweep(tmp_path: Path, base: str = "embedded", **overrides) -> list[str]:
    """CLI args for a 2-run, 6-step sweep writing under tmp_path."""
    args = [sys.executable, "-m", "train", "sweep", "--config", str(REPO / "train/configs/tiny.yaml"),
            f"--base={base}", f"--out_root={tmp_path / 'runs'}", f"--data_root={tmp_path / 'data'}",
            f"--task_config={REPO / 'tasks/configs/default.yaml'}"]
    return args + [f"--{k}={v}" for k, v in overrides.items()]


@pytest.fixture(scope="session")
def pythia_like_dir(tmp_path_factory) -> Path:
    """A local causal-LM directory standing in for EleutherAI/pythia-70m (the hub is unreachable here).

    pythia-70m's configuration values (6 layers, hidden 512, 8 heads, ffn 2048, rotary_pct
    0.25, parallel residual), random init, a reduced vocabulary, and a byte-level BPE
    tokenizer trained locally so that, like GPT-NeoX's, it merges digit runs.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("pythia-like")
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    corpus = [f"{a}{b} + {b}{a} = {a * 37 + b} in {a * 1009 % 97} {a} {b} the sum of numbers"
              for a in range(200) for b in range(10)]
    tok.train_from_iterator(corpus, trainer)
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                     unk_token="<|endoftext|>")
    hf_tok.save_pretrained(out)
    pythia_70m = dict(hidden_size=512, num_hidden_layers=6, num_attention_heads=8, intermediate_size=2048,
                      rotary_pct=0.25, rotary_emb_base=10000, max_position_embeddings=2048,
                      use_parallel_residual=True, tie_word_embeddings=False, layer_norm_eps=1e-5,
                      hidden_act="gelu", initializer_range=0.02)
    cfg = GPTNeoXConfig(vocab_size=len(hf_tok), bos_token_id=hf_tok.eos_token_id,
                        eos_token_id=hf_tok.eos_token_id, **pythia_70m)
    GPTNeoXForCausalLM(cfg).save_pretrained(out)
    (out / "README.txt").write_text(json.dumps({"made_by": "tests/train/conftest.py", **pythia_70m}))
    return out
