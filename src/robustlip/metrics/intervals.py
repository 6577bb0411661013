"""How sure a reported number is: Wilson intervals for accuracies, standard errors for means.

An accuracy measured on n examples is a binomial proportion; the same model gives a different number
on another 1,000 test points. The Wilson score interval (Wilson, 1927; Brown, Cai & DasGupta,
"Interval Estimation for a Binomial Proportion", Statistical Science 2001) keeps close to its nominal
95% coverage for small n and for accuracies near 0% or 100% — where the textbook p ± 1.96·√(p(1−p)/n)
collapses to a zero-width interval. A mean over examples (the local Lipschitz estimate of the paper's
Eq. 3, a per-example random search) gets its standard error s/√n instead.

Reports print an accuracy as ``48.6 ± 1.0``: the point estimate and the interval's half-width. The
Wilson interval is not centred on the point estimate (it leans towards 50%), so the half-width is
(high − low)/2 and the exact bounds are kept in results.json.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from statistics import NormalDist

CONFIDENCE = 0.95


def z_value(confidence: float = CONFIDENCE) -> float:
    """The two-sided normal quantile: 1.95996... for 95%."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence!r} must lie in (0, 1)")
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def wilson_interval(successes: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval for a proportion ``successes / n``, as fractions in [0, 1].

    (p̂ + z²/2n ± z·√(p̂(1−p̂)/n + z²/4n²)) / (1 + z²/n). With no examples nothing is known: (0, 1).
    """
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return 0.0, 1.0
    z = z_value(confidence)
    p = successes / n
    denominator = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1.0 - p) / n + z * z / (4 * n * n))
    # The closed form is exact at the edges (k = 0 gives low = 0); clamp only float round-off.
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Accuracy:
    """An accuracy in percent with its number of examples and its Wilson interval (percent)."""

    correct: int
    n: int
    confidence: float = CONFIDENCE

    @property
    def percent(self) -> float:
        return 100.0 * self.correct / self.n if self.n else float("nan")

    @property
    def interval(self) -> tuple[float, float]:
        low, high = wilson_interval(self.correct, self.n, self.confidence)
        return 100.0 * low, 100.0 * high

    @property
    def half_width(self) -> float:
        low, high = self.interval
        return (high - low) / 2.0

    def as_dict(self) -> dict[str, float | int]:
        """The fields results.json stores next to an accuracy."""
        low, high = self.interval
        return {
            "value": self.percent,
            "n": self.n,
            "correct": self.correct,
            "ci95_low": low,
            "ci95_high": high,
        }

    def __str__(self) -> str:
        return format_with_error(self.percent, self.half_width)


def standard_error(values: Iterable[float]) -> float:
    """Standard error of the mean of ``values``: the sample standard deviation (n − 1) over √n."""
    values = [float(v) for v in values]
    if len(values) < 2:
        return float("nan")
    return statistics.stdev(values) / math.sqrt(len(values))


def standard_error_from_sums(total: float, total_sq: float, n: int) -> float:
    """The same from the sums Σx, Σx² and the count, which add up across batches and processes.

    NaN for fewer than two values (one value says nothing about the spread). Accumulate the sums in
    float64: Σx² − (Σx)²/n cancels when the spread is small next to the mean.
    """
    if n < 2:
        return float("nan")
    variance = max(0.0, (total_sq - total * total / n) / (n - 1))
    return math.sqrt(variance / n)


def format_with_error(value: float, error: float, digits: int = 1) -> str:
    """``48.6 ± 1.0``; just the value when the error is unknown (NaN)."""
    if error is None or math.isnan(error):
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} ± {error:.{digits}f}"


def t_interval(values: Iterable[float], confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """Mean of ``values`` (one per seed) and the Student-t interval of that mean: (mean, low, high).

    Over a handful of seeds the spread itself is uncertain, so the half-width is t_{n−1}·s/√n, not
    1.96·s/√n (t_{2} = 4.30 for three seeds: three seeds pin a mean down far less than the normal
    quantile suggests). One value has no spread to measure: (value, NaN, NaN).
    """
    values = [float(v) for v in values]
    if not values:
        raise ValueError("t_interval needs at least one value")
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, float("nan"), float("nan")
    z_value(confidence)  # the same check of the confidence
    from scipy.stats import t

    half = float(t.ppf(0.5 + confidence / 2.0, len(values) - 1)) * standard_error(values)
    return mean, mean - half, mean + half
