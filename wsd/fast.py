"""WSD, fast path: the reference engine's outputs with far less work.

- **Batched drafting.** The pilot drafts for a batch of prompts at once (left padding), in
  chunks of `chunk_tokens`, carrying its KV cache from chunk to chunk.
- **Early stopping, batched scoring.** After each chunk, every row's draft is re-tokenized by
  the base tokenizer and the new *stable* base tokens of all rows are scored in one base
  forward against one shared base KV cache (`BatchScorer`). A token is stable once it ends
  before the whitespace run that precedes the last, still-growing word: byte-level BPE and
  SentencePiece pre-tokenize at whitespace, so later text cannot change it (2 more tokens are
  left unscored as insurance). The switch rule only looks
  at stable tokens, so a switch found early is the switch the full draft would give, and the
  row leaves the batch at once instead of drafting its whole budget. Should a re-tokenization
  ever change tokens already scored, their cache columns are masked and the tail re-scored.
- **Batched continuation from the scoring cache.** The base model continues all rows of a
  batch in one greedy run (per-row budgets and stops; finished rows leave between chunks),
  starting from the scoring cache with
  every column past a row's kept prefix masked, so prompt + draft are read once, not twice.
  Where that cannot work (drafts from the disk cache, or a continuation that would carry the
  cache past a sliding-window layer's span) it falls back to a batched prefill.
- **Sliding windows.** Masked hole columns count against a sliding-window layer's span, so a
  cache with holes is exact only while it is shorter than the window. Past that, the scorer
  re-reads its rows into a fresh cache without holes (left padding only), which is exact at
  any length, and the continuation prefills.
- **Draft cache.** Drafts and their base probabilities are stored on disk (`DraftCache`) and
  reused by runs that differ only in window/threshold (see `DraftCache.usable`).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from wsd.decoding import (
    WSDSettings,
    base_texts,
    check_fits,
    chunked_greedy,
    encode,
    final_joined_ids,
    left_pad,
    make_continuation,
    make_draft,
    make_record,
    pad_id,
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


def sliding_window(base: LoadedModel) -> int | None:
    """The smallest attention window of the base model's sliding-window layers, if any."""
    config = base.model.config.get_text_config(decoder=True)
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None) or []
    has_sliding = "sliding_attention" in layer_types or (window is not None and not layer_types)
    return window if has_sliding else None


class DraftTokens:
    """One prompt's base-model view of its growing draft: the joined (prompt + draft) base
    tokens known so far, their probabilities, and the cache columns holding them."""

    def __init__(self, base: LoadedModel, messages: list[Message]):
        self.base = base
        self.prompt_text, self.n_prompt = base_texts(base, messages)
        self.ids: list[int] = []
        self.probs: list[float] = []  # for self.ids[n_prompt:]
        self.columns: list[int] = []  # cache column of each fed token: ids[:len(ids) - 1]

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

    @property
    def draft_ids(self) -> list[int]:
        return self.ids[self.n_prompt :]


class BatchScorer:
    """Scores the growing drafts of several rows with one base forward per call, in one shared
    KV cache. Each row owns some cache columns; the columns it does not use (padding, or tokens
    that a re-tokenization replaced) are masked holes, and position ids are the rows' own, so
    every row sees exactly its own sequence. Holes shrink a sliding-window layer's span, so
    once the cache would outgrow the base's smallest window (`window`), the rows are read anew
    into a cache without holes (`restarts` counts it) and the cache no longer serves the
    continuation (`reusable`)."""

    def __init__(self, base: LoadedModel, rows: list[DraftTokens]):
        self.base, self.rows = base, rows
        self.window = sliding_window(base)
        self.cache = DynamicCache(config=base.model.config)
        self.mask = torch.zeros(len(rows), 0, dtype=torch.long, device=base.device)
        self.restarts, self.reusable = 0, True

    def fits_window(self, more_columns: int) -> bool:
        """Can `more_columns` be appended to the cache, holes and all, and stay exact?"""
        return self.window is None or self.mask.shape[1] + more_columns <= self.window - 1

    def _restart(self, feeds: dict) -> dict:
        """Forget the cache; every row is fed again from its first token, left-padded."""
        restarted = {}
        for r, row in enumerate(self.rows):
            ids, upto, _, known = feeds.get(r, (row.ids, len(row.ids), 0, len(row.ids)))
            row.columns = []
            if upto > 1:
                restarted[r] = (ids, upto, 0, known)
        self.cache = DynamicCache(config=self.base.model.config)
        self.mask = self.mask[:, :0]
        self.restarts += 1
        self.reusable = False
        return restarted

    @torch.inference_mode()
    def score(self, requests: dict[int, tuple[list[int], int]]) -> None:
        """For each row index: know the probabilities of ids[n_prompt:upto], re-scoring
        whatever a new tokenization changed."""
        feeds = {}
        for r, (ids, upto) in requests.items():
            row = self.rows[r]
            common = 0
            for old, new in zip(row.ids, ids):
                if old != new:
                    break
                common += 1
            if common < len(row.ids):  # re-tokenized: forget what changed, mask its columns
                fed = max(common - 1, 0)
                self.mask[r, row.columns[fed:]] = 0
                row.ids, row.columns = row.ids[:common], row.columns[:fed]
                row.probs = row.probs[: max(0, common - row.n_prompt)]
            known = len(row.ids)
            if upto > known:
                feeds[r] = (ids, upto, max(known - 1, 0), known)
        width = max((upto - 1 - start for _, upto, start, _ in feeds.values()), default=0)
        if width and not self.fits_window(width):
            feeds = self._restart(feeds)
            width = max((upto - 1 - start for _, upto, start, _ in feeds.values()), default=0)
        if width == 0:
            for r, (ids, upto, _, _) in feeds.items():
                self.rows[r].ids = list(ids[:upto])
            return
        device = self.base.device
        batch = len(self.rows)
        input_ids = torch.zeros(batch, width, dtype=torch.long, device=device)
        new_mask = torch.zeros(batch, width, dtype=torch.long, device=device)
        positions = torch.zeros(batch, width, dtype=torch.long, device=device)
        wanted = {}  # predictions of ids[upto - wanted : upto], the last columns of the row's feed
        for r, (ids, upto, start, known) in feeds.items():
            n = upto - 1 - start
            if n:
                input_ids[r, width - n :] = torch.tensor(ids[start : upto - 1], device=device)
                new_mask[r, width - n :] = 1
                positions[r, width - n :] = torch.arange(start, upto - 1, device=device)
            wanted[r] = max(0, upto - max(self.rows[r].n_prompt, known, 1))
        first_column = self.mask.shape[1]
        self.mask = torch.cat([self.mask, new_mask], dim=1)
        keep = max(max(wanted.values()), 1)  # only the logits the switch needs (262k-way for Gemma)
        out = self.base.model(input_ids=input_ids, attention_mask=self.mask, position_ids=positions,
                              past_key_values=self.cache, use_cache=True, logits_to_keep=keep)
        self.cache = out.past_key_values
        for r, (ids, upto, start, known) in feeds.items():
            row, n = self.rows[r], upto - 1 - start
            row.columns += range(first_column + width - n, first_column + width)
            if wanted[r]:
                logprobs = torch.log_softmax(out.logits[r, keep - wanted[r] :].float(), dim=-1)
                targets = torch.tensor(ids[upto - wanted[r] : upto], device=logprobs.device)
                row.probs += logprobs.gather(1, targets[:, None])[:, 0].exp().tolist()
            row.ids = list(ids[:upto])

    def continuation_inputs(self, kept_lengths: list[int]):
        """(input_ids, attention_mask, cache) that make `generate` continue each row from its
        first kept_lengths[r] tokens: later columns masked, the last kept token fed anew."""
        mask = torch.zeros_like(self.mask)
        last = []
        for r, (row, n) in enumerate(zip(self.rows, kept_lengths)):
            mask[r, row.columns[: n - 1]] = 1
            last.append(row.ids[n - 1])
        width = mask.shape[1]
        input_ids = torch.zeros(len(self.rows), width + 1, dtype=torch.long, device=mask.device)
        input_ids[:, width] = torch.tensor(last, device=mask.device)
        ones = torch.ones(len(self.rows), 1, dtype=torch.long, device=mask.device)
        return input_ids, torch.cat([mask, ones], dim=1), self.cache


@dataclass
class Row:
    """One prompt of a batch in a batched WSD engine."""

    prompt: object  # wsd.prompt_sets.Prompt
    tokens: DraftTokens
    pilot_ids: list[int]
    drafted: list[int] = field(default_factory=list)  # the pilot's new ids so far (engines that re-request)
    result: CachedDraft | None = None  # the finished draft and its scores
    from_cache: bool = False


class BatchedWSD:
    """What both fast engines share: batches of rows, drafts from the draft cache, the
    switch, and records (those of `ReferenceWSD`, plus `early_stopped`, `draft_cache_hit`,
    `batch_size` and `batch`). Subclasses draft, score and continue (`_batch`)."""

    def __init__(self, pilot, base, settings: WSDSettings, options: FastOptions = FastOptions(),
                 draft_cache: DraftCache | None = None):
        self.pilot, self.base, self.settings, self.options = pilot, base, settings, options
        self.draft_cache = draft_cache
        # work by purpose (forward passes on HF, requests on vLLM): a sweep must not add drafting or scoring
        self.counter = {"pilot_drafting": 0, "base_scoring": 0, "base_continuation": 0}

    def check_fits(self, prompt_id: str, messages: list[Message]) -> None:
        check_fits(self.pilot, self.base, self.settings, prompt_id, messages)

    def generate_many(self, prompts):
        """Yields (prompt, record) batch by batch, in input order."""
        size = self.options.batch_size
        for start in range(0, len(prompts), size):
            yield from self._batch(prompts[start : start + size])

    def _rows(self, prompts) -> list[Row]:
        """The batch's rows, those the draft cache decides already filled in."""
        s = self.settings
        rows = [Row(p, DraftTokens(self.base, p.messages),
                    encode(self.pilot.tokenizer, pilot_prompt(self.pilot.tokenizer, p.messages))) for p in prompts]
        for row in rows:
            cached = self.draft_cache.get(row.prompt.messages) if self.draft_cache else None
            if cached is not None and cached.usable(s.window, s.threshold):
                row.result, row.from_cache = cached, True
        return rows

    def _finish(self, row: Row, draft, complete: bool) -> None:
        """A row's draft is decided (final, or switched early): keep it, and store it."""
        t = row.tokens
        row.result = CachedDraft(draft, t.ids[: t.n_prompt], t.draft_ids, t.probs, complete=complete)
        if self.draft_cache:
            self.draft_cache.put(row.prompt.messages, row.result)

    def _kept(self, rows: list[Row]) -> tuple[list[int | None], list[list[int]]]:
        s = self.settings
        return ([first_switch(r.result.probs, s.window, s.threshold) for r in rows],
                [r.result.draft_ids[: keep_count(r.result.probs, s.window, s.threshold)] for r in rows])

    def _records(self, rows: list[Row], switches, kept, continuations, seconds: tuple[float, float, float, float]):
        """(prompt, record) per row; `seconds` = (start, drafted, continued, scoring time)."""
        t0, t1, t2, scoring = seconds
        n = len(rows)
        share = {"draft": (t1 - t0 - scoring) / n, "check": scoring / n, "target": (t2 - t1) / n, "total": (t2 - t0) / n}
        for row, switch_at, kept_ids, cont in zip(rows, switches, kept, continuations):
            r = row.result
            yield row.prompt, make_record(
                self.pilot, self.base, r.draft, r.draft_ids, r.probs, switch_at, kept_ids, cont, share,
                early_stopped=not r.complete, draft_cache_hit=row.from_cache, batch_size=n,
                batch=rows[0].prompt.id,  # prompts of one batch share its time
            )


class FastWSD(BatchedWSD):
    """Same records as `ReferenceWSD`, produced batch by batch on HF models."""

    def __init__(self, pilot: LoadedModel, base: LoadedModel, settings: WSDSettings,
                 options: FastOptions = FastOptions(), draft_cache: DraftCache | None = None):
        super().__init__(pilot, base, settings, options, draft_cache)
        self.continuation_batches = {"reused_scoring_cache": 0, "prefilled": 0}
        self.scoring_restarts = 0  # scoring caches read anew past a sliding window (BatchScorer)

    @contextmanager
    def _counting(self, model, key: str):
        def hook(*_):
            self.counter[key] += 1

        handle = model.register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    def _batch(self, prompts):
        t0 = time.perf_counter()
        rows = self._rows(prompts)
        fresh = [r for r in rows if r.result is None]
        scorer = BatchScorer(self.base, [r.tokens for r in fresh]) if fresh else None
        with self._counting(self.pilot.model, "pilot_drafting"), \
                self._counting(self.base.model, "base_scoring"):
            scoring_seconds = self._draft_and_score(fresh, scorer)
        t1 = time.perf_counter()
        switches, kept = self._kept(rows)
        if scorer is not None:
            self.scoring_restarts += scorer.restarts
        reuse = scorer if scorer is not None and scorer.reusable and len(fresh) == len(rows) else None
        with self._counting(self.base.model, "base_continuation"):
            continuations = self._continue(rows, kept, reuse)
        yield from self._records(rows, switches, kept, continuations,
                                 (t0, t1, time.perf_counter(), scoring_seconds))

    def _draft_and_score(self, rows: list[Row], scorer: BatchScorer | None) -> float:
        """Draft in chunks; after each chunk score every row's new stable base tokens (one base
        forward) and let rows whose switch is found leave. Returns scoring seconds."""
        if not rows:
            return 0.0
        s, opts = self.settings, self.options
        stops = s.draft_stops(self.pilot)
        scoring = [0.0]

        def after_chunk(generated: dict) -> set:
            started = time.perf_counter()
            drafts, requests = {}, {}
            for r, g in generated.items():
                final = g.stop_reason != "length" or len(g.ids) >= s.draft_max_tokens
                drafts[r] = (make_draft(self.pilot, g, stops), final)
                tokens = rows[r].tokens
                ids, stable = tokens.joined(drafts[r][0].text, final)
                upto = len(ids) if final else max(stable - _STABILITY_MARGIN, min(tokens.n_prompt, len(ids)))
                requests[r] = (ids, upto)
            scorer.score(requests)
            scoring[0] += time.perf_counter() - started
            switched = set()
            for r, (draft, final) in drafts.items():
                t = rows[r].tokens
                found = opts.early_stop and first_switch(t.probs, s.window, s.threshold) is not None
                if final or found:
                    self._finish(rows[r], draft, final)
                    switched.add(r)
            return switched

        seqs, mask = left_pad([r.pilot_ids for r in rows], pad_id(self.pilot), self.pilot.device)
        chunked_greedy(self.pilot, seqs, mask, None, [s.draft_max_tokens] * len(rows), stops,
                       s.fixed_length, opts.chunk_tokens, after_chunk)
        return scoring[0]

    @torch.inference_mode()
    def _continue(self, rows: list[Row], kept: list[list[int]], scorer: BatchScorer | None):
        """All rows in one batched greedy run (finished rows leave between chunks): from the
        scoring cache when the whole batch shares one and the continuation keeps it within a
        sliding window's span (prompt + draft are then read once), else from a batched
        prefill."""
        s = self.settings
        stops = s.base_stops(self.base)
        budgets = [s.continuation_budget(self.base, k) for k in kept]
        if scorer is not None and not scorer.fits_window(1 + max(budgets)):
            scorer = None  # its holes would shrink a sliding window's span: prefill instead
        if scorer is not None:
            seqs, mask, cache = scorer.continuation_inputs(
                [len(r.result.prompt_ids) + len(k) for r, k in zip(rows, kept)])
            self.continuation_batches["reused_scoring_cache"] += 1
        else:
            seqs, mask = left_pad([r.result.prompt_ids + k for r, k in zip(rows, kept)], pad_id(self.base),
                                  self.base.device)
            cache = None
            self.continuation_batches["prefilled"] += 1
        generated = chunked_greedy(self.base, seqs, mask, cache, budgets, stops, s.fixed_length,
                                   self.options.chunk_tokens)
        return [make_continuation(self.base, k, g, stops) for k, g in zip(kept, generated)]
