"""The auto-switch rule: where the pilot hands the answer over to the base model.

Kept apart from any model code so that it can be tested exhaustively and reused by every
engine (reference and fast) and by sweeps that re-apply it to cached probabilities.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Integral, Real

_TIE_TOLERANCE = 1e-12


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
