"""WSD's fast engine on transformers models (the shared core: `batched.py`).

- **Batched drafting.** The pilot drafts for a batch of prompts at once (left padding), in
  chunks of `chunk_tokens`, carrying its KV cache from chunk to chunk.
- **Batched scoring.** After each chunk, the new stable base tokens of every row (the rule of
  `batched.py`) are scored in one base forward against one shared base KV cache
  (`BatchScorer`); should a re-tokenization change tokens already scored, their cache
  columns are masked and the tail re-scored.
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
"""

from __future__ import annotations

import time
from contextlib import contextmanager

import torch
from transformers import DynamicCache

from wsd.backends.decoding import chunked_greedy, left_pad, make_continuation, make_draft, pad_id
from wsd.backends.models import LoadedModel
from wsd.weak_to_strong.batched import BatchedWSD, DraftTokens, FastOptions, Row, shared_prefix
from wsd.weak_to_strong.draft_cache import DraftCache
from wsd.weak_to_strong.switch import WSDSettings


def sliding_window(base: LoadedModel) -> int | None:
    """The smallest attention window of the base model's sliding-window layers, if any."""
    config = base.model.config.get_text_config(decoder=True)
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None) or []
    has_sliding = "sliding_attention" in layer_types or (window is not None and not layer_types)
    return window if has_sliding else None


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
            common = shared_prefix(row.ids, ids)
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
                requests[r] = rows[r].tokens.scoring_target(drafts[r][0].text, final)
            scorer.score(requests)
            scoring[0] += time.perf_counter() - started
            return {r for r, (draft, final) in drafts.items() if self._settle(rows[r], draft, final)}

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
