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

from wsd.backends.models import ModelSpec, check_available
from wsd.core.prompts import Message
from wsd.core.schemas import RewardModelJudgeBlock


@dataclass(frozen=True)
class RewardSettings:
    """A `conf/reward_model/*.yaml` entry."""

    path: str
    name: str = ""
    dtype: str = "float32"
    device: str = RewardModelJudgeBlock.device  # auto: the GPU when there is one
    max_length: int = RewardModelJudgeBlock.max_length  # tokens it reads; longer inputs lose the prompt's start
    batch_size: int = RewardModelJudgeBlock.batch_size
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

        from wsd.backends.models import resolve_device

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
        # a decoder with a `score` head over every position, full attention in every layer:
        # extensions reuse their prefix's cache (ExtensionScorer)
        config = self.model.config
        types = getattr(config, "layer_types", None)
        full_attention = set(types) == {"full_attention"} if types else not getattr(config, "sliding_window", None)
        self.cacheable = hasattr(self.model, "score") and not config.is_encoder_decoder and full_attention
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

    def extensions(self, conversations: list[list[Message]]) -> ExtensionScorer:
        return ExtensionScorer(self, conversations)


def pair_rewards(reward: RewardModel, pairs) -> tuple[list[float], list[float]]:
    """The rewards of each preference pair's chosen and rejected answers (TRL's conversational
    or plain format)."""
    def as_chat(prompt, answer) -> tuple[list[dict], str]:
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        return messages, answer if isinstance(answer, str) else answer[-1]["content"]

    def side(key: str) -> list[float]:
        return reward.rewards([reward.text(*as_chat(r["prompt"], r[key])) for r in pairs])

    return side("chosen"), side("rejected")


def pair_accuracy(chosen: list[float], rejected: list[float]) -> dict:
    """How often the chosen answer has the higher reward, and the mean margin."""
    return {"accuracy": sum(c > r for c, r in zip(chosen, rejected)) / len(chosen),
            "margin": sum(c - r for c, r in zip(chosen, rejected)) / len(chosen)}


class ExtensionScorer:
    """Rewards of answers that grow a little at a time, for a batch of conversations, in one
    reward-model forward per call. One KV cache holds, for each conversation, the longest
    token prefix its candidates share; a call feeds every conversation's new shared tokens
    (the answer grew) and its candidates' tails side by side, each tail attending to its own
    conversation's cached prefix and to its own tokens only, the reward read at each tail's
    last token. The tails leave the cache afterwards, so it is never copied per candidate.

    A cache row's positions need not be contiguous: where re-tokenizing the grown text
    changed a held token, the row's positions from there on stop counting (a mask says which
    count) and the new tokens are appended; RoPE positions follow the tokens, not the slots.
    A reward model this cannot serve (an encoder, sliding-window or recurrent layers) scores
    the full texts instead, batched."""

    def __init__(self, reward: RewardModel, conversations: list[list[Message]]):
        self.reward, self.conversations = reward, conversations
        self.rows: list[int] = []  # the conversation of each cache row
        self.ids: list[list[int]] = []  # the tokens each cache row holds, in order
        self.valid = None  # [rows, slots] bool, on the CPU: the slots holding each row's tokens
        self.cache = None

    def score(self, answers: dict[int, list[str]]) -> dict[int, list[float]]:
        """{conversation index: candidate answers} -> {index: their rewards}. A conversation a
        call leaves out leaves the cache; one new to it starts the cache over."""
        rm = self.reward
        texts = {c: [rm.text(self.conversations[c], a) for a in candidates] for c, candidates in answers.items()}
        ids = {c: [rm.encode(t) for t in ts] for c, ts in texts.items()}
        cached = {c: i for c, i in ids.items() if rm.cacheable and max(map(len, i)) <= rm.settings.max_length}
        rewards = self._from_cache(cached) if cached else {}
        full = [c for c in answers if c not in cached]
        flat = iter(rm.rewards([t for c in full for t in texts[c]]) if full else [])
        rewards.update({c: [next(flat) for _ in texts[c]] for c in full})
        return {c: rewards[c] for c in answers}

    def _from_cache(self, ids: dict[int, list[list[int]]]) -> dict[int, list[float]]:
        rm, began = self.reward, time.perf_counter()
        device = rm.model.device
        self._keep_rows(list(ids))
        plans = []  # per cache row: kept, shared, grown tokens, tails
        for b, c in enumerate(self.rows):
            candidates, held = ids[c], self.ids[b]
            kept = 0  # what the row holds that every candidate starts with (each keeps a token of its own)
            while kept < len(held) and all(len(i) > kept + 1 and i[kept] == held[kept] for i in candidates):
                kept += 1
            if kept < len(held):  # the re-tokenized text differs from here: those slots stop counting
                self.valid[b, self.valid[b].nonzero()[kept:, 0]] = False
            shared = kept  # then what the candidates share beyond it
            while all(len(i) > shared + 1 for i in candidates) and len({i[shared] for i in candidates}) == 1:
                shared += 1
            plans.append((kept, shared, candidates[0][kept:shared], [i[shared:] for i in candidates]))
        slots = self.valid.shape[1]
        grow = max(len(grown) for _, _, grown, _ in plans)
        width = grow + max(sum(map(len, tails)) for *_, tails in plans)
        # each row's block: its grown tokens right-aligned in the first `grow` slots, then its tails
        tokens = torch.full((len(plans), width), rm.tokenizer.pad_token_id, dtype=torch.long)
        positions = torch.zeros(len(plans), width, dtype=torch.long)
        allowed = torch.zeros(len(plans), width, slots + width, dtype=torch.bool)
        allowed[:, :, slots:] = torch.eye(width, dtype=torch.bool)  # a padding slot sees itself
        tail_ends = []
        for b, (kept, shared, grown, tails) in enumerate(plans):
            first = grow - len(grown)
            tokens[b, first:grow] = torch.tensor(grown, dtype=torch.long)
            positions[b, first:grow] = torch.arange(kept, shared)
            allowed[b, first:, :slots] = self.valid[b]  # grown tokens and tails see the row's cached prefix
            allowed[b, first:grow, slots + first : slots + grow] = torch.ones(len(grown), len(grown)).tril().bool()
            allowed[b, grow:, slots + first : slots + grow] = True  # tails see all grown tokens
            start, ends = grow, []
            for tail in tails:
                end = start + len(tail)
                tokens[b, start:end] = torch.tensor(tail, dtype=torch.long)
                positions[b, start:end] = torch.arange(shared, shared + len(tail))
                allowed[b, start:end, slots + start : slots + end] = torch.ones(len(tail), len(tail)).tril().bool()
                ends.append(end - 1)
                start = end
            tail_ends.append(ends)
        mask = torch.zeros(allowed.shape, dtype=rm.model.dtype)
        mask.masked_fill_(~allowed, torch.finfo(rm.model.dtype).min)
        backbone = getattr(rm.model, rm.model.base_model_prefix)
        with torch.inference_mode():
            out = backbone(input_ids=tokens.to(device), attention_mask=mask[:, None].to(device),
                           position_ids=positions.to(device), past_key_values=self.cache, use_cache=True)
            self.cache = out.past_key_values
            cut_cache(self.cache, slots + grow)  # the tails leave: the next call starts from the shared prefixes
            rows = torch.tensor([b for b, ends in enumerate(tail_ends) for _ in ends], device=device)
            last = torch.tensor([e for ends in tail_ends for e in ends], device=device)
            flat = iter(rm.model.score(out.last_hidden_state[rows, last])[:, 0].float().tolist())
        grown_valid = torch.zeros(len(plans), grow, dtype=torch.bool)
        for b, (kept, shared, grown, _) in enumerate(plans):
            grown_valid[b, grow - len(grown) :] = True
            self.ids[b] = ids[self.rows[b]][0][:shared]
        self.valid = torch.cat([self.valid, grown_valid], dim=1)
        rm.forwards += 1
        rm.texts += sum(len(i) for i in ids.values())
        rm.seconds += time.perf_counter() - began
        return {c: [next(flat) for _ in ids[c]] for c in self.rows}

    def _keep_rows(self, conversations: list[int]) -> None:
        if self.cache is not None and not set(conversations) <= set(self.rows):
            self.cache = None
        if self.cache is None:
            self.rows, self.ids = list(conversations), [[] for _ in conversations]
            self.valid = torch.zeros(len(conversations), 0, dtype=torch.bool)
        elif len(conversations) < len(self.rows):
            wanted = set(conversations)
            keep = [b for b, c in enumerate(self.rows) if c in wanted]
            self.cache.batch_select_indices(torch.tensor(keep, device=self.reward.model.device))
            self.valid = self.valid[keep]
            self.rows, self.ids = [self.rows[b] for b in keep], [self.ids[b] for b in keep]


def cut_cache(cache, length: int) -> None:
    """Keep the first `length` positions (transformers takes the count to remove)."""
    excess = cache.get_seq_length() - length
    if excess > 0:
        cache.crop(-excess)
