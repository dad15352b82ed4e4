"""Shared fixtures: tiny, locally built models with *different* tokenizers (offline, fast)."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from tests.stand_in import stand_in  # noqa: E402,F401  (the fixture, for every test folder)
from wsd.methods import compose  # noqa: E402,F401  (tests import it here)

REPO = Path(__file__).resolve().parents[1]

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Here is a short answer: first, read the question; second, think; third, write.",
    "Sure! The capital of France is Paris, and the capital of Italy is Rome.",
    "I cannot help with that request, but I can suggest a safer alternative.",
    "1. Preheat the oven. 2. Mix flour, sugar and eggs. 3. Bake for 20 minutes.",
    "User: What is two plus two? Assistant: Two plus two is four.",
]

PILOT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _tokenizer(corpus, vocab_size, specials, **tokens):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(corpus * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **tokens)


QUESTIONS = ["What is the capital of France?", "How do I bake a cake?", "Tell me a fact.",
             "Can you help me?", "What is two plus two?", "Write a sentence."]


def _train(model, tokenizer, texts: list[str], steps: int) -> None:
    """A few hundred steps of next-token training: random weights write byte soup that no
    base model is confident about, so no switch would ever happen mid-draft."""
    import torch

    batch = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


def _save(model, tokenizer, folder: Path) -> str:
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict:
    """{'pilot': folder, 'base': folder}: a Llama pilot with a ChatML template and a Gemma-3
    base, each with its own byte-level BPE vocabulary, briefly trained (fixed seed) on chats
    whose answers come from CORPUS: the base knows only some answers, so switches happen at
    varied points of the pilot's drafts."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    pilot_tok = _tokenizer(CORPUS, 300, ["<pad>", "<s>", "<|im_start|>", "<|im_end|>"],
                           bos_token="<s>", eos_token="<|im_end|>", pad_token="<pad>")
    pilot_tok.chat_template = PILOT_TEMPLATE
    pilot = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(pilot_tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2,
        bos_token_id=pilot_tok.bos_token_id, eos_token_id=pilot_tok.eos_token_id,
        pad_token_id=pilot_tok.pad_token_id,
    ))
    base_tok = _tokenizer(list(reversed(CORPUS)), 420, ["<pad>", "<eos>", "<bos>"],
                          bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")
    base = Gemma3ForCausalLM(Gemma3TextConfig(
        vocab_size=len(base_tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=256,
        bos_token_id=base_tok.bos_token_id,
        eos_token_id=base_tok.eos_token_id, pad_token_id=base_tok.pad_token_id,
    ))
    chats = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}]
             for q, a in zip(QUESTIONS, CORPUS)]
    _train(pilot, pilot_tok, [pilot_tok.apply_chat_template(m, tokenize=False) for m in chats], 150)
    _train(base, base_tok, [f"<bos>\n\n[User]\n{m[0]['content']}\n\n[Assistant]\n{m[1]['content']}"
                            for m in chats[::2]] + CORPUS[1::2], 150)
    return {"pilot": _save(pilot, pilot_tok, root / "pilot"), "base": _save(base, base_tok, root / "base")}


@pytest.fixture(scope="session")
def tiny_reward_model(tiny_models, tmp_path_factory):
    """A sequence-classification head (one label) on the tiny pilot's config and tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    config = AutoConfig.from_pretrained(tiny_models["pilot"], num_labels=1)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config)
    folder = tmp_path_factory.mktemp("reward")
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_models["pilot"]).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def placement() -> dict:
    """Where the engine tests put their models: the CPU in fp32 here; `tests/gpu/` overrides
    it to run the same tests on CUDA in fp32 and bf16."""
    return {"device": "cpu", "dtype": "float32"}


def tolerance(engine) -> float:
    """Relative tolerance between one computation in two shapes (batched or cached, and not):
    ~1e-6 apart in fp32; bf16 keeps 8 bits of mantissa, and its logits' errors of a few
    hundredths move probabilities by several percent."""
    import torch

    return 1e-4 if engine.model.dtype == torch.float32 else 0.1


def assert_same_answers(got: dict, want: dict, engine) -> None:
    """Two WSD runs' records by prompt id give the same answers: in fp32 the same switch and
    the same text. In bf16 a batched or cached continuation parts from a full forward's at
    near-ties (the top-2 logits closer than bf16 resolves), so there the switch and the kept
    draft must agree and the continuations may differ."""
    import torch

    if engine.model.dtype == torch.float32:
        assert {p: (r["keep_count"], r["response"]) for p, r in got.items()} == \
               {p: (r["keep_count"], r["response"]) for p, r in want.items()}
        return
    assert {p: (r["keep_count"], r["accepted_draft"]) for p, r in got.items()} == \
           {p: (r["keep_count"], r["accepted_draft"]) for p, r in want.items()}


@pytest.fixture(scope="session")
def tiny_pair(tiny_models, tmp_path_factory, placement):
    """(pilot, base) HF engines of `tiny_models`, placed by `placement`."""
    from wsd.backends.engines import load_engine
    from wsd.backends.models import ModelSpec

    cache = tmp_path_factory.mktemp("cache")
    return tuple(load_engine(ModelSpec.from_config({"name": role, "path": tiny_models[role], **placement}),
                             {"name": "hf"}, cache)
                 for role in ("pilot", "base"))


def tiny_overrides(tiny_models: dict, tmp_path: Path, *extra: str) -> list[str]:
    return [
        "pilot=custom", f"pilot.path={tiny_models['pilot']}", "pilot.name=tiny-pilot",
        "base=custom", f"base.path={tiny_models['base']}", "base.name=tiny-base",
        f"output_root={tmp_path / 'outputs'}", f"model_cache_dir={tmp_path / 'cache'}", "logger=none",
        "wsd.draft_max_tokens=12", "generation.max_new_tokens=20", *extra,
    ]


@pytest.fixture
def pairs(tmp_path):
    """Preference pairs in TRL's conversational format, with a `split` column (JSONL); the SFT
    completions are answers the tiny pilot has not learnt for these questions."""
    path = tmp_path / "pairs.jsonl"
    rows = [{"prompt": [{"role": "user", "content": q}], "chosen": [{"role": "assistant", "content": a}],
             "rejected": [{"role": "assistant", "content": CORPUS[(i + 2) % len(CORPUS)]}],
             "completion": [{"role": "assistant", "content": CORPUS[(i + 2) % len(CORPUS)]}],
             "split": "train" if i < 15 else "test"}
            for i, (q, a) in enumerate(zip(QUESTIONS * 3, CORPUS * 3))]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
