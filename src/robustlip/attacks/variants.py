"""Variants of a configured attack: the same adversary at another radius or with more steps.

The ε sweep and the gradient-masking checks ask "what does *this* attack do at ε' / with 2× the
steps?". Rebuilding it from config would lose whatever the user set (norm, restarts, start, model
mode, a custom threat model), so the instantiated attack is copied and only the radius or the
number of steps is changed. The step size is scaled with ε (the attack keeps its step *relative* to
the radius, e.g. PGD's ε/5) and kept as it is when only the steps change (same step, longer search).
"""

from __future__ import annotations

import copy

from robustlip.attacks.base import Attack
from robustlip.attacks.pgd import FGSM
from robustlip.runs.errors import ConfigError


def _require(attack: Attack, *names: str) -> None:
    missing = [name for name in names if not hasattr(attack, name)]
    if missing:
        raise ConfigError(
            f"attack={type(attack).__name__} has no {', '.join(missing)}; the ε sweep and the sanity checks "
            "need an attack with a threat model and a step size (PGD, FGSM and their subclasses)"
        )


def with_eps(attack: Attack, eps: float) -> Attack:
    """A copy of ``attack`` searching the ε'-ball instead, its step size scaled by ε'/ε."""
    _require(attack, "threat", "eps", "step_size")
    variant = copy.copy(attack)
    variant.threat = copy.copy(attack.threat)
    variant.threat.eps = float(eps)
    variant.step_size = attack.step_size * eps / attack.eps if attack.eps > 0 else float(eps) / 5
    return variant


def with_steps(attack: Attack, steps: int) -> Attack:
    """A copy of ``attack`` taking ``steps`` steps of the same size."""
    _require(attack, "steps")
    variant = copy.copy(attack)
    variant.steps = int(steps)
    return variant


def fgsm_like(attack: Attack) -> Attack:
    """FGSM with the attack's radius, norm and model mode: the baseline a multi-step attack must beat."""
    _require(attack, "threat", "eps")
    return FGSM(eps=attack.eps, norm=attack.threat.norm, model_mode=getattr(attack, "model_mode", "eval"))
