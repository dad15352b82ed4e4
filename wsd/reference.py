"""WSD, reference path: the authors' three passes, one prompt at a time, clear not clever.

1. draft  - the pilot answers with its chat template, greedy, up to `draft_max_tokens`;
2. check  - the draft *text* is appended to the base prompt, re-tokenized by the *base*
            tokenizer and scored by one teacher-forced base forward pass;
3. target - the base model continues greedily from prompt + the kept draft token ids.

The fast engine (`wsd.fast`) must reproduce this path's `keep_count` and `response` exactly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from transformers import StoppingCriteriaList

from wsd.decoding import (
    Continuation,
    Draft,
    Generated,
    StopOnStrings,
    WSDSettings,
    base_texts,
    check_fits,
    encode,
    eos_ids,
    final_joined_ids,
    greedy_config,
    make_continuation,
    make_draft,
    make_record,
    trim_row,
)
from wsd.models import LoadedModel
from wsd.prompts import Message, pilot_prompt
from wsd.switch import first_switch, keep_count


@torch.inference_mode()
def greedy_generate(loaded: LoadedModel, prompt_ids: list[int], max_new_tokens: int, stop_strings,
                    fixed_length: bool = False) -> Generated:
    """Greedy continuation of one sequence that halts at EOS or any of `stop_strings`; a budget
    of 0 writes nothing (as in `chunked_greedy`)."""
    if max_new_tokens <= 0:
        return Generated([], "length")
    input_ids = torch.tensor([prompt_ids], device=loaded.device)
    stop = StopOnStrings(loaded.tokenizer, stop_strings, len(prompt_ids))
    output = loaded.model.generate(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        generation_config=greedy_config(loaded, max_new_tokens, fixed_length),
        stopping_criteria=StoppingCriteriaList([stop] if stop_strings else []),
    )
    new = output[0, len(prompt_ids) :].tolist()
    return trim_row(new, [] if fixed_length else eos_ids(loaded), stop.hit_after.get(0), max_new_tokens)


def draft(pilot: LoadedModel, messages: list[Message], settings: WSDSettings) -> Draft:
    """Pass 1: the pilot's own answer, special tokens stripped, cut at draft stop strings."""
    ids = encode(pilot.tokenizer, pilot_prompt(pilot.tokenizer, messages))
    stops = settings.draft_stops(pilot)
    out = greedy_generate(pilot, ids, settings.draft_max_tokens, stops, settings.fixed_length)
    return make_draft(pilot, out, stops)


@dataclass
class Check:
    prompt_ids: list[int]  # base prompt, base tokenization
    draft_ids: list[int]  # the draft, base tokenization
    token_probs: list[float]  # P_base(draft_ids[i] | prompt, draft_ids[:i])


@torch.inference_mode()
def check(base: LoadedModel, messages: list[Message], draft_text: str) -> Check:
    """Pass 2: re-tokenize prompt + draft with the base tokenizer and score every draft token.

    The prompt is taken as the first len(tokenize(prompt)) tokens of the joined text's tokens.
    """
    prompt_text, n_prompt = base_texts(base, messages)
    joined_ids = final_joined_ids(base, prompt_text, draft_text)
    prompt_ids, draft_ids = joined_ids[:n_prompt], joined_ids[n_prompt:]
    if not draft_ids:
        return Check(prompt_ids=prompt_ids, draft_ids=[], token_probs=[])
    # Only the positions that predict draft tokens: the prompt's logits are never needed.
    logits = base.model(torch.tensor([joined_ids], device=base.device),
                        logits_to_keep=len(draft_ids) + 1).logits[0]
    logprobs = torch.log_softmax(logits[:-1].float(), dim=-1)
    picked = logprobs.gather(1, torch.tensor(draft_ids, device=logprobs.device)[:, None])[:, 0]
    return Check(prompt_ids=prompt_ids, draft_ids=draft_ids, token_probs=picked.exp().tolist())


def continue_from(base: LoadedModel, prompt_ids: list[int], kept_ids: list[int],
                  settings: WSDSettings) -> Continuation:
    """Pass 3: the base model continues from the kept draft *ids*; the final text is cut."""
    stops = settings.base_stops(base)
    out = greedy_generate(base, prompt_ids + kept_ids, settings.continuation_budget(base, kept_ids), stops,
                          settings.fixed_length)
    return make_continuation(base, kept_ids, out, stops)


class ReferenceWSD:
    """The three passes for one prompt at a time."""

    def __init__(self, pilot: LoadedModel, base: LoadedModel, settings: WSDSettings):
        self.pilot, self.base, self.settings = pilot, base, settings

    def check_fits(self, prompt_id: str, messages: list[Message]) -> None:
        check_fits(self.pilot, self.base, self.settings, prompt_id, messages)

    def generate_many(self, prompts):
        """Yields (prompt, record) as each prompt finishes."""
        for prompt in prompts:
            yield prompt, self.generate(prompt.messages)

    def generate(self, messages: list[Message]) -> dict:
        s = self.settings
        t0 = time.perf_counter()
        d = draft(self.pilot, messages, s)
        t1 = time.perf_counter()
        c = check(self.base, messages, d.text)
        switch_at = first_switch(c.token_probs, s.window, s.threshold)
        kept = c.draft_ids[: keep_count(c.token_probs, s.window, s.threshold)]
        t2 = time.perf_counter()
        cont = continue_from(self.base, c.prompt_ids, kept, s)
        t3 = time.perf_counter()
        seconds = {"draft": t1 - t0, "check": t2 - t1, "target": t3 - t2, "total": t3 - t0}
        return make_record(self.pilot, self.base, d, c.draft_ids, c.token_probs, switch_at, kept, cont, seconds)
