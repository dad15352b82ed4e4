"""WSD's fast engines, their shared core: the reference engine's outputs with far less work.

- **Drafting in chunks.** The pilot drafts for a batch of prompts in chunks of `chunk_tokens`.
- **Early stopping on stable tokens.** After each chunk, every row's draft is re-tokenized by
  the base tokenizer and the new *stable* base tokens are scored. A token is stable once it
  ends before the whitespace run that precedes the last, still-growing word: byte-level BPE
  and SentencePiece pre-tokenize at whitespace, so later text cannot change it (2 more tokens
  are left unscored as insurance). The switch rule only looks at stable tokens, so a switch
  found early is the switch the full draft would give, and the row leaves the batch at once
  instead of drafting its whole budget. Should a re-tokenization ever change tokens already
  scored, their scores are dropped and the tail re-scored.
- **Draft cache.** Drafts and their base probabilities are stored on disk (`DraftCache`) and
  reused by runs that differ only in window/threshold (see `DraftCache.usable`).

How each backend drafts, scores and continues is in `on_hf.py` (one shared KV cache per
batch) and `on_vllm.py` (requests that read the engine's prefix cache).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from wsd.backends.decoding import base_texts, encode, final_joined_ids, make_record
from wsd.backends.models import LoadedModel
from wsd.core.prompts import Message, pilot_prompt
from wsd.core.schemas import GenerationBlock
from wsd.weak_to_strong.draft_cache import CachedDraft, DraftCache
from wsd.weak_to_strong.switch import WSDBlock, WSDSettings


@dataclass(frozen=True)
class FastOptions:
    batch_size: int = GenerationBlock.batch_size
    chunk_tokens: int = GenerationBlock.chunk_tokens
    early_stop: bool = WSDBlock.early_stop  # off for sweeps: a full draft serves every (window, threshold)


# Stable tokens left unscored at the boundary: insurance against a tokenizer whose merges
# reach back further than the whitespace rule assumes (costs a switch 2 tokens of latency).
STABILITY_MARGIN = 2


def stable_boundary(text: str, start: int) -> int:
    """End of the part of `text` that more text cannot re-tokenize: before the whitespace run
    preceding the last word (which may still grow), and never inside text[:start]."""
    end = len(text)
    while end > start and not text[end - 1].isspace():
        end -= 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return end


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

    def scoring_target(self, draft_text: str, final: bool) -> tuple[list[int], int]:
        """Base ids of prompt + draft, and up to which of them probabilities are wanted now:
        all of a final draft, else its stable tokens less `STABILITY_MARGIN` (never fewer
        than the prompt's)."""
        ids, stable = self.joined(draft_text, final)
        return ids, len(ids) if final else max(stable - STABILITY_MARGIN, min(self.n_prompt, len(ids)))

    @property
    def draft_ids(self) -> list[int]:
        return self.ids[self.n_prompt :]


def shared_prefix(known: list[int], ids: list[int]) -> int:
    """How many leading tokens a new tokenization shares with the known one."""
    common = 0
    for old, new in zip(known, ids):
        if old != new:
            break
        common += 1
    return common



@dataclass
class Row:
    """One prompt of a batch in a batched WSD engine."""

    prompt: object  # wsd.data.prompt_sets.Prompt
    tokens: DraftTokens
    pilot_ids: list[int]
    drafted: list[int] = field(default_factory=list)  # the pilot's new ids so far (engines that re-request)
    result: CachedDraft | None = None  # the finished draft and its scores
    from_cache: bool = False


class BatchedWSD:
    """What both fast engines share: batches of rows, drafts from the draft cache, the
    stability rule, the switch, and records (those of `ReferenceWSD`, plus `early_stopped`,
    `draft_cache_hit`, `batch_size` and `batch`). Subclasses draft, score and continue
    (`_batch`): `wsd.weak_to_strong.on_hf.FastWSD` on transformers models,
    `wsd.weak_to_strong.on_vllm.ChunkedWSD` on any engine that caches prefixes."""

    def __init__(self, pilot, base, settings: WSDSettings, options: FastOptions = FastOptions(),
                 draft_cache: DraftCache | None = None):
        self.pilot, self.base, self.settings, self.options = pilot, base, settings, options
        self.draft_cache = draft_cache
        # work by purpose (forward passes on HF, requests on vLLM): a sweep must not add drafting or scoring
        self.counter = {"pilot_drafting": 0, "base_scoring": 0, "base_continuation": 0}

    def check_fits(self, prompt_id: str, messages: list[Message]) -> None:
        self.settings.check_fits(self.pilot, self.base, prompt_id, messages)

    def generate_many(self, prompts):
        """Yields (prompt, record) batch by batch, in input order."""
        size = self.options.batch_size
        for start in range(0, len(prompts), size):
            yield from self._batch(prompts[start : start + size])

    def _rows(self, prompts) -> list[Row]:
        """The batch's rows, those the draft cache decides already filled in."""
        rows = [Row(p, DraftTokens(self.base, p.messages),
                    encode(self.pilot.tokenizer, pilot_prompt(self.pilot.tokenizer, p.messages))) for p in prompts]
        for row in rows:
            cached = self.draft_cache.get(row.prompt.messages) if self.draft_cache else None
            if cached is not None and cached.usable(self.settings):
                row.result, row.from_cache = cached, True
        return rows

    def _finish(self, row: Row, draft, complete: bool) -> None:
        """A row's draft is decided (final, or switched early): keep it, and store it."""
        t = row.tokens
        row.result = CachedDraft(draft, t.ids[: t.n_prompt], t.draft_ids, t.probs, complete=complete)
        if self.draft_cache:
            self.draft_cache.put(row.prompt.messages, row.result)

    def _settle(self, row: Row, draft, final: bool) -> bool:
        """Is this row's draft decided (final, or its switch found among the stable tokens
        scored so far, when early stopping)? Then it is kept and stored."""
        found = self.options.early_stop and self.settings.switch_at(row.tokens.probs) is not None
        if final or found:
            self._finish(row, draft, final)
        return final or found

    def _kept(self, rows: list[Row]) -> tuple[list[int | None], list[list[int]]]:
        s = self.settings
        return [s.switch_at(r.result.probs) for r in rows], [s.kept(r.result.draft_ids, r.result.probs) for r in rows]

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
