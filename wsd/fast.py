"""WSD, fast path: the reference engine's outputs with far less work.

- **Batched drafting.** The pilot drafts for a batch of prompts at once (left padding), in
  chunks of `chunk_tokens`, carrying its KV cache from chunk to chunk.
- **Early stopping.** After each chunk, every row's draft is re-tokenized by the base tokenizer
  and its *stable* base tokens are scored against that row's base KV cache. A token is
  stable once it ends before the whitespace run that precedes the last, still-growing word;
  merges never cross that point, so later text cannot change it. The switch rule only looks
  at stable tokens, so a switch found early is the switch the full draft would give, and the
  row leaves the batch at once instead of drafting its whole budget. Should a re-tokenization
  ever change tokens already scored, the base cache is cropped and the tail re-scored.
- **Batched continuation from the scoring cache.** The base model continues all rows of a
  batch in one greedy run (left padding, per-row budgets and stops), starting from the rows'
  scoring caches cropped to the kept prefix, so prompt + draft are read once, not twice. Where
  that cannot work (drafts from the disk cache, or sliding-window layers that already dropped
  tokens) it falls back to a batched prefill.
- **Draft cache.** Drafts and their base probabilities are stored on disk (`DraftCache`) and
  reused by runs that differ only in window/threshold (see `DraftCache.usable`).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import DynamicCache, StoppingCriteria, StoppingCriteriaList

from wsd.decoding import (
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
from wsd.draft_cache import CachedDraft, DraftCache
from wsd.models import LoadedModel
from wsd.prompts import Message, pilot_prompt
from wsd.switch import first_switch, keep_count


@dataclass(frozen=True)
class FastOptions:
    batch_size: int = 8
    chunk_tokens: int = 16
    early_stop: bool = True  # off for sweeps: a full draft serves every (window, threshold)

    def __post_init__(self):
        for name in ("batch_size", "chunk_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"wsd.{name} must be an integer >= 1, got {value!r}")


# Stable tokens left unscored at the boundary: insurance against a tokenizer whose merges
# reach back further than the whitespace rule assumes (costs a switch 2 tokens of latency).
_STABILITY_MARGIN = 2


def stable_boundary(text: str, start: int) -> int:
    """End of the part of `text` that more text cannot re-tokenize: before the whitespace run
    preceding the last word (which may still grow), and never inside text[:start]."""
    end = len(text)
    while end > start and not text[end - 1].isspace():
        end -= 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return end


def left_pad(rows: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of id lists, padded on the left as decoder-only generation needs."""
    width = max(map(len, rows))
    ids = torch.tensor([[pad_id] * (width - len(r)) + r for r in rows], device=device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
    return ids, mask


def _croppable_to(cache, length: int) -> bool:
    """A sliding-window layer that already dropped old tokens cannot be cropped back."""
    for layer in getattr(cache, "layers", []):
        window = getattr(layer, "sliding_window", None)
        if window is not None and cache.get_seq_length() >= window - 1:
            return False
    return length > 0


class BaseScorer:
    """One prompt's base-model view of its growing draft: the joined (prompt + draft) base
    tokens scored so far, their probabilities, and a KV cache holding all but the last."""

    def __init__(self, base: LoadedModel, messages: list[Message]):
        self.base = base
        self.prompt_text, self.n_prompt = base_texts(base, messages)
        self.ids: list[int] = []
        self.probs: list[float] = []  # for self.ids[n_prompt:]
        self.cache = None

    def joined(self, draft_text: str, final: bool) -> tuple[list[int], int]:
        """Base ids of prompt + draft, and how many of them the rest of the draft cannot change."""
        if final:
            ids = final_joined_ids(self.base, self.prompt_text, draft_text)
            return ids, len(ids)
        text = self.prompt_text + draft_text.lstrip()
        enc = self.base.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        boundary = stable_boundary(text, len(self.prompt_text))
        stable = 0
        while stable < len(enc["input_ids"]) and enc["offset_mapping"][stable][1] <= boundary:
            stable += 1
        return enc["input_ids"], max(stable, min(self.n_prompt, len(enc["input_ids"])))

    def _truncate(self, keep: int) -> None:
        self.ids, self.probs = self.ids[:keep], self.probs[: max(0, keep - self.n_prompt)]
        if self.cache is not None and _croppable_to(self.cache, keep - 1):
            self.cache.crop(keep - 1)
        else:
            self.ids, self.probs, self.cache = [], [], None

    @torch.inference_mode()
    def score(self, ids: list[int], upto: int) -> None:
        """Know the probabilities of ids[n_prompt:upto], re-scoring whatever changed."""
        common = 0
        for old, new in zip(self.ids, ids):
            if old != new:
                break
            common += 1
        if common < len(self.ids):
            self._truncate(common)
        known = len(self.ids)
        if upto <= known:
            return
        feed_from = max(known - 1, 0)  # the cache holds ids[:known - 1]
        wanted = upto - max(self.n_prompt, known, 1)  # positions whose prediction we keep
        out = self.base.model(
            input_ids=torch.tensor([ids[feed_from : upto - 1]], device=self.base.device),
            past_key_values=self.cache, use_cache=True, logits_to_keep=max(wanted, 1),
        )
        self.cache = out.past_key_values
        if wanted > 0:
            targets = torch.tensor(ids[upto - wanted : upto], device=out.logits.device)
            logprobs = torch.log_softmax(out.logits[0, -wanted:].float(), dim=-1)
            self.probs += logprobs.gather(1, targets[:, None])[:, 0].exp().tolist()
        self.ids = list(ids[:upto])

    @property
    def draft_ids(self) -> list[int]:
        return self.ids[self.n_prompt :]


class _PerRowBudget(StoppingCriteria):
    def __init__(self, budgets: list[int], prompt_length: int):
        self.budgets, self.prompt_length = budgets, prompt_length

    def __call__(self, input_ids, scores, **kwargs):
        made = input_ids.shape[1] - self.prompt_length
        return torch.tensor([made >= b for b in self.budgets], device=input_ids.device)


@dataclass
class _Row:
    prompt: object  # wsd.benchmarks.Prompt
    scorer: BaseScorer
    pilot_ids: list[int]
    result: CachedDraft | None = None  # the finished draft and its scores
    from_cache: bool = False


class FastWSD:
    """Same records as `ReferenceWSD`, produced batch by batch."""

    def __init__(self, pilot: LoadedModel, base: LoadedModel, settings: WSDSettings,
                 options: FastOptions = FastOptions(), draft_cache: DraftCache | None = None):
        self.pilot, self.base, self.settings, self.options = pilot, base, settings, options
        self.draft_cache = draft_cache
        # forward passes by purpose: a sweep must not add drafting or scoring work
        self.counter = {"pilot_drafting": 0, "base_scoring": 0, "base_continuation": 0}
        self.continuation_batches = {"reused_scoring_cache": 0, "prefilled": 0}

    @contextmanager
    def _counting(self, model, key: str):
        def hook(*_):
            self.counter[key] += 1

        handle = model.register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    def check_fits(self, prompt_id: str, messages: list[Message]) -> None:
        check_fits(self.pilot, self.base, self.settings, prompt_id, messages)

    def generate_many(self, prompts):
        """Yields (prompt, record) batch by batch, in input order."""
        size = self.options.batch_size
        for start in range(0, len(prompts), size):
            yield from self._batch(prompts[start : start + size])

    def _batch(self, prompts):
        s = self.settings
        t0 = time.perf_counter()
        rows = [_Row(p, BaseScorer(self.base, p.messages),
                     encode(self.pilot.tokenizer, pilot_prompt(self.pilot.tokenizer, p.messages)))
                for p in prompts]
        for row in rows:
            cached = self.draft_cache.get(row.prompt.messages) if self.draft_cache else None
            if cached is not None and cached.usable(s.window, s.threshold):
                row.result, row.from_cache = cached, True
        with self._counting(self.pilot.model, "pilot_drafting"), \
                self._counting(self.base.model, "base_scoring"):
            scoring_seconds = self._draft_and_score([r for r in rows if r.result is None])
        t1 = time.perf_counter()
        kept, switches = [], []
        for row in rows:
            switches.append(first_switch(row.result.probs, s.window, s.threshold))
            kept.append(row.result.draft_ids[: keep_count(row.result.probs, s.window, s.threshold)])
        with self._counting(self.base.model, "base_continuation"):
            continuations = self._continue(rows, kept)
        t2 = time.perf_counter()
        n = len(rows)
        share = {"draft": (t1 - t0 - scoring_seconds) / n, "check": scoring_seconds / n,
                 "target": (t2 - t1) / n, "total": (t2 - t0) / n}
        for row, switch_at, kept_ids, cont in zip(rows, switches, kept, continuations):
            r = row.result
            yield row.prompt, make_record(
                self.pilot, self.base, r.draft, r.draft_ids, r.probs, switch_at, kept_ids, cont, share,
                early_stopped=not r.complete, draft_cache_hit=row.from_cache, batch_size=n,
            )

    @torch.inference_mode()
    def _draft_and_score(self, rows: list[_Row]) -> float:
        """Draft in chunks, scoring stable base tokens as they come; returns scoring seconds."""
        scoring = 0.0
        if not rows:
            return scoring
        s, opts, tok = self.settings, self.options, self.pilot.tokenizer
        eos = [] if s.fixed_length else eos_ids(self.pilot)
        stops = s.draft_stops(self.pilot)
        pad = tok.pad_token_id if tok.pad_token_id is not None else eos_ids(self.pilot)[0]
        seqs, mask = left_pad([r.pilot_ids for r in rows], pad, self.pilot.device)
        prompt_length, cache, active = seqs.shape[1], None, list(rows)
        while active:
            drafted = seqs.shape[1] - prompt_length
            step = min(opts.chunk_tokens, s.draft_max_tokens - drafted)
            stop = StopOnStrings(tok, stops, prompt_length)
            out = self.pilot.model.generate(
                input_ids=seqs, attention_mask=mask, past_key_values=cache,
                generation_config=greedy_config(self.pilot, step, s.fixed_length),
                stopping_criteria=StoppingCriteriaList([stop] if stops else []),
                return_dict_in_generate=True,
            )
            new = out.sequences[:, prompt_length:].tolist()
            keep = []
            for b, row in enumerate(active):
                generated = trim_row(new[b], eos, stop.hit_after.get(b), s.draft_max_tokens)
                final = generated.stop_reason != "length" or len(generated.ids) >= s.draft_max_tokens
                draft = make_draft(self.pilot, generated, stops)
                started = time.perf_counter()
                ids, stable = row.scorer.joined(draft.text, final)
                upto = len(ids) if final else max(stable - _STABILITY_MARGIN, min(row.scorer.n_prompt, len(ids)))
                row.scorer.score(ids, upto)
                scoring += time.perf_counter() - started
                found = opts.early_stop and first_switch(row.scorer.probs, s.window, s.threshold) is not None
                if final or found:
                    sc = row.scorer
                    row.result = CachedDraft(draft, sc.ids[: sc.n_prompt], sc.draft_ids, sc.probs, complete=final)
                    if self.draft_cache:
                        self.draft_cache.put(row.prompt.messages, row.result)
                else:
                    keep.append(b)
            if not keep:
                return scoring
            index = torch.tensor(keep, device=seqs.device)
            seqs = out.sequences[index]
            mask = torch.cat([mask, torch.ones_like(out.sequences[:, prompt_length + drafted :])], dim=1)[index]
            cache = out.past_key_values
            cache.batch_select_indices(index)
            active = [active[b] for b in keep]
        return scoring

    def _reused_cache(self, rows: list[_Row], kept: list[list[int]]) -> DynamicCache | None:
        """The rows' scoring caches, cropped to prompt + kept draft (all but its last token) and
        left-padded into one batch, so the base model never reads prompt + draft a second time.
        None where that cannot work: a row came from the draft cache (no KV cache), or a
        sliding-window layer already dropped tokens the continuation would need."""
        lengths = [len(r.result.prompt_ids) + len(k) - 1 for r, k in zip(rows, kept)]
        if any(r.from_cache or r.scorer.cache is None for r in rows) or min(lengths) < 1:
            return None
        for row, length, kept_ids in zip(rows, lengths, kept):
            cache = row.scorer.cache
            if cache.get_seq_length() < length or not _croppable_to(cache, length):
                return None
            assert row.scorer.ids[: length + 1] == row.result.prompt_ids + kept_ids
        width = max(lengths)
        merged = DynamicCache(config=self.base.model.config)
        for index in range(len(rows[0].scorer.cache.layers)):
            layers = [r.scorer.cache.layers[index] for r in rows]
            pad = lambda t, n: F.pad(t[:, :, :n], (0, 0, width - n, 0))  # noqa: E731
            merged.update(torch.cat([pad(layer.keys, n) for layer, n in zip(layers, lengths)]),
                          torch.cat([pad(layer.values, n) for layer, n in zip(layers, lengths)]), index)
        return merged

    @torch.inference_mode()
    def _continue(self, rows: list[_Row], kept: list[list[int]]):
        s, tok = self.settings, self.base.tokenizer
        stops = s.base_stops(self.base)
        prompt_ids = [r.result.prompt_ids for r in rows]
        budgets = [s.base_budget(len(k)) for k in kept]
        eos = eos_ids(self.base)
        seqs, mask = left_pad([p + k for p, k in zip(prompt_ids, kept)], tok.pad_token_id
                               if tok.pad_token_id is not None else eos[0], self.base.device)
        stop = StopOnStrings(tok, stops, seqs.shape[1])
        criteria = [_PerRowBudget(budgets, seqs.shape[1])] + ([stop] if stops else [])
        reused = self._reused_cache(rows, kept)
        self.continuation_batches["reused_scoring_cache" if reused is not None else "prefilled"] += 1
        out = self.base.model.generate(
            input_ids=seqs, attention_mask=mask, past_key_values=reused,
            generation_config=greedy_config(self.base, max(budgets), s.fixed_length),
            stopping_criteria=StoppingCriteriaList(criteria),
        )
        new = out[:, seqs.shape[1] :].tolist()
        return [
            make_continuation(self.base, k, trim_row(new[b], [] if s.fixed_length else eos,
                                                     stop.hit_after.get(b), budgets[b]), stops)
            for b, k in enumerate(kept)
        ]
