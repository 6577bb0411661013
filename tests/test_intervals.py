"""Wilson intervals and standard errors against closed forms, an independent implementation and simulation."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
from scipy.stats import binomtest

from robustlip.metrics.intervals import (
    Accuracy,
    format_with_error,
    standard_error,
    standard_error_from_sums,
    wilson_interval,
    z_value,
)

Z = 1.959963984540054


def test_z_value_is_the_two_sided_normal_quantile():
    assert z_value() == pytest.approx(Z, abs=1e-12)
    assert z_value(0.99) == pytest.approx(2.5758293035489, abs=1e-10)


@pytest.mark.parametrize("n", [1, 10, 1000])
def test_wilson_edges_have_closed_forms(n):
    # k = 0: (0, z²/(n + z²)); k = n: (n/(n + z²), 1).
    assert wilson_interval(0, n) == pytest.approx((0.0, Z * Z / (n + Z * Z)), abs=1e-12)
    assert wilson_interval(n, n) == pytest.approx((n / (n + Z * Z), 1.0), abs=1e-12)


@pytest.mark.parametrize(("k", "n"), [(486, 1000), (81, 263), (1, 7), (9990, 10000), (5000, 10000)])
def test_wilson_matches_scipy(k, n):
    expected = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert wilson_interval(k, n) == pytest.approx((expected.low, expected.high), abs=1e-12)


def test_wilson_is_symmetric_and_shrinks_like_one_over_root_n():
    low, high = wilson_interval(30, 100)
    mirrored = wilson_interval(70, 100)
    assert (low, high) == pytest.approx((1 - mirrored[1], 1 - mirrored[0]))
    width_100 = high - low
    low, high = wilson_interval(3000, 10000)
    assert (high - low) == pytest.approx(width_100 / 10, rel=0.02)


def test_wilson_covers_the_true_proportion_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    n, p, trials = 200, 0.9, 4000
    counts = rng.binomial(n, p, size=trials)
    covered = sum(low <= p <= high for low, high in (wilson_interval(int(k), n) for k in counts))
    assert 0.93 <= covered / trials <= 0.97


def test_wilson_rejects_impossible_counts():
    for k, n in [(-1, 10), (11, 10), (0, -1)]:
        with pytest.raises(ValueError, match="successes"):
            wilson_interval(k, n)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_accuracy_reports_percent_n_interval_and_prints_value_plus_minus_half_width():
    acc = Accuracy(correct=486, n=1000)
    low, high = wilson_interval(486, 1000)
    assert acc.percent == pytest.approx(48.6)
    assert acc.interval == pytest.approx((100 * low, 100 * high))
    assert acc.as_dict() == pytest.approx(
        {"value": 48.6, "n": 1000, "correct": 486, "ci95_low": 100 * low, "ci95_high": 100 * high}
    )
    # 1,000 examples: ±3.1 points; 10,000: ±1.0 (1.96·√(0.486·0.514/n) ≈ 0.98).
    assert str(acc) == "48.6 ± 3.1"
    assert str(Accuracy(4860, 10000)) == "48.6 ± 1.0"
    assert math.isnan(Accuracy(0, 0).percent)


def test_standard_error_of_the_mean():
    values = [65.6, 66.1, 67.6, 66.4]
    expected = statistics.stdev(values) / 2.0
    assert standard_error(values) == pytest.approx(expected, rel=1e-12)
    sums = (sum(values), sum(v * v for v in values), len(values))
    assert standard_error_from_sums(*sums) == pytest.approx(expected, rel=1e-9)
    assert math.isnan(standard_error([1.0])) and math.isnan(standard_error_from_sums(1.0, 1.0, 1))
    assert standard_error([2.0, 2.0, 2.0]) == 0.0


def test_standard_error_from_sums_adds_up_across_shards():
    rng = np.random.default_rng(1)
    values = rng.normal(60.0, 8.0, size=1000)
    shards = np.array_split(values, 3)
    total = sum(s.sum() for s in shards)
    total_sq = sum((s * s).sum() for s in shards)
    assert standard_error_from_sums(total, total_sq, len(values)) == pytest.approx(
        values.std(ddof=1) / math.sqrt(len(values)), rel=1e-9
    )


def test_format_with_error():
    assert format_with_error(48.625, 0.98) == "48.6 ± 1.0"
    assert format_with_error(66.4, float("nan")) == "66.4"
    assert format_with_error(3.14159, 0.0123, digits=2) == "3.14 ± 0.01"
