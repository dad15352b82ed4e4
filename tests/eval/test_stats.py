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
