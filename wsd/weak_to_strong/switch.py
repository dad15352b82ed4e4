"""WSD's switch: the `wsd` config block (every default of WSD's settings, declared here
once), the auto-switch rule those settings parameterize, and `WSDSettings`, the one object
the engines read them from.

`wsd.threshold` goes from the command line through the stage (`pipelines/generate.py`) and
the API (`wsd/api.py`) to WSD's builder (`method.py`), which makes `WSDSettings.from_config`
here, range-checked once; the engines hold that object and ask it for the kept prefix
(`WSDSettings.kept`), so the value is read in this file only. The rule is kept apart from
any model code so that it can be tested exhaustively and re-applied to cached probabilities.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

from wsd.backends.decoding import base_budget, base_texts, check_context, encode
from wsd.backends.models import LoadedModel
from wsd.core.prompts import Message, cut_at_stop, pilot_prompt, stop_strings
from wsd.core.registration import greedy_options
from wsd.core.schemas import GenerationBlock, at_least

_TIE_TOLERANCE = 1e-12
WHOLE_DRAFT = "draft"  # wsd.force_keep: keep the whole draft


def validate_switch_params(window: object, threshold: object) -> None:
    """Reject a bad window or threshold with a message naming the value (before any work)."""
    if isinstance(window, bool) or not isinstance(window, Integral) or window < 1:
        raise ValueError(f"window must be an integer >= 1, got {window!r}")
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, Real)
        or math.isnan(threshold)
        or not 0.0 <= threshold <= 1.0
    ):
        raise ValueError(f"threshold must be a number in [0, 1], got {threshold!r}")


def _log(p: float) -> float:
    if not 0.0 <= p <= 1.0 or math.isnan(p):
        raise ValueError(f"token probabilities must lie in [0, 1], got {p!r}")
    return math.log(p) if p > 0.0 else -math.inf


def first_switch(token_probs: Sequence[float], window: int, threshold: float) -> int | None:
    """Index i of the first draft token whose window score reaches the threshold, else None.

    The score at position i is the geometric mean of the last `window` probabilities,
    s_i = (p_{i-w+1} * ... * p_i) ** (1/w), and s_i = 0 while fewer than `window` tokens
    exist (i < w - 1); the first i with s_i >= threshold wins (a tie switches). Scores are
    compared in log space so tiny probabilities (1e-30) cannot underflow into a wrong answer.
    Taken literally, as the authors' code does, threshold 0 switches at once: s_0 = 0 >= 0.
    """
    validate_switch_params(window, threshold)
    return _first_switch(token_probs, window, threshold)


def _first_switch(token_probs: Sequence[float], window: int, threshold: float) -> int | None:
    """`first_switch` for settings already checked (`WSDSettings` checks them once)."""
    logs = [_log(float(p)) for p in token_probs]
    if threshold == 0.0:
        return 0 if logs else None
    # Sum of logs against w * log(threshold): a product that equals threshold**w in exact
    # arithmetic (a tie) must not lose to one ulp of rounding, hence the tiny tolerance.
    needed = window * math.log(threshold) - _TIE_TOLERANCE
    for i in range(window - 1, len(logs)):
        window_logs = logs[i - window + 1 : i + 1]
        if -math.inf not in window_logs and math.fsum(window_logs) >= needed:
            return i
    return None


def keep_count(token_probs: Sequence[float], window: int, threshold: float) -> int:
    """Number k of draft tokens (base tokenization) kept before the base model takes over.

    k = i + 1 for the first switch position i (see `first_switch`); if no position
    qualifies the whole draft is kept (k = len); an empty draft keeps nothing.
    """
    i = first_switch(token_probs, window, threshold)
    return len(token_probs) if i is None else i + 1


@dataclass
class WSDBlock:
    """The `wsd` block: WSD's own settings (read only by method=wsd), registered as
    `schema/wsd` by WSD's registration (`method.py`)."""

    implementation: str = "fast"  # fast (the backend's fastest; on vLLM the three passes all at once) or reference
    window: int = 6  # the switch window w
    threshold: float = 0.8  # the switch threshold gamma, in [0, 1]
    draft_max_tokens: int = 512  # the pilot's budget (lowered to generation.max_new_tokens when above it)
    early_stop: bool = True  # fast: stop drafting at the switch (sweeps: false, whole drafts cached and shared)
    # The settings study: the switch forced after k draft tokens (base tokenization), or `draft`:
    # the whole draft kept; null: the auto-switch of window and threshold
    force_keep: Any = None

    def validate(self, key: str = "wsd") -> None:
        if self.implementation not in ("fast", "reference"):
            raise ValueError(f"unknown {key}.implementation {self.implementation!r}; accepted: fast, reference")
        try:
            validate_switch_params(self.window, self.threshold)
        except ValueError as err:
            raise ValueError(f"{key}.{err}") from None
        at_least(f"{key}.draft_max_tokens", self.draft_max_tokens, 1)
        forced = self.force_keep
        if forced not in (None, WHOLE_DRAFT) and (isinstance(forced, bool) or not isinstance(forced, int) or forced < 1):
            raise ValueError(f"{key}.force_keep must be null, {WHOLE_DRAFT!r} or an integer >= 1, got {forced!r}")


@dataclass(frozen=True)
class WSDSettings:
    """What WSD's engines read: the switch rule's window and threshold and the budgets."""

    window: int = WSDBlock.window
    threshold: float = WSDBlock.threshold
    draft_max_tokens: int = WSDBlock.draft_max_tokens
    target_max_tokens: int = GenerationBlock.max_new_tokens
    force_keep: int | str | None = WSDBlock.force_keep
    # Benchmarks only: no EOS and no stop strings anywhere, and the base writes exactly
    # target - k tokens, so every method produces the same number of tokens.
    fixed_length: bool = False
    # Stop strings of the final answer (lm-eval's `until`): the base's continuation stops at
    # them and the answer is cut at them. The pilot's draft does not: the switch is decided
    # on the draft it would write anyway, and a kept draft that already reaches one of them
    # ends the answer there.
    answer_stops: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, cfg: dict) -> tuple[WSDBlock, WSDSettings]:
        """The `wsd` block, range-checked (the one check on the way to the engines), and the
        settings it makes with the answer's budget and stop strings; a draft budget above the
        answer's is lowered to it."""
        block, g = WSDBlock(**cfg["wsd"]), greedy_options(cfg)
        block.validate()
        return block, cls(window=block.window, threshold=block.threshold,
                          draft_max_tokens=min(block.draft_max_tokens, g.max_new_tokens),
                          target_max_tokens=g.max_new_tokens, fixed_length=g.fixed_length,
                          answer_stops=tuple(g.stop_strings), force_keep=block.force_keep)

    def switch_at(self, token_probs: Sequence[float]) -> int | None:
        """The switch position among these draft probabilities (see `first_switch`); forced,
        at draft token `force_keep` once the draft has it (never for the whole draft)."""
        if self.force_keep is None:
            return _first_switch(token_probs, self.window, self.threshold)
        if self.force_keep == WHOLE_DRAFT or len(token_probs) < self.force_keep:
            return None
        return self.force_keep - 1

    def kept(self, draft_ids: list[int], token_probs: Sequence[float]) -> list[int]:
        """The kept prefix of a draft (base tokenization): up to and including the switch
        position, or the whole draft when it never switches (see `keep_count`)."""
        i = self.switch_at(token_probs)
        return draft_ids[: len(token_probs) if i is None else i + 1]

    def draft_stops(self, pilot: LoadedModel) -> list[str]:
        return stop_strings("pilot", pilot.tokenizer, fixed_length=self.fixed_length)

    def base_stops(self, base: LoadedModel) -> list[str]:
        return stop_strings("base", base.tokenizer, self.answer_stops, self.fixed_length)

    def base_budget(self, kept: int) -> int:
        if self.fixed_length:  # exactly the rest of the answer
            return max(0, self.target_max_tokens - kept)
        return base_budget(self.target_max_tokens, kept)

    def max_answer_tokens(self) -> int:
        """The longest answer the budgets allow: kept draft + the base's budget, at its worst
        over every keep count up to the draft budget (up to target + 49 by the rounding)."""
        return max(kept + self.base_budget(kept) for kept in range(self.draft_max_tokens + 1))

    def continuation_budget(self, base: LoadedModel, kept_ids: list[int]) -> int:
        """New tokens the base may write after the kept draft: none when the kept draft
        already reaches one of the base's stop strings (the answer is cut there whatever
        follows), else `base_budget`."""
        stops = self.base_stops(base)
        if stops and cut_at_stop(base.tokenizer.decode(kept_ids, skip_special_tokens=True), stops)[1]:
            return 0
        return self.base_budget(len(kept_ids))

    def check_fits(self, pilot: LoadedModel, base: LoadedModel, prompt_id: str, messages: list[Message]) -> None:
        """WSD's budgets: the pilot drafts up to `draft_max_tokens`; the base needs the prompt
        and the longest answer the budgets allow."""
        pilot_len = len(encode(pilot.tokenizer, pilot_prompt(pilot.tokenizer, messages)))
        check_context(pilot, prompt_id, pilot_len, self.draft_max_tokens, "draft")
        check_context(base, prompt_id, base_texts(base, messages)[1], self.max_answer_tokens(), "answer")
