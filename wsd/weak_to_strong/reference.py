"""WSD, reference path: the authors' three passes, clear not clever, on any `Engine`.

1. draft  - the pilot answers with its chat template, greedy, up to `draft_max_tokens`;
2. check  - the draft *text* is appended to the base prompt, re-tokenized by the *base*
            tokenizer and scored by one teacher-forced base forward pass;
3. target - the base model continues greedily from prompt + the kept draft token ids.

Each pass runs over a batch of prompts (on HF one prompt at a time, as the authors check;
on vLLM the whole batch, which its engine decodes row by row alike). The fast engines
(`wsd.weak_to_strong.batched` on HF, `wsd.weak_to_strong.on_vllm` on vLLM) must reproduce this path's `keep_count` and
`response` exactly.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

from wsd.backends.decoding import (
    Continuation,
    Draft,
    base_texts,
    encode,
    final_joined_ids,
    make_continuation,
    make_draft,
    make_record,
)
from wsd.backends.engines import Engine
from wsd.core.prompts import Message, pilot_prompt
from wsd.weak_to_strong.switch import WSDSettings


def draft_all(pilot: Engine, conversations: list[list[Message]], settings: WSDSettings) -> list[Draft]:
    """Pass 1: the pilot's own answers, special tokens stripped, cut at draft stop strings."""
    ids = [encode(pilot.tokenizer, pilot_prompt(pilot.tokenizer, m)) for m in conversations]
    stops = settings.draft_stops(pilot)
    generated = pilot.generate(ids, [settings.draft_max_tokens] * len(ids), stops, settings.fixed_length)
    return [make_draft(pilot, g, stops) for g in generated]


@dataclass
class Check:
    prompt_ids: list[int]  # base prompt, base tokenization
    draft_ids: list[int]  # the draft, base tokenization
    token_probs: list[float]  # P_base(draft_ids[i] | prompt, draft_ids[:i])


def check_all(base: Engine, conversations: list[list[Message]], drafts: list[str]) -> list[Check]:
    """Pass 2: re-tokenize prompt + draft with the base tokenizer and score every draft token.

    The prompt is taken as the first len(tokenize(prompt)) tokens of the joined text's tokens.
    """
    joined, starts = [], []
    for messages, text in zip(conversations, drafts):
        prompt_text, n_prompt = base_texts(base, messages)
        joined.append(final_joined_ids(base, prompt_text, text))
        starts.append(n_prompt)
    probs = base.score(joined, starts)
    return [Check(ids[:n], ids[n:], p) for ids, n, p in zip(joined, starts, probs)]


def continue_all(base: Engine, checks: list[Check], kept: list[list[int]], settings: WSDSettings) -> list[Continuation]:
    """Pass 3: the base model continues from the kept draft *ids*; the final text is cut."""
    stops = settings.base_stops(base)
    budgets = [settings.continuation_budget(base, k) for k in kept]
    generated = base.generate([c.prompt_ids + k for c, k in zip(checks, kept)], budgets, stops, settings.fixed_length)
    return [make_continuation(base, k, g, stops) for k, g in zip(kept, generated)]


def summarize(records: list[dict]) -> dict:
    """A WSD run's switch statistics (a generate run's summary adds them): mean kept draft,
    share switched, draft and continuation lengths, and the seconds of each pass."""
    return {"mean_keep_count": statistics.fmean(r["keep_count"] for r in records),
            "switched_share": statistics.fmean(r["switched"] for r in records),
            "mean_draft_tokens": statistics.fmean(r["draft_tokens"] for r in records),
            "mean_continuation_tokens": statistics.fmean(r["continuation_tokens"] for r in records),
            "seconds": {p: sum(r["seconds"][p] for r in records) for p in ("draft", "check", "target", "total")}}


class ReferenceWSD:
    """The three passes, each over `batch_size` prompts at once (1: the authors' check)."""

    def __init__(self, pilot: Engine, base: Engine, settings: WSDSettings, batch_size: int = 1):
        self.pilot, self.base, self.settings, self.batch_size = pilot, base, settings, batch_size

    def check_fits(self, prompt_id: str, messages: list[Message]) -> None:
        self.settings.check_fits(self.pilot, self.base, prompt_id, messages)

    def generate_many(self, prompts):
        """Yields (prompt, record) batch by batch, in input order."""
        for start in range(0, len(prompts), self.batch_size):
            batch = prompts[start : start + self.batch_size]
            yield from zip(batch, self.generate([p.messages for p in batch], batch[0].id))

    def generate(self, conversations: list[list[Message]], batch_id: str | None = None) -> list[dict]:
        s, n = self.settings, len(conversations)
        t0 = time.perf_counter()
        drafts = draft_all(self.pilot, conversations, s)
        t1 = time.perf_counter()
        checks = check_all(self.base, conversations, [d.text for d in drafts])
        switches = [s.switch_at(c.token_probs) for c in checks]
        kept = [s.kept(c.draft_ids, c.token_probs) for c in checks]
        t2 = time.perf_counter()
        continuations = continue_all(self.base, checks, kept, s)
        t3 = time.perf_counter()
        seconds = {"draft": (t1 - t0) / n, "check": (t2 - t1) / n, "target": (t3 - t2) / n, "total": (t3 - t0) / n}
        return [make_record(self.pilot, self.base, d, c.draft_ids, c.token_probs, sw, k, cont, seconds,
                            batch_size=n, batch=batch_id)
                for d, c, sw, k, cont in zip(drafts, checks, switches, kept, continuations)]
