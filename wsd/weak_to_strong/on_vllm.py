"""WSD, fast path for serving engines (vLLM): every step is a fresh request, and the
engine's prefix cache makes re-reading a known prefix nearly free.

- **Chunked drafting.** The pilot drafts `chunk_tokens` tokens for every active row in one
  `generate` call; the next chunk is a new request on prompt + draft so far (cached).
- **Scoring only new stable tokens.** After each chunk, every row's draft is re-tokenized by
  the base tokenizer (`batched.DraftTokens`, the same stability rule as the HF fast engine)
  and only the stable base tokens not scored yet are scored: the scoring request reads the
  prefix cache, so vLLM computes probabilities past the cached prefix only. A row's scored
  length is kept off a cache-block boundary, so the next request's cache hit always ends
  before the first token it must score.
- **Early stop.** A row whose switch is found leaves the batch; the switch rule only looks
  at stable tokens, so it is the switch the full draft would give.
- **The prompt read once.** Before drafting, one plain request per prompt caches the base
  prompt's blocks, so no scoring request computes probabilities over the prompt.
- **Continuation from the prefix cache.** The base continues from prompt + kept ids, whose
  blocks the scoring requests wrote.

Same records, draft cache and counters as `on_hf.FastWSD`; the reference engine's
`keep_count` and `response` are its specification.
"""

from __future__ import annotations

import time

from wsd.backends.decoding import Generated, encode, make_continuation, make_draft
from wsd.weak_to_strong.batched import BatchedWSD, Row, shared_prefix


def first_stop(tokenizer, ids: list[int], stops: list[str], after: int) -> int | None:
    """Fewest tokens of `ids` (more than `after`) whose text holds a stop string, if any: a
    stop string may straddle two chunks, which the engine's per-request check cannot see."""
    if not stops or not any(s in tokenizer.decode(ids, skip_special_tokens=False) for s in stops):
        return None
    for n in range(max(after, 1), len(ids) + 1):
        if any(s in tokenizer.decode(ids[:n], skip_special_tokens=False) for s in stops):
            return n
    return None


class ChunkedWSD(BatchedWSD):
    """WSD on any `Engine`, fast where the engine caches prefixes; counts requests."""

    def _batch(self, prompts):
        s = self.settings
        t0 = time.perf_counter()
        rows = self._rows(prompts)
        scoring_seconds = self._draft_and_score([r for r in rows if r.result is None])
        t1 = time.perf_counter()
        switches, kept = self._kept(rows)
        stops = s.base_stops(self.base)
        budgets = [s.continuation_budget(self.base, k) for k in kept]
        self.counter["base_continuation"] += sum(b > 0 for b in budgets)
        generated = self.base.generate([r.result.prompt_ids + k for r, k in zip(rows, kept)], budgets, stops,
                                       s.fixed_length)
        continuations = [make_continuation(self.base, k, g, stops) for k, g in zip(kept, generated)]
        yield from self._records(rows, switches, kept, continuations,
                                 (t0, t1, time.perf_counter(), scoring_seconds))

    def _draft_and_score(self, rows: list[Row]) -> float:
        """Chunks of drafting, each followed by one scoring call over the rows' new stable
        tokens, until every row is final or has switched. Returns scoring seconds."""
        s = self.settings
        stops = s.draft_stops(self.pilot)
        block = getattr(self.base, "cache_block", None)
        scoring, active = 0.0, list(rows)
        if block and rows:  # the prompts' blocks cached now: scoring then computes probabilities past them
            started = time.perf_counter()
            prompts = [encode(self.base.tokenizer, r.tokens.prompt_text)[:-1] for r in rows]
            self.base.generate(prompts, [1] * len(rows), [])
            self.counter["base_scoring"] += len(rows)
            scoring += time.perf_counter() - started
        while active:
            budgets = [self._chunk_budget(r) for r in active]
            self.counter["pilot_drafting"] += len(active)
            chunks = self.pilot.generate([r.pilot_ids + r.drafted for r in active], budgets, stops, s.fixed_length)
            started = time.perf_counter()
            states = [(row, *self._take_chunk(row, chunk, stops, block)) for row, chunk in zip(active, chunks)]
            wanted = [(row, req) for row, _, _, req in states if req is not None]
            if wanted:
                self.counter["base_scoring"] += len(wanted)
                probs = self.base.score([ids for _, (ids, _) in wanted], [start for _, (_, start) in wanted])
                for (row, request), p in zip(wanted, probs):
                    self._take_scores(row, request, p)
            scoring += time.perf_counter() - started
            active = [row for row, draft, final, _ in states if not self._settle(row, draft, final)]
        return scoring

    def _chunk_budget(self, row: Row) -> int:
        return min(self.options.chunk_tokens, self.settings.draft_max_tokens - len(row.drafted))

    def _take_chunk(self, row: Row, chunk: Generated, stops: list[str], block: int | None):
        """A drafting chunk joins its row's draft: (the draft so far, whether it is final, the
        scoring request its new stable tokens need or None)."""
        before = len(row.drafted)
        row.drafted += chunk.ids
        reason = chunk.stop_reason
        cut = None if reason != "length" else first_stop(self.pilot.tokenizer, row.drafted, stops, before + 1)
        if cut is not None:
            row.drafted, reason = row.drafted[:cut], "stop_string"
        final = reason != "length" or len(row.drafted) >= self.settings.draft_max_tokens
        draft = make_draft(self.pilot, Generated(row.drafted, reason), stops)
        return draft, final, self._scoring_request(row, draft.text, final, block)

    @staticmethod
    def _take_scores(row: Row, request: tuple[list[int], int], probs: list[float]) -> None:
        ids, start = request
        row.tokens.probs = row.tokens.probs[: start - row.tokens.n_prompt] + probs
        row.tokens.ids = list(ids)

    @staticmethod
    def _scoring_request(row: Row, draft_text: str, final: bool, block: int | None):
        """(ids, start): score ids[start:], the stable base tokens not known yet (re-scoring
        from where a new tokenization changed known ones), or None if there are none."""
        t = row.tokens
        ids, upto = t.scoring_target(draft_text, final)
        common = shared_prefix(t.ids, ids[:upto])
        if common < len(t.ids):  # re-tokenized: forget the probabilities of what changed
            t.probs, t.ids = t.probs[: max(0, common - t.n_prompt)], t.ids[:common]
        start = max(common, t.n_prompt)
        if block and not final and upto % block == 0 and upto - 1 > start:
            upto -= 1  # keep the next request's cache hit short of the first token it scores
        if upto <= start:  # nothing new: what is known stands
            t.ids, t.probs = list(ids[:upto]), t.probs[: max(0, upto - t.n_prompt)]
            return None
        return ids[:upto], start
