"""CARDS (Li et al., 2024, "Cascade Reward Sampling for Efficient Decoding-Time Alignment"):
the base samples the answer segment by segment; a segment ends where the base grows unsure
(the entropy of its next-token distribution reaches a threshold, after a few tokens) and is
kept when its reward clears a threshold that rises with the answer's length, else sampled
again; after `max_rejections` refusals the best candidate since the last kept segment is
kept. Settings are the CARDS authors' code's defaults.

The reward threshold after t answer tokens is min(r*, r0 + t (r* - r0) / L), where
r0 = (1 - alpha) r(prompt) + alpha r*, L the answer budget; a candidate is kept with
probability min(1, exp((r - threshold) / temperature)) ("soft", their default) or when
r >= threshold ("hard"). r* is on the reward model's own scale: 8.5 is the authors' value for
their Llama-7B reward model; `auto` takes it from the reward model's held-out rewards
(`wsd.backends.reward.reward_scale`) for one we trained.

One prompt at a time, the base's KV cache cut back to the kept answer at each refusal.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Optional

import torch

from wsd.backends.decoding import check_context, encode
from wsd.backends.engines import PrefixCachedLM
from wsd.backends.models import LoadedModel
from wsd.backends.reward import RewardModel, RewardSettings, reward_scale
from wsd.baselines.prompted import base_format_name, base_parts, check_prompt
from wsd.core.prompts import BaseFormat, cut_at_stop, stop_reason
from wsd.core.registration import Method, MethodEntry, decode_options
from wsd.core.schemas import MethodBlock, at_least, between
from wsd.core.store import config_key


@dataclass
class CARDSBlock(MethodBlock):
    name: str = "cards"
    entropy_threshold: float = 3.0
    min_segment_tokens: int = 4
    max_segment_tokens: int = 64
    reward_target: Any = "auto"  # a number, or auto: the reward model's own scale
    alpha: float = 0.5
    temperature: float = 0.7
    top_k: int = 40
    max_rejections: int = 20
    # soft: kept with probability min(1, exp((r - threshold) / temperature)); hard: r >= threshold
    acceptance: str = "soft"
    prompt: str = "base"  # how the base is prompted: base (zero-shot) or urial
    prompt_file: Optional[str] = None  # prompt=urial: a URIAL prefix file (null: ours)

    def validate(self, key: str = "method") -> None:
        for name in ("min_segment_tokens", "max_segment_tokens", "top_k"):
            at_least(f"{key}.{name}", getattr(self, name), 1)
        at_least(f"{key}.max_rejections", self.max_rejections, 0)
        if self.min_segment_tokens > self.max_segment_tokens:
            raise ValueError(f"{key}.min_segment_tokens must not exceed {key}.max_segment_tokens")
        at_least(f"{key}.entropy_threshold", self.entropy_threshold, 0, "a number")
        if self.temperature <= 0:
            raise ValueError(f"{key}.temperature must be a number > 0, got {self.temperature!r}")
        between(f"{key}.alpha", self.alpha, 0, 1)
        if self.acceptance not in ("soft", "hard"):
            raise ValueError(f"{key}.acceptance must be soft or hard, got {self.acceptance!r}")
        if self.reward_target != "auto" and (isinstance(self.reward_target, bool)
                                             or not isinstance(self.reward_target, (int, float))):
            raise ValueError(f"{key}.reward_target must be a number or auto, got {self.reward_target!r}")
        check_prompt(key, self.prompt)


@dataclass(frozen=True)
class CARDSSettings:
    reward_target: float  # r* (CARDSBlock's `auto` resolved to the reward model's scale)
    entropy_threshold: float = CARDSBlock.entropy_threshold  # tau_H, nats: a segment ends before a token this uncertain
    min_segment_tokens: int = CARDSBlock.min_segment_tokens
    max_segment_tokens: int = CARDSBlock.max_segment_tokens
    alpha: float = CARDSBlock.alpha  # where between r(prompt) and r* the threshold starts
    temperature: float = CARDSBlock.temperature  # sampling, and the soft acceptance's scale
    top_k: int = CARDSBlock.top_k
    max_rejections: int = CARDSBlock.max_rejections
    acceptance: str = CARDSBlock.acceptance  # soft | hard


class CARDS:
    def __init__(self, base: LoadedModel, reward: RewardModel, settings: CARDSSettings, fmt: BaseFormat, stops: list[str],
                 max_new_tokens: int, seed: int):
        self.base, self.reward, self.settings, self.fmt = base, reward, settings, fmt
        self.stops, self.max_new_tokens, self.seed = stops, max_new_tokens, seed
        self.lm = PrefixCachedLM(base)

    def check_fits(self, prompt_id, messages) -> None:
        check_context(self.base, prompt_id, len(encode(self.base.tokenizer, self.fmt.render(messages))),
                      self.max_new_tokens + self.settings.max_segment_tokens, "new + one segment")

    def generate_many(self, prompts):
        for prompt in prompts:
            yield prompt, self._answer(prompt)

    def threshold(self, r0: float, length: int) -> float:
        s = self.settings
        return min(s.reward_target, r0 + length * (s.reward_target - r0) / self.max_new_tokens)

    def _segment(self, prompt_ids: list[int], answer: list[int], rng: torch.Generator) -> tuple[list[int], str]:
        """Sample until the base is unsure of the next token (after `min_segment_tokens`),
        EOS, `max_segment_tokens`, or the answer's budget."""
        s, eos = self.settings, set(self.base.eos_token_ids)
        segment = []
        while len(segment) < s.max_segment_tokens and len(answer) + len(segment) < self.max_new_tokens:
            logits = self.lm.next_logits(prompt_ids + answer + segment)
            logp = torch.log_softmax(logits, dim=-1)
            entropy = float(-(logp.exp() * logp).sum())
            if len(segment) >= s.min_segment_tokens and entropy >= s.entropy_threshold:
                return segment, "uncertain"
            top = torch.topk(logits / s.temperature, min(s.top_k, logits.shape[-1]))
            token = int(top.indices[torch.multinomial(torch.softmax(top.values, -1), 1, generator=rng)])
            if token in eos:
                return segment, "eos"
            segment.append(token)
        return segment, "length"

    def _answer(self, prompt) -> dict:
        s, tok = self.settings, self.base.tokenizer
        began, reward_began = time.perf_counter(), self.reward.seconds
        rng = torch.Generator().manual_seed(int(config_key([self.seed, prompt.id]), 16) % 2**63)
        prompt_ids = encode(tok, self.fmt.render(prompt.messages))
        scorer = self.reward.extensions([prompt.messages])
        r0 = (1 - s.alpha) * scorer.score({0: [""]})[0][0] + s.alpha * s.reward_target
        answer, why, calls, segments, rejections, sampled = [], "length", 1, 0, 0, 0
        while len(answer) < self.max_new_tokens:
            refused, candidates = 0, []
            while True:
                segment, end = self._segment(prompt_ids, answer, rng)
                sampled += len(segment)
                reward = scorer.score({0: [tok.decode(answer + segment, skip_special_tokens=True)]})[0][0]
                calls += 1
                candidates.append((reward, segment, end))
                gap = reward - self.threshold(r0, len(answer) + len(segment))
                if s.acceptance == "hard":
                    kept = gap >= 0
                else:
                    kept = float(torch.rand((), generator=rng)) < math.exp(min(0.0, gap / s.temperature))
                if kept:
                    break
                if refused >= s.max_rejections:
                    reward, segment, end = max(candidates, key=lambda c: c[0])
                    break
                refused += 1
            rejections += refused
            segments += 1
            answer += segment
            text = tok.decode(answer, skip_special_tokens=True)
            if end == "eos" or (self.stops and cut_at_stop(text, self.stops)[1]):
                why = "eos" if end == "eos" else "stop_string"
                break
        text, cut = cut_at_stop(tok.decode(answer, skip_special_tokens=True), self.stops)
        return {
            "response": self.fmt.finish(text),
            "response_tokens": len(answer),
            "stop_reason": stop_reason(why, cut),
            "prompt_tokens": len(prompt_ids),
            "seconds": {"total": time.perf_counter() - began, "reward": self.reward.seconds - reward_began},
            "segments": segments,
            "rejections": rejections,
            "sampled_tokens": sampled,
            "reward_model_calls": calls,
            "reward_start": r0,
            "model": self.base.name,
            "reward_model": self.reward.name,
        }


def cards_settings(cfg: dict, reward: RewardSettings | None = None) -> CARDSSettings:
    decode_options(cfg)
    CARDSBlock.checked(cfg["method"])
    m = dict(cfg["method"])
    base_format_name(m)
    if m["reward_target"] == "auto":
        settings = reward or RewardSettings.from_config(cfg["reward_model"])
        settings.check()
        m["reward_target"] = reward_scale(settings.path)["target"]
    return CARDSSettings(**{k: m[k] for k in CARDSSettings.__dataclass_fields__})


def build_cards(cfg: dict, models: dict) -> Method:
    options, fmt, stops = base_parts(cfg, models["base"])
    settings = cards_settings(cfg, models["reward"].settings)
    return CARDS(models["base"], models["reward"], settings, fmt, stops, options.max_new_tokens, cfg["seed"])


# CARDS reads the base's whole next-token distribution (its entropy) at every step; vLLM
# returns the top few, so on backend=vllm it runs on HF
METHOD = MethodEntry("cards", ("base",), build_cards, cards_settings, reward=True, backends=("hf",), block=CARDSBlock,
                     label_keys=("reward_target",))
