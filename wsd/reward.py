"""A reward model: a Hugging Face sequence classifier with one output, reading a conversation
in its own chat template. The reward-model judge scores finished answers with it; ARGS, CARDS
and best-of-N steer or pick with it, mostly on answers that are still growing, so it also
scores many extensions of one prefix in one forward from a KV cache of that prefix.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from wsd.models import ModelSpec, check_available
from wsd.prompts import Message


@dataclass(frozen=True)
class RewardSettings:
    """A `conf/reward_model/*.yaml` entry."""

    path: str
    name: str = ""
    dtype: str = "float32"
    device: str = "auto"  # auto: the GPU when there is one
    max_length: int = 2048  # tokens it reads; longer inputs lose the prompt's start
    batch_size: int = 8
    proxy: bool = True  # false only for the reward model a paper's table used

    @classmethod
    def from_config(cls, cfg) -> RewardSettings:
        cfg = dict(cfg)
        unknown = set(cfg) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown reward_model setting(s) {sorted(unknown)}")
        settings = cls(**cfg)
        for key in ("max_length", "batch_size"):
            value = getattr(settings, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"reward_model.{key} must be an integer >= 1, got {value!r}")
        return settings

    def check(self) -> None:
        """Fail before any decoding when the model cannot be found (a trained one not yet
        trained gets the command that trains it)."""
        try:
            check_available(ModelSpec(name=self.name or self.path, path=self.path, dtype=self.dtype))
        except FileNotFoundError as error:
            hint = ""
            if "reward_models" in Path(self.path).parts:
                hint = " (train it first: python -m pipelines.train_reward with the same experiment)"
            raise FileNotFoundError(f"reward model: {error}{hint}") from None


SCALE_FILE = "reward_scale.json"


def write_reward_scale(folder: Path, chosen: list[float], rejected: list[float]) -> dict:
    """What rewards look like on this model's own scale, from held-out pairs: CARDS's
    `reward_target: auto` is the 90th percentile of the preferred answers' rewards (a reward
    good answers reach), since a threshold such as CARDS's 8.5 means nothing on another
    model's scale."""
    import json

    import numpy as np

    def stats(values):
        return {"mean": float(np.mean(values)), "std": float(np.std(values)), "p10": float(np.quantile(values, 0.1)),
                "p50": float(np.quantile(values, 0.5)), "p90": float(np.quantile(values, 0.9)), "n": len(values)}

    scale = {"chosen": stats(chosen), "rejected": stats(rejected)}
    scale["target"] = scale["chosen"]["p90"]
    (Path(folder) / SCALE_FILE).write_text(json.dumps(scale, indent=1))
    return scale


def reward_scale(path: str) -> dict:
    import json

    file = Path(os.path.expanduser(path)) / SCALE_FILE
    if not file.is_file():
        raise ValueError(f"reward model {path!r} has no {SCALE_FILE} (pipelines.train_reward writes it from its "
                         "held-out pairs), so `reward_target: auto` has no scale; set method.reward_target to a "
                         "reward on this model's scale")
    return json.loads(file.read_text())


class RewardModel:
    """Rewards of (conversation, response) pairs, batched; counts its forwards and their time
    so a method's records can say what the reward model cost."""

    def __init__(self, settings: RewardSettings, loaded: tuple | None = None):
        """Loads `settings.path`, or wraps `loaded` = (tokenizer, model) already in memory."""
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from wsd.models import resolve_device

        self.settings = settings
        if loaded is None:
            path = os.path.expanduser(settings.path)
            dtype = "auto" if settings.dtype == "auto" else getattr(torch, settings.dtype)
            loaded = (AutoTokenizer.from_pretrained(path),
                      AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype))
        self.tokenizer, self.model = loaded
        self.model = self.model.to(resolve_device(settings.device)).eval()
        if self.model.config.num_labels != 1:
            raise ValueError(f"reward model {settings.path!r} has {self.model.config.num_labels} labels; "
                             "a reward model has one scalar output")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.truncation_side = "left"  # over-long inputs lose the prompt's start, not the answer
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.templated = bool(getattr(self.tokenizer, "chat_template", None))  # the template writes BOS
        # a decoder with a `score` head over every position: extensions reuse a prefix's cache
        self.cacheable = hasattr(self.model, "score") and not self.model.config.is_encoder_decoder
        self.forwards, self.texts, self.seconds = 0, 0, 0.0

    @property
    def name(self) -> str:
        return self.settings.name or self.settings.path

    def text(self, messages: list[Message], response: str) -> str:
        conversation = list(messages) + [{"role": "assistant", "content": response}]
        if self.templated:
            return self.tokenizer.apply_chat_template(conversation, tokenize=False)
        tags = {"user": "Human", "assistant": "Assistant", "system": "System"}
        return "".join(f"\n\n{tags[m['role']]}: {m['content']}" for m in conversation)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=not self.templated)["input_ids"]

    def rewards(self, texts: list[str]) -> list[float]:
        out, size = [], self.settings.batch_size
        began = time.perf_counter()
        with torch.inference_mode():
            for start in range(0, len(texts), size):
                batch = self.tokenizer(texts[start : start + size], return_tensors="pt", padding=True,
                                       truncation=True, max_length=self.settings.max_length,
                                       add_special_tokens=not self.templated).to(self.model.device)
                out += self.model(**batch).logits[:, 0].float().tolist()
                self.forwards += 1
        self.texts += len(texts)
        self.seconds += time.perf_counter() - began
        return out

    def score_answers(self, messages: list[Message], responses: list[str]) -> list[float]:
        return self.rewards([self.text(messages, r) for r in responses])

    def extensions(self, messages: list[Message]) -> ExtensionScorer:
        return ExtensionScorer(self, messages)


_POOLED: dict[RewardSettings, RewardModel] = {}


def pooled_reward_model(settings: RewardSettings) -> RewardModel:
    """One reward model kept across the jobs of a multirun (ARGS, CARDS and best-of-N in one
    grid load it once); another one replaces it."""
    if settings not in _POOLED:
        _POOLED.clear()
        _POOLED[settings] = RewardModel(settings)
    return _POOLED[settings]


class ExtensionScorer:
    """Rewards of one prompt's answer prefix extended by each of several candidate texts, in
    one forward: the reward model's KV cache holds the longest token prefix the candidates
    share (grown as the answer grows, cut back where the re-tokenized text changed), and the
    candidates' tails are fed side by side as one sequence, each attending to the cached
    prefix and to its own tokens only, the reward read at each tail's last token. Their
    tails leave the cache afterwards, so it is never copied per candidate. A reward model
    without such a head (an encoder) scores the full texts instead."""

    def __init__(self, reward: RewardModel, messages: list[Message]):
        self.reward, self.messages = reward, messages
        self.ids: list[int] = []  # tokens the cache holds
        self.cache = None

    def score(self, prefix: str, candidates: list[str]) -> list[float]:
        texts = [self.reward.text(self.messages, prefix + c) for c in candidates]
        rm = self.reward
        ids = [rm.encode(t) for t in texts]
        if not rm.cacheable or max(map(len, ids)) > rm.settings.max_length:
            return rm.rewards(texts)
        began = time.perf_counter()
        kept = 0  # what the cache holds that every candidate starts with
        while kept < len(self.ids) and all(len(i) > kept + 1 and i[kept] == self.ids[kept] for i in ids):
            kept += 1
        if self.cache is None or not self._crop(kept):
            self.cache, self.ids, kept = None, [], 0
        shared = kept  # then what the candidates share beyond it (every candidate keeps a token of its own)
        while all(len(i) > shared + 1 for i in ids) and len({i[shared] for i in ids}) == 1:
            shared += 1
        backbone = getattr(rm.model, rm.model.base_model_prefix)
        device = rm.model.device
        # one sequence after the cache: the shared tokens it lacks (the answer grew), then the
        # tails side by side; a tail sees the cache, the shared tokens and its own tokens
        grown, tails = ids[0][kept:shared], [i[shared:] for i in ids]
        starts = [len(grown) + sum(map(len, tails[:n])) for n in range(len(tails))]
        width = len(grown) + sum(map(len, tails))
        allowed = torch.zeros(width, kept + width, dtype=torch.bool, device=device)
        allowed[:, :kept] = True
        allowed[:, kept:] = torch.ones(width, width, dtype=torch.bool, device=device).tril()
        for start, tail in zip(starts, tails):
            allowed[start : start + len(tail), kept + len(grown) : kept + start] = False  # not the other tails
        mask = torch.zeros(allowed.shape, dtype=rm.model.dtype, device=device)
        mask.masked_fill_(~allowed, torch.finfo(rm.model.dtype).min)
        positions = list(range(kept, shared)) + [shared + j for tail in tails for j in range(len(tail))]
        with torch.inference_mode():
            out = backbone(input_ids=torch.tensor([grown + [t for tail in tails for t in tail]], device=device),
                           attention_mask=mask[None, None], position_ids=torch.tensor([positions], device=device),
                           past_key_values=self.cache, use_cache=True)
            self.cache = out.past_key_values
            cut_cache(self.cache, shared)  # the tails leave: the next call starts from the shared prefix
            self.ids = ids[0][:shared]
            last = torch.tensor([start + len(tail) - 1 for start, tail in zip(starts, tails)], device=device)
            rewards = rm.model.score(out.last_hidden_state[0, last])[:, 0].float().tolist()
        rm.forwards += 1
        rm.texts += len(texts)
        rm.seconds += time.perf_counter() - began
        return rewards

    def _crop(self, length: int) -> bool:
        if length == len(self.ids):
            return True
        try:
            cut_cache(self.cache, length)
        except (RuntimeError, ValueError):  # a sliding-window layer past its window cannot roll back
            return False
        self.ids = self.ids[:length]
        return True


def cut_cache(cache, length: int) -> None:
    """Keep the first `length` positions (transformers takes the count to remove)."""
    excess = cache.get_seq_length() - length
    if excess > 0:
        cache.crop(-excess)
