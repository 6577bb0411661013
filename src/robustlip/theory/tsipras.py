"""Closed forms of Tsipras et al. (ICLR 2019), Sec. 2: the distribution where robustness costs accuracy.

The distribution D (their Eq. 7; ``data=tsipras``, docs/tsipras.md): y uniform in {−1, +1}; a robust
feature x₁ = y with probability p, −y otherwise; d non-robust features x₂..x_{d+1} ~ N(ηy, 1).
Everything below is in *feature* units (the DataModule writes a feature v as the pixel 0.5 + scale·v,
so a pixel radius ε is ε/scale here) and ignores the pixel box, which clips |v| > 4 — a probability of
~6e-5 per feature on the default set, far below any tolerance a test can resolve.

Every classifier these results speak about is a *linear rule* sign(a₁x₁ + Σ aᵢxᵢ + c), so one formula
(:func:`linear_rule_accuracy`) gives the standard accuracy and, with the worst-case ℓ∞ shift
−ε‖a‖₁·y of the score, the robust accuracy of each:

* the Bayes-optimal classifier (log-likelihood ratio): a₁ = log(p/(1−p)), aᵢ = 2η, c = 0;
* the averaging "meta-feature" classifier of their Sec. 2.1: sign(mean(x₂..x_{d+1})), standard accuracy
  Φ(η√d) and, at ε = 2η, robust accuracy Φ(−η√d);
* the robust classifier sign(x₁): standard and robust accuracy p for every ε < 1 (Sec. 2.1);
* any trained linear model, read from its weights (``metrics.linear.affine_map``).

Theorem 2.1 bounds every classifier: standard accuracy 1 − δ forces robust accuracy at most
p/(1−p)·δ against ε ≥ 2η (:func:`robust_accuracy_bound`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from robustlip.core.errors import ConfigError


def normal_cdf(t: float) -> float:
    """Φ(t); ±inf give 1 and 0, so a rule with no noise term is a step function."""
    if t == math.inf:
        return 1.0
    if t == -math.inf:
        return 0.0
    return 0.5 * (1.0 + math.erf(t / math.sqrt(2.0)))


def default_eta(d: int) -> float:
    """η = 3/√d: the averaging classifier is then Φ(3) = 99.87 % accurate whatever d (data=tsipras)."""
    return 3.0 / math.sqrt(d)


@dataclass(frozen=True)
class TsiprasSetting:
    """The distribution's parameters and the ℓ∞ radius ε, all in feature units."""

    p: float
    eta: float
    d: int
    eps: float = 0.0

    def __post_init__(self) -> None:
        if not 0.5 < self.p < 1:
            raise ConfigError(f"p={self.p!r} is not allowed; the robust feature must agree with y with probability in (0.5, 1)")
        if not self.eta > 0:
            raise ConfigError(f"eta={self.eta!r} is not allowed; it must be > 0")
        if not (isinstance(self.d, int) and self.d >= 1):
            raise ConfigError(f"d={self.d!r} is not allowed; it must be an integer >= 1")
        if not self.eps >= 0:
            raise ConfigError(f"eps={self.eps!r} is not allowed; it must be >= 0")


def _score_probability(mean: float, std: float) -> float:
    """P(N(mean, std²) > 0)."""
    if std == 0:
        return 1.0 if mean > 0 else (0.5 if mean == 0 else 0.0)
    return normal_cdf(mean / std)


def linear_rule_accuracy(
    setting: TsiprasSetting, a_robust: float, a_weak: Sequence[float] | Tensor, bias: float = 0.0, eps: float | None = None
) -> float:
    """Population accuracy of sign(a₁x₁ + Σ aᵢxᵢ + c) on D, under the worst ℓ∞ shift of radius ``eps``.

    Given y and x₁, the score is Gaussian: mean a₁x₁ + ηy·Σaᵢ + c, variance Σaᵢ². The worst ℓ∞
    perturbation of radius ε moves every feature by −ε·sign(aᵢ)·y, i.e. the score by −ε‖a‖₁·y (ε = 0:
    the standard accuracy). Averaged over y = ±1 and x₁ = ±y with weights p, 1 − p.
    """
    eps = setting.eps if eps is None else float(eps)
    weak = torch.as_tensor(a_weak, dtype=torch.float64).flatten()
    if weak.numel() != setting.d:
        raise ValueError(f"a linear rule on this setting has {setting.d} weak weights, got {weak.numel()}")
    total, std = float(weak.sum()), float(weak.norm())
    shift = eps * (abs(a_robust) + float(weak.abs().sum()))
    accuracy = 0.0
    for y in (1, -1):
        for x1, weight in ((y, setting.p), (-y, 1 - setting.p)):
            mean = a_robust * x1 + setting.eta * y * total + bias - shift * y
            # Correct when the score has the sign of y.
            accuracy += 0.5 * weight * _score_probability(y * mean, std)
    return accuracy


def bayes_weights(setting: TsiprasSetting) -> tuple[float, float]:
    """(a₁, aᵢ) of the Bayes-optimal rule: the log-likelihood ratio log(p/(1−p))·x₁ + 2η·Σxᵢ."""
    return math.log(setting.p / (1 - setting.p)), 2 * setting.eta


def bayes_standard_accuracy(setting: TsiprasSetting) -> float:
    a1, a = bayes_weights(setting)
    return linear_rule_accuracy(setting, a1, [a] * setting.d, eps=0.0)


def bayes_robust_accuracy(setting: TsiprasSetting) -> float:
    """The Bayes-optimal rule under the radius ``setting.eps``: ≈ 0 at ε = 2η (Sec. 2.1)."""
    a1, a = bayes_weights(setting)
    return linear_rule_accuracy(setting, a1, [a] * setting.d)


def averaging_standard_accuracy(setting: TsiprasSetting) -> float:
    """sign(mean of the weak features): Φ(η√d)."""
    return normal_cdf(setting.eta * math.sqrt(setting.d))


def averaging_robust_accuracy(setting: TsiprasSetting) -> float:
    """The same rule after every weak feature moved by ε against y: Φ((η − ε)√d)."""
    return normal_cdf((setting.eta - setting.eps) * math.sqrt(setting.d))


def robust_classifier_accuracy(setting: TsiprasSetting) -> float:
    """sign(x₁): p, both standard and robust, for every ε < 1 (x₁ = ±1 cannot change sign)."""
    return setting.p if setting.eps < 1 else linear_rule_accuracy(setting, 1.0, [0.0] * setting.d)


def robust_accuracy_bound(setting: TsiprasSetting, standard_accuracy: float) -> float:
    """Theorem 2.1: a classifier with standard accuracy 1 − δ has robust accuracy ≤ p/(1−p)·δ at ε ≥ 2η."""
    if setting.eps < 2 * setting.eta:
        return 1.0
    return min(1.0, setting.p / (1 - setting.p) * max(0.0, 1.0 - standard_accuracy))


def binomial_tolerance(accuracy: float, n: int, z: float = 4.0) -> float:
    """z standard errors of an accuracy measured on ``n`` independent examples (at least one example's worth).

    The floor of 1/n keeps the tolerance sane when the predicted accuracy is 0 or 1.
    """
    return max(z * math.sqrt(max(accuracy * (1 - accuracy), 0.0) / n), 1.0 / n)


def closed_forms(setting: TsiprasSetting) -> dict[str, float]:
    """The three values of the paper's argument (and the averaging rule's), as fractions."""
    return {
        "bayes_standard_acc": bayes_standard_accuracy(setting),
        "bayes_robust_acc": bayes_robust_accuracy(setting),
        "robust_classifier_acc": robust_classifier_accuracy(setting),
        "averaging_standard_acc": averaging_standard_accuracy(setting),
        "averaging_robust_acc": averaging_robust_accuracy(setting),
    }
