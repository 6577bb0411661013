"""Gradient-masking sanity checks: is the reported adversarial accuracy a real upper bound on robustness?

A model can look robust because the attack's gradients are useless (saturated softmax, quantisation,
randomness), not because it is. The usual symptoms (Athalye et al. 2018; Carlini et al. 2019,
"On evaluating adversarial robustness") are checked on the test set with extra attacks built from the
configured one (``variants``):

* ``decreasing_in_eps``: adversarial accuracy must not rise as ε grows (clean accuracy is the ε=0 point);
* ``near_zero_at_large_eps``: at a large radius (``large_eps``, default 0.5 in pixel units, enough to
  turn any image grey) accuracy must be (near) 0;
* ``more_steps``: ``steps_factor``× the steps (same step size) must not beat the attack by more than noise;
* ``not_weaker_than_fgsm``: the attack must not leave more points correct than one FGSM step.

"Noise" is ``max(min_tolerance, z · 100·sqrt(p(1−p)/n))`` percentage points, a z-standard-error band
of a binomial proportion at the larger of the two accuracies compared. Failures are written to
``results.json`` (section ``sanity``) and raised as :class:`GradientMaskingWarning`.

A check needs a variant of the attack (``attacks/variants.py``); one that the attack cannot have (an
attack without a step size has no ε variant) is skipped with one logged line, decided before any work
(:meth:`GradientMaskingChecks.prepare`), and listed under ``skipped`` in the section.

With several attacks (:func:`attack_comparison`), the symptom is one attack far above the pointwise
worst case of all of them: it overestimates robustness. AutoAttack's own flags join that section.
"""

from __future__ import annotations

import itertools
import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from robustlip.attacks.base import Attack
from robustlip.attacks.variants import fgsm_like, unsupported, with_steps
from robustlip.evaluation.probes import AccuracyCurve, Probe, adversarial_logits
from robustlip.metrics.accuracy import CorrectFraction

log = logging.getLogger(__name__)


class GradientMaskingWarning(UserWarning):
    """The evaluation attack shows a symptom of gradient masking; the adversarial accuracy may be too high."""


class GradientMaskingChecks(Probe):
    section = "sanity"

    def __init__(
        self,
        eps_factors: Sequence[float] = (0.5, 2.0),
        large_eps: float = 0.5,
        near_zero: float = 5.0,
        steps_factor: int = 2,
        min_tolerance: float = 1.0,
        z: float = 2.0,
        max_batches: int | None = None,
    ) -> None:
        super().__init__(max_batches)
        self.eps_factors = [float(f) for f in eps_factors]
        self.large_eps = float(large_eps)
        self.near_zero = float(near_zero)
        self.steps_factor = int(steps_factor)
        self.min_tolerance = float(min_tolerance)
        self.z = float(z)
        self.attack_acc = CorrectFraction()
        self.more_steps_acc = CorrectFraction()
        self.fgsm_acc = CorrectFraction()
        # Built by ``prepare``, when the attack's ε is known.
        self.curve: AccuracyCurve | None = None
        self.attack_steps: int | None = None
        #: Checks that do not apply to the attack, with the reason (set by ``prepare``).
        self.skipped: dict[str, str] = {}

    @property
    def observed(self) -> int:
        """Test examples the checks have seen."""
        return int(self.attack_acc.total)

    def prepare(self, attack: Attack) -> None:
        variants = {"decreasing_in_eps": "eps", "near_zero_at_large_eps": "eps", "more_steps": "steps",
                    "not_weaker_than_fgsm": "fgsm"}
        self.skipped = {}
        for check, variant in variants.items():
            reason = unsupported(attack, variant)
            if reason is not None:
                self.skipped[check] = reason
                log.info("gradient-masking check '%s' skipped: %s", check, reason)
        self.attack_steps = attack.search.steps
        self.curve = None
        if "decreasing_in_eps" not in self.skipped:
            radii = {0.0, attack.eps, self.large_eps, *(f * attack.eps for f in self.eps_factors)}
            self.curve = AccuracyCurve(sorted(radii))

    def observe(self, model: nn.Module, x: Tensor, y: Tensor, attack: Attack, clean: Tensor, adv: Tensor | None) -> None:
        if adv is None:
            return
        self.attack_acc.update(adv, y)
        if self.curve is not None:
            self.curve.update(model, x, y, attack, adv, clean)
        if "more_steps" not in self.skipped:
            stronger = with_steps(attack, self.attack_steps * self.steps_factor)
            self.more_steps_acc.update(adversarial_logits(model, stronger, x, y), y)
        if "not_weaker_than_fgsm" not in self.skipped:
            self.fgsm_acc.update(adversarial_logits(model, fgsm_like(attack), x, y), y)

    # -- the verdicts -------------------------------------------------------------------------------
    def tolerance(self, *accuracies: float) -> float:
        n = int(self.attack_acc.total)
        p = min(max(accuracies) / 100.0, 1.0)
        return max(self.min_tolerance, self.z * 100.0 * math.sqrt(p * (1.0 - p) / max(n, 1)))

    def results(self) -> dict[str, Any]:
        if self.observed == 0:
            return {"n": 0, "checks": {}, "passed": None, **({"skipped": self.skipped} if self.skipped else {})}
        attack = self.attack_acc.compute().item()
        checks: dict[str, Any] = {}
        points = self.curve.points() if self.curve is not None and self.curve.count() else None
        if points is not None:
            checks["decreasing_in_eps"] = self._decreasing(points)
            checks["near_zero_at_large_eps"] = self._near_zero(points)
        if self.fgsm_acc.total > 0:
            checks["not_weaker_than_fgsm"] = self._versus(
                "fgsm_acc", self.fgsm_acc.compute().item(), attack, "the attack leaves more points correct than FGSM"
            )
        if self.more_steps_acc.total > 0:
            more = self.more_steps_acc.compute().item()
            checks["more_steps"] = self._versus(
                f"acc_{self.attack_steps * self.steps_factor}_steps", more, attack,
                f"{self.steps_factor}x the steps beats the attack"
            )
        return {
            "n": int(self.attack_acc.total),
            "attack_acc": attack,
            **({"curve": points} if points is not None else {}),
            "checks": checks,
            **({"skipped": self.skipped} if self.skipped else {}),
            "passed": all(check["passed"] for check in checks.values()) if checks else None,
        }

    def _decreasing(self, points: list[dict[str, float]]) -> dict[str, Any]:
        rises = []
        for low, high in itertools.pairwise(points):
            if high["adv_acc"] > low["adv_acc"] + self.tolerance(low["adv_acc"], high["adv_acc"]):
                rises.append(f"{low['adv_acc']:.2f}% at ε={low['eps']:g} -> {high['adv_acc']:.2f}% at ε={high['eps']:g}")
        detail = "accuracy rises with ε: " + "; ".join(rises) if rises else "accuracy falls (within noise) as ε grows"
        return {"passed": not rises, "detail": detail}

    def _near_zero(self, points: list[dict[str, float]]) -> dict[str, Any]:
        acc = next(p["adv_acc"] for p in points if abs(p["eps"] - self.large_eps) < 1e-12)
        passed = acc <= self.near_zero
        return {
            "passed": passed,
            "eps": self.large_eps,
            "adv_acc": acc,
            "detail": f"{acc:.2f}% correct at ε={self.large_eps:g} (must be <= {self.near_zero:g}%)",
        }

    def _versus(self, name: str, other: float, attack: float, failure: str) -> dict[str, Any]:
        """Passes when the attack leaves at most noise more points correct than the ``other`` attack."""
        tol = self.tolerance(attack, other)
        passed = attack <= other + tol
        detail = f"attack {attack:.2f}% vs {name.replace('_acc', '')} {other:.2f}% (noise {tol:.2f} pp)"
        return {"passed": passed, "attack_acc": attack, name: other, "tolerance": tol,
                "detail": detail if passed else f"{failure}: {detail}"}

    def report(self, section: dict[str, Any]) -> None:
        for name, check in section.get("checks", {}).items():
            if not check["passed"]:
                message = f"gradient-masking check '{name}' failed: {check['detail']}"
                log.warning(message)
                warnings.warn(message, GradientMaskingWarning, stacklevel=2)


def merge_flags(flags_per_process: list[dict[str, dict[str, dict[str, Any]]]]) -> dict[str, dict[str, dict[str, Any]]]:
    """The attacks' own flags of every process in one record: ``{attack: {flag: {"batches", "message"}}}``."""
    merged: dict[str, dict[str, dict[str, Any]]] = {}
    for process in flags_per_process:
        for attack, fired in process.items():
            for flag, entry in fired.items():
                record = merged.setdefault(attack, {}).setdefault(flag, {"batches": 0, "message": entry["message"]})
                record["batches"] += entry["batches"]
    return merged


def attack_comparison(attacks: Mapping[str, Attack], metrics: Mapping[str, float],
                      flags: dict[str, dict[str, dict[str, Any]]], threshold: float, several: bool) -> dict[str, Any]:
    """results.json's ``gradient_masking`` section: the attacks' own flags, each attack's distance to the worst case.

    An attack more than ``threshold`` points above the pointwise worst case overestimates robustness,
    a symptom of gradient masking, and gets a warning line, unless it is a single step from the clean
    point (FGSM): a one-step baseline being weaker than a search is expected, not a symptom. Empty when
    there is nothing to say: one attack that keeps no flags.
    """
    if not several and not any(attack.reports_own_checks for attack in attacks.values()):
        return {}
    section: dict[str, Any] = {"flags": flags, "warnings": []}
    for attack, fired in flags.items():
        for flag, entry in fired.items():
            section["warnings"].append(f"{attack}: AutoAttack flag '{flag}' on {entry['batches']} batch(es): {entry['message']}")
    worst = metrics.get("test/adv_acc")
    if several and worst is not None:
        gaps = {name: metrics[f"test/adv_acc/{name}"] - worst for name in attacks if f"test/adv_acc/{name}" in metrics}
        section["gaps_to_worst_case"] = gaps
        section["gap_threshold"] = threshold
        if "pgd" in attacks and "autoattack" in attacks:
            section["pgd_minus_autoattack"] = metrics["test/adv_acc/pgd"] - metrics["test/adv_acc/autoattack"]
        for name, gap in gaps.items():
            if gap > threshold and not attacks[name].single_step:
                section["warnings"].append(
                    f"test/adv_acc/{name} is {gap:.1f} points above the worst case over all attacks "
                    f"(threshold {threshold:g}): {name} overestimates robustness; "
                    "the model or its training attack may mask gradients"
                )
    return section
