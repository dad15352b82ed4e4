"""WSD, one pipeline per prompt on vLLM's async engine (`backend.scheduling=per_request`).

`on_vllm.ChunkedWSD` runs a batch of prompts in lockstep: every row's drafting chunk, then one
scoring call, then the next chunk, and the batch's continuations only once every row has
switched; the next batch waits for all of it. Here each prompt runs the same steps as its own
coroutine (cache its base prompt; draft a chunk; score its new stable tokens; switch or draft
on; continue from the prefix cache), each step one request on the pilot's or the base's
`AsyncLLM`. Up to `max_in_flight` prompts run at once and vLLM's scheduler batches every live
request together, so no prompt waits for another's phase. Steps, stability rule, draft cache,
records and counters are `ChunkedWSD`'s: the same requests, so the same `keep_count` and
`response` (fp32; in bf16 a request's batch-mates change its numbers at near-ties on any path).
"""

from __future__ import annotations

import time

from wsd.backends.decoding import encode, make_continuation
from wsd.backends.vllm_async import AsyncVLLMEngine, answers_in_flight
from wsd.weak_to_strong.batched import FastOptions
from wsd.weak_to_strong.draft_cache import DraftCache
from wsd.weak_to_strong.on_vllm import ChunkedWSD
from wsd.weak_to_strong.switch import WSDSettings


class PerRequestWSD(ChunkedWSD):
    """WSD on two `AsyncVLLMEngine`s, every prompt its own pipeline; records in input order."""

    def __init__(self, pilot: AsyncVLLMEngine, base: AsyncVLLMEngine, settings: WSDSettings,
                 options: FastOptions, draft_cache: DraftCache | None = None, *, max_in_flight: int):
        super().__init__(pilot, base, settings, options, draft_cache)
        self.max_in_flight = max_in_flight

    def generate_many(self, prompts):
        """Submits every prompt (at most `max_in_flight` running) and yields (prompt, record)
        in input order as they finish."""
        yield from answers_in_flight(list(prompts), self.answer, self.max_in_flight)

    async def answer(self, prompt) -> dict:
        """One prompt's pipeline, on the engine loop: its record, as `ChunkedWSD` writes it for
        a batch of one. Cancelled, its live request is aborted in the engine."""
        s = self.settings
        t0 = time.perf_counter()
        await self.pilot.astart()
        await self.base.astart()
        block = self.base.cache_block
        [row] = self._rows([prompt])
        scoring = 0.0 if row.result is not None else await self._draft_and_score_one(row, block)
        t1 = time.perf_counter()
        [switch_at], [kept] = self._kept([row])
        stops = s.base_stops(self.base)
        budget = s.continuation_budget(self.base, kept)
        self.counter["base_continuation"] += budget > 0
        generated = await self.base.agenerate(row.result.prompt_ids + kept, budget, stops, s.fixed_length)
        continuation = make_continuation(self.base, kept, generated, stops)
        [(_, record)] = self._records([row], [switch_at], [kept], [continuation],
                                      (t0, t1, time.perf_counter(), scoring))
        return record

    async def _draft_and_score_one(self, row, block: int | None) -> float:
        """`ChunkedWSD._draft_and_score` for one row, each step awaited on its own."""
        s = self.settings
        stops = s.draft_stops(self.pilot)
        scoring = 0.0
        if block:  # the prompt's blocks cached first: scoring then computes probabilities past them
            started = time.perf_counter()
            self.counter["base_scoring"] += 1
            await self.base.agenerate(encode(self.base.tokenizer, row.tokens.prompt_text)[:-1], 1, [])
            scoring += time.perf_counter() - started
        while True:
            self.counter["pilot_drafting"] += 1
            chunk = await self.pilot.agenerate(row.pilot_ids + row.drafted, self._chunk_budget(row), stops,
                                               s.fixed_length)
            started = time.perf_counter()
            draft, final, request = self._take_chunk(row, chunk, stops, block)
            if request is not None:
                self.counter["base_scoring"] += 1
                self._take_scores(row, request, await self.base.ascore(*request))
            scoring += time.perf_counter() - started
            if self._settle(row, draft, final):
                return scoring

