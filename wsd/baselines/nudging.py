"""Nudging (Fei et al., 2024), a peer method and one of our baselines: the base model
decodes, and wherever its top-1 probability falls below a threshold the aligned pilot inserts
its next *word*; then the base goes on. Handovers repeat as often as the base is unsure.

Everything is exchanged as text, so the two models may use different tokenizers (SmolLM2's
BPE and Gemma's SentencePiece here). Each model reads its own view of the text through the
engine's `probe` (greedy tokens with their probabilities), which reuses a cached prefix up to
the first token that the latest re-tokenization changed.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

from wsd.backends.decoding import check_context, encode
from wsd.backends.engines import Engine, per_request
from wsd.backends.vllm_async import answers_in_flight
from wsd.core.prompts import Message, base_prompt, cut_at_stop, pilot_prompt, stop_reason, stop_strings
from wsd.core.registration import Method, MethodEntry, backend_name, greedy_options
from wsd.core.schemas import MethodBlock, at_least, between


@dataclass
class NudgingBlock(MethodBlock):
    name: str = "nudging"
    threshold: float = 0.4  # the base's top-1 probability below which the pilot nudges
    word_max_tokens: int = 8

    def validate(self, key: str = "method") -> None:
        between(f"{key}.threshold", self.threshold, 0, 1, low_open=True)
        at_least(f"{key}.word_max_tokens", self.word_max_tokens, 1)


# Tokens per `probe` call. The base's run ends at its first unsure token: HF stops there, vLLM
# writes the rest of the request, so a base run starts with short probes and doubles them
# while the base stays sure (where it hands over every few tokens, long probes are waste). A
# pilot word is a few tokens.
_BASE_PROBE_FIRST = 2
_BASE_PROBE_MAX = 16
_PILOT_PROBE = 4


def _delta(tokenizer, before: list[int], new: list[int]) -> str:
    """Text that `new` adds after `before`, decoded in context (SentencePiece and byte-level
    BPE decode a token's leading space only in context)."""
    return (tokenizer.decode(before + new, skip_special_tokens=True)[len(tokenizer.decode(before, skip_special_tokens=True)):])


def summarize(records: list[dict]) -> dict:
    """A nudging run's handovers (a generate run's summary adds them)."""
    return {"mean_handovers": statistics.fmean(r["handovers"] for r in records),
            "mean_pilot_char_share": statistics.fmean(r["pilot_char_share"] for r in records)}


class Nudging:
    """Base decodes, pilot nudges one word where the base's top-1 probability < `threshold`."""

    def __init__(self, pilot: Engine, base: Engine, max_new_tokens: int, fixed_length: bool,
                 threshold: float = NudgingBlock.threshold, word_max_tokens: int = NudgingBlock.word_max_tokens,
                 answer_stops: tuple[str, ...] = (), max_in_flight: int | None = None, batch_size: int = 1):
        """`answer_stops` (lm-eval's `until`) end the answer whichever model writes them.
        `max_in_flight`: on vLLM's async engine (`backend.scheduling=per_request`), how many
        prompts run their handovers at once, each probe a request of its own. Else, on the
        blocking engines, `batch_size` prompts advance in lockstep: each round, the probes
        they wait on go to their engine in one call (on vLLM one batch; HF's probe cache holds
        one sequence, so there 1)."""
        self.pilot, self.base, self.max_in_flight, self.batch_size = pilot, base, max_in_flight, batch_size
        self.max_new_tokens, self.fixed_length = max_new_tokens, fixed_length
        self.threshold, self.word_max_tokens = threshold, word_max_tokens
        self.base_stops = stop_strings("base", base.tokenizer, answer_stops, fixed_length)
        self.pilot_stops = stop_strings("pilot", pilot.tokenizer, answer_stops, fixed_length)

    def check_fits(self, prompt_id: str, messages: list[Message]) -> None:
        base_len = len(encode(self.base.tokenizer, base_prompt(messages, self.base.tokenizer.bos_token)))
        check_context(self.base, prompt_id, base_len, self.max_new_tokens, "new")
        pilot_len = len(encode(self.pilot.tokenizer, pilot_prompt(self.pilot.tokenizer, messages)))
        # the pilot reads the answer too, in its own tokens: allow twice the base's count
        check_context(self.pilot, prompt_id, pilot_len, 2 * self.max_new_tokens, "new (x2, the pilot's view)")

    def generate_many(self, prompts):
        """Yields (prompt, record) in input order: every prompt its own pipeline on the async
        engine, or `batch_size` prompts at a time in lockstep on the blocking engines."""
        prompts = list(prompts)
        if self.max_in_flight:
            yield from answers_in_flight(prompts, self.answer, self.max_in_flight)
            return
        for start in range(0, len(prompts), self.batch_size):
            batch = prompts[start : start + self.batch_size]
            yield from zip(batch, _in_lockstep([self.answer(p) for p in batch]))

    async def answer(self, prompt) -> dict:
        """One prompt's record. Its probes are awaited on the async engine; on the blocking
        engines `_in_lockstep` answers them."""
        start = time.perf_counter()
        record = await self._nudge(prompt.messages)
        record["seconds"] = {"total": time.perf_counter() - start}
        return record

    def generate(self, messages: list[Message]) -> dict:
        """One answer on the blocking engines."""
        [record] = _in_lockstep([self._nudge(messages)])
        return record

    async def _probe(self, engine: Engine, ids: list[int], max_tokens: int, min_prob: float = 0.0):
        if self.max_in_flight:
            return await engine.aprobe(ids, max_tokens, min_prob)
        return await _Probe(engine, ids, max_tokens, min_prob)

    async def _nudge(self, messages: list[Message]) -> dict:
        base_tok, pilot_tok = self.base.tokenizer, self.pilot.tokenizer
        base_prefix = base_prompt(messages, base_tok.bos_token)
        pilot_prefix = pilot_prompt(pilot_tok, messages)
        n_prefix = len(encode(base_tok, base_prefix))
        base_eos = [] if self.fixed_length else self.base.eos_token_ids
        answer, words, base_tokens, reason = "", [], 0, None
        while reason is None:
            # the base writes while it is sure of its next token
            ids = encode(base_tok, base_prefix + answer)
            new, unsure, probe = [], False, _BASE_PROBE_FIRST
            while reason is None and not unsure:
                room = self.max_new_tokens - (len(ids) - n_prefix + len(new))
                if room <= 0:
                    reason = "length"
                    break
                tokens, probs = await self._probe(self.base, ids + new, min(room, probe), self.threshold)
                probe = min(2 * probe, _BASE_PROBE_MAX)
                for top, prob in zip(tokens, probs):
                    if prob < self.threshold:
                        unsure = True
                        break
                    if top in base_eos:
                        reason = "eos"
                        break
                    new.append(top)
                    if self.base_stops and cut_at_stop(_delta(base_tok, ids[n_prefix:], new), self.base_stops)[1]:
                        reason = "stop_string"
                        break
                    if len(ids) - n_prefix + len(new) >= self.max_new_tokens:
                        reason = "length"
                        break
            answer += _delta(base_tok, ids[n_prefix:], new)
            base_tokens += len(new)
            if reason is not None:
                break
            # the pilot inserts its next word
            word, pilot_done = await self._pilot_word(encode(pilot_tok, pilot_prefix + answer))
            answer += word
            words.append(word)
            if pilot_done or not word:  # an empty word would hand back to an unsure base forever
                reason = "pilot_stop"
        response, cut = cut_at_stop(answer, self.base_stops)
        joined = encode(base_tok, base_prefix + response)
        response_ids = joined[n_prefix:]
        if len(response_ids) > self.max_new_tokens:  # a last pilot word may overshoot the budget
            response = _delta(base_tok, joined[:n_prefix], response_ids[: self.max_new_tokens])
            response_ids, reason, cut = response_ids[: self.max_new_tokens], "length", False
        pilot_chars = sum(len(w) for w in words)
        return {
            "response": response,
            "response_tokens": len(response_ids),
            "stop_reason": stop_reason(reason, cut),
            "handovers": len(words),
            "pilot_words": words,
            "pilot_char_share": pilot_chars / len(answer) if answer else 0.0,
            "base_tokens": base_tokens,
            "pilot": self.pilot.name,
            "base": self.base.name,
        }

    async def _pilot_word(self, ids: list[int]) -> tuple[str, bool]:
        """The pilot's next word (leading white space included, the white space after it
        not), and whether the pilot ended its answer instead."""
        tok, new, text = self.pilot.tokenizer, [], ""
        eos = [] if self.fixed_length else self.pilot.eos_token_ids
        while len(new) < self.word_max_tokens:
            tokens, _ = await self._probe(self.pilot, ids + new, min(_PILOT_PROBE, self.word_max_tokens - len(new)))
            for top in tokens:
                if top in eos:
                    return text, True
                new.append(top)
                text = _delta(tok, ids, new)
                before_stop, stopped = cut_at_stop(text, self.pilot_stops)
                if stopped:
                    return before_stop, True
                body = text.lstrip()
                if body and any(c.isspace() for c in body):  # a whole word, and the next one began
                    end = len(text) - len(body) + next(i for i, c in enumerate(body) if c.isspace())
                    return text[:end], False
        return text, False


@dataclass
class _Probe:
    """A probe a nudging coroutine waits on, for `_in_lockstep` to answer."""

    engine: Engine
    ids: list[int]
    max_tokens: int
    min_prob: float

    def __await__(self):
        return (yield self)


def _in_lockstep(coroutines: list) -> list:
    """Runs nudging coroutines on the blocking engines, in rounds: each round, the probes they
    wait on go to their engine as one `probe_many` call, and each coroutine resumes with its
    answer. Their results, in order."""
    results, waiting = [None] * len(coroutines), {}

    def advance(i: int, answer) -> None:
        try:
            waiting[i] = coroutines[i].send(answer)
        except StopIteration as done:
            results[i] = done.value

    for i in range(len(coroutines)):
        advance(i, None)
    while waiting:
        rounds: dict[int, list[int]] = {}
        for i, probe in waiting.items():
            rounds.setdefault(id(probe.engine), []).append(i)
        asked, waiting = waiting, {}
        for rows in rounds.values():
            engine = asked[rows[0]].engine
            answers = engine.probe_many([(asked[i].ids, asked[i].max_tokens, asked[i].min_prob) for i in rows])
            for i, answer in zip(rows, answers):
                advance(i, answer)
    return results


def build_nudging(cfg: dict, models: dict[str, Engine]) -> Method:
    options, params = greedy_options(cfg), cfg["method"]
    return Nudging(models["pilot"], models["base"], options.max_new_tokens, options.fixed_length,
                   threshold=params["threshold"], word_max_tokens=params["word_max_tokens"],
                   answer_stops=options.stop_strings,
                   max_in_flight=cfg["backend"]["max_in_flight"] if per_request(cfg.get("backend")) else None,
                   batch_size=options.batch_size if backend_name(cfg) == "vllm" else 1)


METHOD = MethodEntry("nudging", ("pilot", "base"), build_nudging,
                     lambda cfg: (greedy_options(cfg), NudgingBlock.checked(cfg["method"])),
                     block=NudgingBlock, summary=summarize)
