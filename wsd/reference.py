"""WSD, reference path: the authors' three passes, one prompt at a time, clear not clever.

1. draft  - the pilot answers with its chat template, greedy, up to `draft_max_tokens`;
2. check  - the draft *text* is appended to the base prompt, re-tokenized by the *base*
            tokenizer and scored by one teacher-forced base forward pass;
3. target - the base model continues greedily from prompt + the kept draft token ids.

The fast engine must reproduce this path's `keep_count` and `response` exactly.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

from wsd.models import LoadedModel
from wsd.prompts import (
    BASE_STOP_STRINGS,
    DRAFT_STOP_STRINGS,
    Message,
    base_prompt,
    cut_at_stop,
    pilot_prompt,
    stop_strings_with_eos,
)
from wsd.switch import first_switch, keep_count, validate_switch_params


@dataclass(frozen=True)
class WSDSettings:
    window: int = 6
    threshold: float = 0.8
    draft_max_tokens: int = 512
    target_max_tokens: int = 2048

    def __post_init__(self):
        validate_switch_params(self.window, self.threshold)
        for name in ("draft_max_tokens", "target_max_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def base_budget(target_max_tokens: int, kept: int) -> int:
    """New-token budget of the base model: (target - kept) rounded up to a multiple of 50."""
    return max(1, math.ceil((target_max_tokens - kept) / 50) * 50)


def _eos_ids(loaded: LoadedModel) -> list[int]:
    ids = {loaded.tokenizer.eos_token_id}
    configured = loaded.model.generation_config.eos_token_id
    ids.update(configured if isinstance(configured, list) else [configured])
    return sorted(i for i in ids if i is not None)


class StopOnStrings(StoppingCriteria):
    """Ends each sequence once the text of its new tokens contains a stop string.

    transformers' own `stop_strings` rebuilds tables over the whole vocabulary on every
    `generate` call: about 8.5 s per call for Gemma's 262k vocabulary on this CPU, more than
    the decoding itself. Decoding only the last few new tokens each step costs microseconds.
    """

    def __init__(self, tokenizer, stop_strings, prompt_length: int):
        self.tokenizer, self.stop_strings, self.prompt_length = tokenizer, list(stop_strings), prompt_length
        # every token decodes to at least one character, so a stop string of n characters
        # that the last step completed lies within the last n new tokens
        self.tail = max(len(s) for s in self.stop_strings) + 1

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        tails = input_ids[:, self.prompt_length :][:, -self.tail :].tolist()
        texts = self.tokenizer.batch_decode(tails, skip_special_tokens=False)
        return torch.tensor([any(s in t for s in self.stop_strings) for t in texts], device=input_ids.device)


@dataclass
class Generated:
    ids: list[int]  # new tokens, a terminating EOS excluded
    stop_reason: str  # "eos" | "stop_string" | "length"


@torch.inference_mode()
def greedy_generate(
    loaded: LoadedModel, prompt_ids: list[int], max_new_tokens: int, stop_strings
) -> Generated:
    """Greedy continuation of one sequence that halts at EOS or any of `stop_strings`."""
    tokenizer = loaded.tokenizer
    eos_ids = _eos_ids(loaded)
    config = GenerationConfig(
        do_sample=False,
        max_new_tokens=max_new_tokens,
        eos_token_id=eos_ids,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0],
    )
    input_ids = torch.tensor([prompt_ids], device=loaded.device)
    output = loaded.model.generate(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        generation_config=config,
        stopping_criteria=StoppingCriteriaList([StopOnStrings(tokenizer, stop_strings, len(prompt_ids))]),
    )
    new = output[0, len(prompt_ids) :].tolist()
    if new and new[-1] in eos_ids:
        return Generated(new[:-1], "eos")
    text = tokenizer.decode(new, skip_special_tokens=False)
    if len(new) < max_new_tokens or cut_at_stop(text, stop_strings)[1]:
        return Generated(new, "stop_string")
    return Generated(new, "length")


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of `text`, no automatic special tokens (BOS is written into the text)."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@dataclass
class Draft:
    text: str
    num_tokens: int
    stop_reason: str


def draft(pilot: LoadedModel, messages: list[Message], max_tokens: int) -> Draft:
    """Pass 1: the pilot's own answer, special tokens stripped, cut at draft stop strings."""
    ids = encode(pilot.tokenizer, pilot_prompt(pilot.tokenizer, messages))
    stops = stop_strings_with_eos(DRAFT_STOP_STRINGS, pilot.tokenizer)
    out = greedy_generate(pilot, ids, max_tokens, stops)
    text, _ = cut_at_stop(pilot.tokenizer.decode(out.ids, skip_special_tokens=True), stops)
    return Draft(text=text, num_tokens=len(out.ids), stop_reason=out.stop_reason)


@dataclass
class Check:
    prompt_ids: list[int]  # base prompt, base tokenization
    draft_ids: list[int]  # the draft, base tokenization
    token_probs: list[float]  # P_base(draft_ids[i] | prompt, draft_ids[:i])


@torch.inference_mode()
def check(base: LoadedModel, messages: list[Message], draft_text: str) -> Check:
    """Pass 2: re-tokenize prompt + draft with the base tokenizer and score every draft token.

    As the authors do: the draft is stripped, the joined text right-stripped, and the prompt
    is taken as the first len(tokenize(prompt)) tokens of the joined text's tokens.
    """
    prompt_text = base_prompt(messages, base.tokenizer.bos_token)
    prompt_ids = encode(base.tokenizer, prompt_text)
    stripped = draft_text.strip()
    if not stripped:
        return Check(prompt_ids=prompt_ids, draft_ids=[], token_probs=[])
    joined_ids = encode(base.tokenizer, (prompt_text + stripped).rstrip())
    n_prompt = len(prompt_ids)
    prompt_ids, draft_ids = joined_ids[:n_prompt], joined_ids[n_prompt:]
    if not draft_ids:
        return Check(prompt_ids=prompt_ids, draft_ids=[], token_probs=[])
    # Only the positions that predict draft tokens: the prompt's logits are never needed.
    logits = base.model(torch.tensor([joined_ids], device=base.device),
                        logits_to_keep=len(draft_ids) + 1).logits[0]
    logprobs = torch.log_softmax(logits[:-1].float(), dim=-1)
    picked = logprobs.gather(1, torch.tensor(draft_ids, device=logprobs.device)[:, None])[:, 0]
    return Check(prompt_ids=prompt_ids, draft_ids=draft_ids, token_probs=picked.exp().tolist())


@dataclass
class Continuation:
    ids: list[int]
    text: str  # the continuation alone, cut at the first stop string
    response: str  # kept draft + continuation, decoded together by the base tokenizer, cut
    stop_reason: str


def continue_from(
    base: LoadedModel, prompt_ids: list[int], kept_ids: list[int], target_max_tokens: int
) -> Continuation:
    """Pass 3: the base model continues from the kept draft *ids*; the final text is cut."""
    stops = stop_strings_with_eos(BASE_STOP_STRINGS, base.tokenizer)
    out = greedy_generate(base, prompt_ids + kept_ids, base_budget(target_max_tokens, len(kept_ids)), stops)
    decode = base.tokenizer.decode
    response, was_cut = cut_at_stop(decode(kept_ids + out.ids, skip_special_tokens=True), stops)
    text, _ = cut_at_stop(decode(out.ids, skip_special_tokens=True), stops)
    reason = "stop_string" if was_cut and out.stop_reason != "eos" else out.stop_reason
    return Continuation(ids=out.ids, text=text, response=response, stop_reason=reason)


class ReferenceWSD:
    """The three passes for one prompt at a time; yields one record per prompt."""

    def __init__(self, pilot: LoadedModel, base: LoadedModel, settings: WSDSettings):
        self.pilot, self.base, self.settings = pilot, base, settings

    def check_fits(self, prompt_id: str, messages: list[Message]) -> None:
        """Reject a prompt that cannot fit a model's context with the budgets: never truncate
        silently. The base needs prompt + kept draft + budget <= prompt + target + 49."""
        s = self.settings
        pilot_len = len(encode(self.pilot.tokenizer, pilot_prompt(self.pilot.tokenizer, messages)))
        base_len = len(encode(self.base.tokenizer, base_prompt(messages, self.base.tokenizer.bos_token)))
        for loaded, need, what in (
            (self.pilot, pilot_len + s.draft_max_tokens, f"{pilot_len} prompt + {s.draft_max_tokens} draft"),
            (self.base, base_len + s.target_max_tokens + 49, f"{base_len} prompt + {s.target_max_tokens} target + 49"),
        ):
            limit = getattr(loaded.model.config, "max_position_embeddings", None)
            if limit is not None and need > limit:
                raise ValueError(
                    f"prompt {prompt_id!r} is too long for {loaded.name}: needs {what} = {need} "
                    f"tokens, the model's context is {limit}; shorten it or lower the budgets"
                )

    def generate(self, messages: list[Message]) -> dict:
        s = self.settings
        t0 = time.perf_counter()
        d = draft(self.pilot, messages, s.draft_max_tokens)
        t1 = time.perf_counter()
        c = check(self.base, messages, d.text)
        switch_at = first_switch(c.token_probs, s.window, s.threshold)
        k = keep_count(c.token_probs, s.window, s.threshold)
        t2 = time.perf_counter()
        kept = c.draft_ids[:k]
        cont = continue_from(self.base, c.prompt_ids, kept, s.target_max_tokens)
        t3 = time.perf_counter()
        decode = self.base.tokenizer.decode
        return {
            "draft": d.text,
            "draft_tokens": d.num_tokens,
            "draft_stop_reason": d.stop_reason,
            "base_draft_tokens": len(c.draft_ids),
            "base_token_probs": c.token_probs,
            "keep_count": k,
            "switched": switch_at is not None,
            "accepted_draft": decode(kept, skip_special_tokens=True),
            "continuation": cont.text,
            "continuation_tokens": len(cont.ids),
            "response": cont.response,
            "stop_reason": cont.stop_reason,
            "seconds": {"draft": t1 - t0, "check": t2 - t1, "target": t3 - t2, "total": t3 - t0},
            "pilot": self.pilot.name,
            "base": self.base.name,
        }
