import pytest

from eval.stats import bootstrap


def test_bootstrap_interval_contains_the_mean_and_is_deterministic():
    values = [0, 1, 1, 0, 1, 1, 1, 0, 1, 1]
    est = bootstrap(values, seed=3)
    assert est.n == 10 and est.mean == pytest.approx(0.7)
    assert est.low <= 0.7 <= est.high and 0.3 <= est.low < est.high <= 1.0
    assert bootstrap(values, seed=3) == est


def test_constant_values_have_a_zero_width_interval():
    est = bootstrap([0.5] * 6)
    assert (est.mean, est.low, est.high) == (0.5, 0.5, 0.5)


def test_no_values_is_an_error():
    with pytest.raises(ValueError, match="no values"):
        bootstrap([])


def test_ratio_of_sums_is_a_micro_average():
    from eval.stats import bootstrap_ratio

    est = bootstrap_ratio([1, 3], [1, 4])  # per item 1.0 and 0.75; over instructions 4 of 5
    assert est.mean == pytest.approx(0.8) and est.n == 2
    assert est.low <= 0.8 <= est.high


def test_items_measured_together_are_resampled_together():
    """Prompts of one batch share its time: one batch is one measurement (no interval, not a
    zero-width one); several batches are resampled whole."""
    from eval.results import estimate_cell
    from eval.stats import bootstrap_ratio

    one = bootstrap_ratio([2.0] * 5, [1.9] * 5, clusters=["b0"] * 5)
    assert (one.mean, one.low, one.high, one.n) == (pytest.approx(2.0 / 1.9), None, None, 5)
    assert estimate_cell(one.as_dict()) == "1.053 (no interval: one measurement) n=5"
    # two batches of very different ratios: every resample is one of 3 batch mixes
    numerators, denominators, batches = [1] * 10 + [3] * 10, [1] * 20, ["a"] * 10 + ["b"] * 10
    two = bootstrap_ratio(numerators, denominators, clusters=batches, resamples=500)
    assert two.mean == pytest.approx(2.0) and (two.low, two.high) == (pytest.approx(1.0), pytest.approx(3.0))
    per_item = bootstrap_ratio(numerators, denominators, resamples=500)
    assert 1.4 < per_item.low and per_item.high < 2.6  # items alone would claim more precision
