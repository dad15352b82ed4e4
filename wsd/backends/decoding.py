"""What every decoding method shares: greedy batched generation with per-row budgets and
stop strings, context checks, and, for the two WSD engines, the base's budget and how raw
token ids become a draft, a continuation and a record. One definition, so `fast` and `reference` cannot drift.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

from wsd.backends.models import LoadedModel
from wsd.core.prompts import Message, base_prompt, cut_at_stop, stop_reason


def base_budget(target_max_tokens: int, kept: int) -> int:
    """New-token budget of the base model: (target - kept) rounded up to a multiple of 50."""
    return max(1, math.ceil((target_max_tokens - kept) / 50) * 50)


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of `text`, no automatic special tokens (BOS is written into the text)."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def greedy_config(loaded: LoadedModel, max_new_tokens: int, fixed_length: bool,
                  sampling: tuple[float, float] | None = None) -> GenerationConfig:
    """Greedy decoding (the paper's everywhere), or `sampling` = (temperature, top_p) where
    several candidates per prompt are wanted (GenerAlign's teachers); in fixed-length mode EOS
    is suppressed so every row runs its budget."""
    temperature, top_p = sampling or (None, None)
    return GenerationConfig(
        do_sample=sampling is not None, temperature=temperature, top_p=top_p, top_k=None if sampling else 50,
        max_new_tokens=max_new_tokens,
        min_new_tokens=max_new_tokens if fixed_length else None,
        eos_token_id=loaded.eos_token_ids,
        pad_token_id=pad_id(loaded),
    )


class StopOnStrings(StoppingCriteria):
    """Ends each row once the text of its new tokens contains a stop string, and remembers
    after how many new tokens that happened.

    transformers' own `stop_strings` rebuilds tables over the whole vocabulary on every
    `generate` call: about 8.5 s per call for Gemma's 262k vocabulary on this CPU, more than
    the decoding itself. Decoding only the last few new tokens each step costs microseconds.
    """

    def __init__(self, tokenizer, stop_strings, prompt_length: int):
        self.tokenizer, self.stop_strings, self.prompt_length = tokenizer, list(stop_strings), prompt_length
        # every token decodes to at least one character, so a stop string of n characters
        # that the last step completed lies within the last n new tokens
        self.tail = max((len(s) for s in self.stop_strings), default=0) + 1
        self.hit_after: dict[int, int] = {}  # row -> number of new tokens when it stopped

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        new = input_ids[:, self.prompt_length :]
        texts = self.tokenizer.batch_decode(new[:, -self.tail :].tolist(), skip_special_tokens=False)
        hits = [any(s in t for s in self.stop_strings) for t in texts]
        for row, hit in enumerate(hits):
            if hit:
                self.hit_after.setdefault(row, new.shape[1])
        return torch.tensor(hits, device=input_ids.device)


@dataclass
class Generated:
    ids: list[int]  # new tokens, a terminating EOS excluded
    stop_reason: str  # "eos" | "stop_string" | "length"


def trim_row(new_ids: list[int], eos: list[int], hit_after: int | None, budget: int) -> Generated:
    """One row's new tokens, as generated in a (maybe batched) run: cut after the token that
    ended it (EOS, a stop string, or its own budget) and say why it ended."""
    stop = min(len(new_ids), budget, hit_after or budget)
    for i, token in enumerate(new_ids[:stop]):
        if token in eos:
            return Generated(new_ids[:i], "eos")
    if hit_after is not None and hit_after <= stop:
        return Generated(new_ids[:hit_after], "stop_string")
    return Generated(new_ids[:stop], "length")


@dataclass
class Draft:
    text: str
    num_tokens: int
    stop_reason: str


def make_draft(pilot: LoadedModel, generated: Generated, stops: list[str]) -> Draft:
    """The draft text: special tokens stripped, cut at the first draft stop string."""
    text, _ = cut_at_stop(pilot.tokenizer.decode(generated.ids, skip_special_tokens=True), stops)
    return Draft(text=text, num_tokens=len(generated.ids), stop_reason=generated.stop_reason)


def base_texts(base: LoadedModel, messages: list[Message]) -> tuple[str, int]:
    """The base prompt text and its token count (the prompt part of the joined text)."""
    text = base_prompt(messages, base.tokenizer.bos_token)
    return text, len(encode(base.tokenizer, text))


def final_joined_ids(base: LoadedModel, prompt_text: str, draft_text: str) -> list[int]:
    """As the authors do: the draft stripped, the joined text right-stripped, tokenized."""
    stripped = draft_text.strip()
    if not stripped:
        return encode(base.tokenizer, prompt_text)
    return encode(base.tokenizer, (prompt_text + stripped).rstrip())


@dataclass
class Continuation:
    ids: list[int]
    text: str  # the continuation alone, cut at the first stop string
    response: str  # kept draft + continuation, decoded together by the base tokenizer, cut
    stop_reason: str


def make_continuation(base: LoadedModel, kept_ids: list[int], generated: Generated, stops) -> Continuation:
    decode = base.tokenizer.decode
    response, was_cut = cut_at_stop(decode(kept_ids + generated.ids, skip_special_tokens=True), stops)
    text, _ = cut_at_stop(decode(generated.ids, skip_special_tokens=True), stops)
    return Continuation(ids=generated.ids, text=text, response=response,
                        stop_reason=stop_reason(generated.stop_reason, was_cut))


def make_record(pilot, base, draft: Draft, draft_ids, probs, switch_at, kept_ids, cont: Continuation,
                seconds: dict, **extra) -> dict:
    """The per-prompt record both engines write (the fast one adds a few fields)."""
    return {
        "draft": draft.text,
        "draft_tokens": draft.num_tokens,
        "draft_stop_reason": draft.stop_reason,
        "base_draft_tokens": len(draft_ids),
        "base_token_probs": probs,
        "keep_count": len(kept_ids),
        "switched": switch_at is not None,
        "accepted_draft": base.tokenizer.decode(kept_ids, skip_special_tokens=True),
        "continuation": cont.text,
        "continuation_tokens": len(cont.ids),
        "response": cont.response,
        "stop_reason": cont.stop_reason,
        "seconds": seconds,
        "pilot": pilot.name,
        "base": base.name,
        **extra,
    }


def check_context(loaded: LoadedModel, prompt_id: str, prompt_tokens: int, new_tokens: int, what: str) -> None:
    """Reject a prompt that cannot fit the model's context with its budget: never truncate
    silently. `what` names the budget in the message."""
    need = prompt_tokens + new_tokens
    limit = loaded.context_length
    if limit is not None and need > limit:
        raise ValueError(
            f"prompt {prompt_id!r} is too long for {loaded.name}: needs {prompt_tokens} prompt + "
            f"{new_tokens} {what} = {need} tokens, the model's context is {limit}; shorten it or "
            "lower the budgets"
        )


def pad_id(loaded: LoadedModel) -> int:
    """The padding id for batches: the tokenizer's, else the first EOS id."""
    pad = loaded.tokenizer.pad_token_id
    return pad if pad is not None else loaded.eos_token_ids[0]


def left_pad(rows: list[list[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of id lists, padded on the left as decoder-only generation needs."""
    width = max(map(len, rows))
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
    return ids, mask


class _PerRowBudget(StoppingCriteria):
    """Each row of a batched continuation stops at its own budget (target - its k)."""

    def __init__(self, budgets: list[int], prompt_length: int):
        self.budgets, self.prompt_length = budgets, prompt_length

    def __call__(self, input_ids, scores, **kwargs):
        made = input_ids.shape[1] - self.prompt_length
        return torch.tensor([made >= b for b in self.budgets], device=input_ids.device)


@torch.inference_mode()
def chunked_greedy(loaded: LoadedModel, seqs, mask, cache, budgets: list[int], stops, fixed_length: bool,
                   chunk: int, after_chunk=None, sampling: tuple[float, float] | None = None) -> list:
    """Greedy decoding of a left-padded batch, `chunk` tokens per `generate` call. Between
    calls, rows that are done leave the batch and its KV cache, so on a compute-bound CPU they
    cost nothing more. `after_chunk({row: Generated})` may end further rows (WSD: a switch).
    Returns each row's `Generated`."""
    eos = [] if fixed_length else loaded.eos_token_ids
    start, active = seqs.shape[1], [r for r, b in enumerate(budgets) if b > 0]
    results = [None if b > 0 else Generated([], "length") for b in budgets]
    if len(active) < len(budgets) and active:  # rows with nothing to write leave at once
        index = torch.tensor(active, device=seqs.device)
        seqs, mask = seqs[index], mask[index]
        if cache is not None:
            cache.batch_select_indices(index)
    while active:
        made = seqs.shape[1] - start
        stop = StopOnStrings(loaded.tokenizer, stops, start)
        config = greedy_config(loaded, min(chunk, max(budgets[r] for r in active) - made), fixed_length, sampling)
        config.return_dict_in_generate = True  # the cache goes on to the next chunk
        out = loaded.model.generate(
            input_ids=seqs, attention_mask=mask, past_key_values=cache, generation_config=config,
            stopping_criteria=StoppingCriteriaList(
                [_PerRowBudget([budgets[r] for r in active], start)] + ([stop] if stops else [])),
        )
        new = out.sequences[:, start:].tolist()
        generated = {r: trim_row(new[b], eos, stop.hit_after.get(b), budgets[r]) for b, r in enumerate(active)}
        done = {r for r, g in generated.items() if g.stop_reason != "length" or len(g.ids) >= budgets[r]}
        if after_chunk is not None:
            done |= after_chunk(generated)
        for r in done:
            results[r] = generated[r]
        keep = [b for b, r in enumerate(active) if r not in done]
        if not keep:
            break
        index = torch.tensor(keep, device=seqs.device)
        grown = torch.ones_like(out.sequences[:, seqs.shape[1] :])
        seqs, mask = out.sequences[index], torch.cat([mask, grown], dim=1)[index]
        cache = out.past_key_values
        cache.batch_select_indices(index)
        active = [active[b] for b in keep]
    return results
