import math
import random

import pytest

from wsd.weak_to_strong.switch import first_switch, keep_count


def direct_keep_count(probs, window, threshold):
    """The rule written the obvious way, in float64 linear space (valid for moderate values)."""
    for i in range(len(probs)):
        score = math.prod(probs[i - window + 1 : i + 1]) ** (1 / window) if i >= window - 1 else 0.0
        if score >= threshold:
            return i + 1
    return len(probs)


def test_empty_draft_keeps_nothing():
    assert keep_count([], 6, 0.8) == 0
    assert first_switch([], 6, 0.8) is None


def test_draft_shorter_than_window_is_kept_whole():
    assert keep_count([1.0, 1.0, 1.0], window=6, threshold=0.8) == 3
    assert first_switch([1.0] * 5, window=6, threshold=0.8) is None


def test_first_full_window_can_switch():
    assert keep_count([1.0] * 10, window=6, threshold=0.8) == 6


def test_exact_tie_switches():
    assert keep_count([0.8] * 6 + [0.1], window=6, threshold=0.8) == 6
    # 0.64 * 1.0 == 0.8 ** 2 exactly in real arithmetic: a tie, despite float rounding
    assert keep_count([0.3, 0.64, 1.0, 0.2], window=2, threshold=0.8) == 3


def test_just_below_threshold_does_not_switch():
    assert keep_count([0.7999] * 6 + [0.1], window=6, threshold=0.8) == 7


def test_never_reaching_threshold_keeps_whole_draft():
    probs = [0.5, 0.9, 0.2, 0.95, 0.3, 0.7, 0.6, 0.4]
    assert keep_count(probs, window=3, threshold=0.9) == len(probs)
    assert first_switch(probs, window=3, threshold=0.9) is None


def test_switch_on_last_token_is_told_apart_from_no_switch():
    probs = [0.1, 0.1, 0.9, 0.9]
    assert keep_count(probs, window=2, threshold=0.9) == 4
    assert first_switch(probs, window=2, threshold=0.9) == 3


def test_window_one_is_the_first_confident_token():
    assert keep_count([0.2, 0.5, 0.85, 0.99], window=1, threshold=0.8) == 3


def test_tiny_probabilities_do_not_underflow():
    # The product of 12 such values is 1e-360: 0.0 in float64, which would never switch.
    probs = [1e-30] * 12 + [0.5] * 3
    assert keep_count(probs, window=12, threshold=1e-31) == 12
    assert keep_count(probs, window=12, threshold=1e-20) == len(probs)


def test_zero_probability_blocks_its_windows():
    assert keep_count([1.0, 0.0, 1.0, 1.0], window=2, threshold=0.5) == 4
    assert keep_count([1.0, 0.0, 1.0, 1.0, 1.0], window=2, threshold=0.5) == 4


def test_threshold_one_needs_certainty():
    assert keep_count([1.0, 0.999999, 1.0, 1.0], window=2, threshold=1.0) == 4
    assert keep_count([0.3, 1.0, 1.0], window=2, threshold=1.0) == 3


def test_threshold_zero_switches_at_first_token():
    # s_0 = 0 >= 0: the literal rule hands over after one token
    assert keep_count([0.1, 0.1, 0.1], window=6, threshold=0.0) == 1


def test_long_random_case_matches_direct_computation():
    rng = random.Random(7)
    for _ in range(300):
        n = rng.randint(0, 200)
        probs = [rng.betavariate(5, 1) for _ in range(n)]
        window = rng.randint(1, 10)
        threshold = rng.uniform(0.5, 0.99)
        assert keep_count(probs, window, threshold) == direct_keep_count(probs, window, threshold)


@pytest.mark.parametrize("window", [0, -1, 2.5, True, "6", None])
def test_bad_window_is_named(window):
    with pytest.raises(ValueError, match=f"window must be an integer >= 1, got {window!r}"):
        keep_count([0.9], window=window, threshold=0.8)


@pytest.mark.parametrize("threshold", [-0.1, 1.5, float("nan"), "0.8", None])
def test_bad_threshold_is_named(threshold):
    with pytest.raises(ValueError, match=r"threshold must be a number in \[0, 1\], got"):
        keep_count([0.9], window=2, threshold=threshold)


def test_bad_probability_is_rejected():
    with pytest.raises(ValueError, match="1.2"):
        keep_count([0.5, 1.2], window=1, threshold=0.8)


def test_a_forced_switch_keeps_k_tokens_whatever_the_probabilities():
    from wsd.weak_to_strong.switch import WSDBlock, WSDSettings

    draft, probs = list(range(10)), [0.01] * 5 + [1.0] * 5
    assert WSDSettings(force_keep=3).kept(draft, probs) == [0, 1, 2]
    assert WSDSettings(force_keep=3).switch_at(probs[:2]) is None  # not yet drafted that far
    assert WSDSettings(force_keep=12).kept(draft, probs) == draft  # a shorter draft is kept whole
    assert WSDSettings(force_keep="draft").switch_at([1.0] * 10) is None
    assert WSDSettings().kept(draft, probs) == draft[:10]  # the auto-switch: at the window of ones
    for bad in (0, "all", True, 2.5):
        with pytest.raises(ValueError, match="wsd.force_keep must be null, 'draft' or an integer >= 1"):
            WSDBlock(force_keep=bad).validate()
