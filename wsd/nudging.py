"""Nudging (Fei et al., 2024), a peer method and one of our baselines: the base model
decodes, and wherever its top-1 probability falls below a threshold the aligned pilot inserts
its next *word*; then the base goes on. Handovers repeat as often as the base is unsure.

Everything is exchanged as text, so the two models may use different tokenizers (SmolLM2's
BPE and Gemma's SentencePiece here). Each model keeps a KV cache of its own view of the text
and reuses it up to the first token that the latest re-tokenization changed.
"""

from __future__ import annotations

import time

import torch
from transformers import DynamicCache

from wsd.decoding import check_context, encode, eos_ids
from wsd.models import LoadedModel
from wsd.prompts import Message, base_prompt, cut_at_stop, pilot_prompt, stop_reason, stop_strings


class PrefixCachedLM:
    """Next-token logits after a growing token sequence that may be re-tokenized at its end:
    the cache is cropped to the longest unchanged prefix, and only the rest is fed."""

    def __init__(self, loaded: LoadedModel):
        self.loaded, self.ids, self.cache = loaded, [], None

    @torch.inference_mode()
    def next_logits(self, ids: list[int]) -> torch.Tensor:
        common = 0
        limit = min(len(self.ids), len(ids) - 1)  # feed at least one token
        while common < limit and self.ids[common] == ids[common]:
            common += 1
        if self.cache is None or not self._crop(len(self.ids) - common):
            self.cache, common = DynamicCache(config=self.loaded.model.config), 0
        feed = torch.tensor([ids[common:]], device=self.loaded.device)
        out = self.loaded.model(input_ids=feed, past_key_values=self.cache, use_cache=True, logits_to_keep=1)
        self.ids = list(ids)
        return out.logits[0, -1].float()

    def _crop(self, remove: int) -> bool:
        if remove == 0:
            return True
        try:
            self.cache.crop(-remove)
        except (RuntimeError, ValueError):  # a sliding-window layer past its window cannot roll back
            return False
        return True


def _delta(tokenizer, before: list[int], new: list[int]) -> str:
    """Text that `new` adds after `before`, decoded in context (SentencePiece and byte-level
    BPE decode a token's leading space only in context)."""
    return (tokenizer.decode(before + new, skip_special_tokens=True)[len(tokenizer.decode(before, skip_special_tokens=True)):])


def validate_nudging(threshold, word_max_tokens) -> None:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
        raise ValueError(f"method.threshold must be in (0, 1], got {threshold!r}")
    if isinstance(word_max_tokens, bool) or not isinstance(word_max_tokens, int) or word_max_tokens < 1:
        raise ValueError(f"method.word_max_tokens must be an integer >= 1, got {word_max_tokens!r}")


class Nudging:
    """Base decodes, pilot nudges one word where the base's top-1 probability < `threshold`."""

    def __init__(self, pilot: LoadedModel, base: LoadedModel, max_new_tokens: int, fixed_length: bool,
                 threshold: float = 0.4, word_max_tokens: int = 8, answer_stops: tuple[str, ...] = ()):
        """`answer_stops` (lm-eval's `until`) end the answer whichever model writes them."""
        validate_nudging(threshold, word_max_tokens)
        self.pilot, self.base = pilot, base
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
        """One prompt at a time (handovers differ per row); yields (prompt, record)."""
        for prompt in prompts:
            start = time.perf_counter()
            record = self.generate(prompt.messages)
            record["seconds"] = {"total": time.perf_counter() - start}
            yield prompt, record

    def generate(self, messages: list[Message]) -> dict:
        base_tok, pilot_tok = self.base.tokenizer, self.pilot.tokenizer
        base_prefix = base_prompt(messages, base_tok.bos_token)
        pilot_prefix = pilot_prompt(pilot_tok, messages)
        n_prefix = len(encode(base_tok, base_prefix))
        base_lm, pilot_lm = PrefixCachedLM(self.base), PrefixCachedLM(self.pilot)
        base_eos = [] if self.fixed_length else eos_ids(self.base)
        answer, words, base_tokens, reason = "", [], 0, None
        while reason is None:
            # the base writes while it is sure of its next token
            ids = encode(base_tok, base_prefix + answer)
            new = []
            while True:
                if len(ids) - n_prefix + len(new) >= self.max_new_tokens:
                    reason = "length"
                    break
                probs = torch.softmax(base_lm.next_logits(ids + new), dim=-1)
                top = int(probs.argmax())
                if probs[top] < self.threshold:
                    break
                if top in base_eos:
                    reason = "eos"
                    break
                new.append(top)
                if self.base_stops and cut_at_stop(_delta(base_tok, ids[n_prefix:], new), self.base_stops)[1]:
                    reason = "stop_string"
                    break
            answer += _delta(base_tok, ids[n_prefix:], new)
            base_tokens += len(new)
            if reason is not None:
                break
            # the pilot inserts its next word
            word, pilot_done = self._pilot_word(pilot_lm, encode(pilot_tok, pilot_prefix + answer))
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

    def _pilot_word(self, pilot_lm: PrefixCachedLM, ids: list[int]) -> tuple[str, bool]:
        """The pilot's next word (leading white space included, the white space after it
        not), and whether the pilot ended its answer instead."""
        tok, new, text = self.pilot.tokenizer, [], ""
        eos = [] if self.fixed_length else eos_ids(self.pilot)
        for _ in range(self.word_max_tokens):
            top = int(pilot_lm.next_logits(ids + new).argmax())
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
