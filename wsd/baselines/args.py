"""ARGS (Khanov et al., 2024, "Alignment as Reward-Guided Search"): at each step the base's
top-k next tokens are re-scored by log-probability + w x reward of the answer extended by the
token, and the best is taken (the greedy variant, the paper's default; k = 10, w = 1.5 as in
the authors' released configuration).

The authors feed the base's token ids to a reward model with the same tokenizer. Ours reads
text in its own chat template, so any reward model works beside any base; the k extensions of
a prefix, for every prompt of the batch, are scored in one reward-model forward from a KV
cache of the prefixes (`wsd.backends.reward.ExtensionScorer`). The base decodes the batch with one KV
cache.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

import torch

from wsd.backends.decoding import check_context, encode, left_pad, pad_id
from wsd.backends.models import LoadedModel
from wsd.backends.reward import RewardModel
from wsd.baselines.prompted import base_format_name, base_parts, check_prompt
from wsd.core.prompts import BaseFormat, cut_at_stop, stop_reason
from wsd.core.registration import Method, MethodEntry, greedy_options
from wsd.core.schemas import MethodBlock, at_least


@dataclass
class ARGSBlock(MethodBlock):
    name: str = "args"
    k: int = 10  # candidates per step (the base's top-k)
    weight: float = 1.5  # w: 0 is the base's greedy decoding
    prompt: str = "base"  # how the base is prompted: base (zero-shot) or urial
    prompt_file: Optional[str] = None  # prompt=urial: a URIAL prefix file (null: ours)

    def validate(self, key: str = "method") -> None:
        at_least(f"{key}.k", self.k, 1)
        at_least(f"{key}.weight", self.weight, 0, "a number")
        check_prompt(key, self.prompt)


@dataclass(frozen=True)
class ARGSSettings:
    k: int = ARGSBlock.k  # candidates per step (the base's top-k)
    weight: float = ARGSBlock.weight  # w: 0 is the base's greedy decoding


class BatchDecoder:
    """Token-by-token decoding of a left-padded batch with one KV cache (transformers): each
    row's top next tokens, the caller picks each row's token; rows that finish leave the
    batch (and the cache)."""

    def __init__(self, loaded: LoadedModel, prompts: list[list[int]]):
        self.loaded = loaded
        self.ids, self.mask = left_pad(prompts, pad_id(loaded), loaded.device)
        self.cache, self.feed = None, self.ids
        self.rows = list(range(len(prompts)))  # which prompt each batch row is

    @torch.inference_mode()
    def logprobs(self) -> torch.Tensor:
        positions = (self.mask.cumsum(-1) - 1).clamp(min=0)[:, -self.feed.shape[1] :]
        out = self.loaded.model(input_ids=self.feed, attention_mask=self.mask, position_ids=positions,
                                past_key_values=self.cache, use_cache=True, logits_to_keep=1)
        self.cache = out.past_key_values
        return torch.log_softmax(out.logits[:, -1].float(), dim=-1)

    def top(self, k: int) -> list[tuple[list[int], list[float]]]:
        best = self.logprobs().topk(k, dim=-1)
        return list(zip(best.indices.tolist(), best.values.tolist()))

    def advance(self, tokens: list[int], keep: list[int]) -> None:
        """Append each batch row's token, then keep only the batch rows `keep` (positions)."""
        self.feed = torch.tensor(tokens, device=self.loaded.device)[:, None]
        self.mask = torch.cat([self.mask, torch.ones_like(self.feed)], dim=1)
        if len(keep) < len(self.rows):
            index = torch.tensor(keep, device=self.loaded.device)
            self.feed, self.mask = self.feed[index], self.mask[index]
            self.cache.batch_select_indices(index)
            self.rows = [self.rows[b] for b in keep]


class EngineDecoder:
    """The same on any engine with `top_next_tokens` (vLLM: one step per live row and call,
    the grown prompt read from the prefix cache)."""

    def __init__(self, engine, prompts: list[list[int]]):
        self.engine, self.ids, self.rows = engine, [list(p) for p in prompts], list(range(len(prompts)))

    def top(self, k: int) -> list[tuple[list[int], list[float]]]:
        return self.engine.top_next_tokens([self.ids[r] for r in self.rows], k)

    def advance(self, tokens: list[int], keep: list[int]) -> None:
        for row, token in zip(self.rows, tokens):
            self.ids[row].append(token)
        self.rows = [self.rows[b] for b in keep]


def decoder_for(engine, prompts: list[list[int]]):
    return BatchDecoder(engine, prompts) if isinstance(engine, LoadedModel) else EngineDecoder(engine, prompts)


class ARGS:
    """The base decodes, the reward model steers: `generate_many` yields `(prompt, record)`
    in input order, batches of `options.batch_size`."""

    def __init__(self, base: LoadedModel, reward: RewardModel, settings: ARGSSettings, fmt: BaseFormat, stops: list[str],
                 max_new_tokens: int, batch_size: int):
        self.base, self.reward, self.settings, self.fmt = base, reward, settings, fmt
        self.stops, self.max_new_tokens, self.batch_size = stops, max_new_tokens, batch_size

    def check_fits(self, prompt_id, messages) -> None:
        check_context(self.base, prompt_id, len(encode(self.base.tokenizer, self.fmt.render(messages))),
                      self.max_new_tokens, "new")

    def generate_many(self, prompts):
        for start in range(0, len(prompts), self.batch_size):
            yield from self._batch(prompts[start : start + self.batch_size])

    def _batch(self, batch):
        tok, k, w = self.base.tokenizer, self.settings.k, float(self.settings.weight)
        eos = set(self.base.eos_token_ids)
        began, reward_began = time.perf_counter(), self.reward.seconds
        ids = [encode(tok, self.fmt.render(p.messages)) for p in batch]
        decoder = decoder_for(self.base, ids)
        scorer = self.reward.extensions([p.messages for p in batch])
        new, ended = [[] for _ in batch], [None] * len(batch)
        calls = [0] * len(batch)
        while decoder.rows:
            tops = dict(zip(decoder.rows, decoder.top(k)))
            if w > 0:  # every live row's k extensions in one reward-model forward
                rewards = scorer.score({row: [tok.decode(new[row] + [c], skip_special_tokens=True) for c in candidates]
                                        for row, (candidates, _) in tops.items()})
            tokens, keep = [], []
            for b, (row, (candidates, logp)) in enumerate(tops.items()):
                if w > 0:
                    calls[row] += 1
                    scores = [lp + w * r for lp, r in zip(logp, rewards[row])]
                    best = max(range(len(candidates)), key=scores.__getitem__)
                else:
                    best = 0
                token = candidates[best]
                tokens.append(token)
                if token in eos:
                    ended[row] = "eos"
                    continue
                new[row].append(token)
                if self.stops and cut_at_stop(tok.decode(new[row][-32:], skip_special_tokens=True), self.stops)[1]:
                    ended[row] = "stop_string"
                elif len(new[row]) >= self.max_new_tokens:
                    ended[row] = "length"
                else:
                    keep.append(b)
            if not keep:
                break
            decoder.advance(tokens, keep)
        share = (time.perf_counter() - began) / len(batch)
        reward_share = (self.reward.seconds - reward_began) / len(batch)
        for prompt, prompt_ids, answer, why, n_calls in zip(batch, ids, new, ended, calls):
            text, cut = cut_at_stop(tok.decode(answer, skip_special_tokens=True), self.stops)
            yield prompt, {
                "response": self.fmt.finish(text),
                "response_tokens": len(answer),
                "stop_reason": stop_reason(why, cut),
                "prompt_tokens": len(prompt_ids),
                "seconds": {"total": share, "reward": reward_share},
                "reward_model_calls": n_calls,
                "candidates_scored": n_calls * k,
                "model": self.base.name,
                "reward_model": self.reward.name,
                "batch_size": len(batch),
                "batch": batch[0].id,  # prompts of one batch share its time
            }


def args_settings(cfg: dict) -> ARGSSettings:
    greedy_options(cfg)
    m = ARGSBlock.checked(cfg["method"])
    base_format_name(cfg["method"])
    return ARGSSettings(k=m.k, weight=m.weight)


def build_args(cfg: dict, models: dict) -> Method:
    options, fmt, stops = base_parts(cfg, models["base"])
    return ARGS(models["base"], models["reward"], args_settings(cfg), fmt, stops, options.max_new_tokens,
                options.batch_size)


METHOD = MethodEntry("args", ("base",), build_args, args_settings, reward=True, block=ARGSBlock,
                     label_keys=("k", "weight"))
