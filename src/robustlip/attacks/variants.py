"""Variants of a configured attack: the same adversary at another radius or with more steps.

The ε sweep and the gradient-masking checks ask "what does *this* attack do at ε' / with 2× the
steps?". Rebuilding it from config would lose whatever the user set (norm, restarts, start, model
mode, a custom threat model), so the instantiated attack is copied and only the radius or the
number of steps is changed. The step size is scaled with ε (the attack keeps its step *relative* to
the radius, e.g. PGD's ε/5) and kept as it is when only the steps change (same step, longer search).

An attack that runs another one inside (the Multi-Targeted attack runs one targeted PGD per class,
its ``inner`` attack) keeps its threat model and steps there: the variant is the outer attack around a
variant of the inner one. What a variant needs is what the attack declares (``Attack.threat``,
``steps``, ``step_size``; attacks/base.py), never guessed. :func:`unsupported` says, before any work, which variants an attack cannot
have (e.g. an attack with no step size has no ε variant), so a probe can skip or refuse up front.
"""

from __future__ import annotations

import copy

from robustlip.attacks.base import Attack
from robustlip.attacks.pgd import FGSM
from robustlip.core.errors import ConfigError

#: What each variant needs on the attack that holds the search (``Attack.search``), by its declared knobs.
NEEDS = {"eps": ("threat", "step_size"), "steps": ("steps",), "fgsm": ("threat",)}
#: How a missing knob is named in the reason.
KNOB_NAMES = {"threat": "threat model", "step_size": "step size", "steps": "steps"}


def unsupported(attack: Attack, variant: str) -> str | None:
    """None when ``variant`` ('eps', 'steps' or 'fgsm') can be built for ``attack``, else the reason why not."""
    missing = [KNOB_NAMES[knob] for knob in NEEDS[variant] if getattr(attack.search, knob) is None]
    if not missing:
        return None
    return f"{type(attack).__name__} has no {', '.join(missing)}"


def _require(attack: Attack, variant: str) -> None:
    reason = unsupported(attack, variant)
    if reason is not None:
        raise ConfigError(
            f"attack={type(attack).__name__}: {reason}; the ε sweep and the sanity checks need an attack with a "
            "threat model and a step size (PGD, FGSM, Multi-Targeted and their subclasses)"
        )


def _around(attack: Attack, make) -> Attack:
    """``make`` applied to the attack that holds the search, re-wrapped in the attacks around it."""
    if attack.inner is None:
        return make(attack)
    outer = copy.copy(attack)
    outer.inner = _around(attack.inner, make)
    return outer


def with_eps(attack: Attack, eps: float) -> Attack:
    """A copy of ``attack`` searching the ε'-ball instead, its step size scaled by ε'/ε."""
    _require(attack, "eps")

    def make(holder: Attack) -> Attack:
        variant = copy.copy(holder)
        variant.threat = copy.copy(holder.threat)
        variant.threat.eps = float(eps)
        variant.step_size = holder.step_size * eps / holder.eps if holder.eps > 0 else float(eps) / 5
        return variant

    return _around(attack, make)


def with_steps(attack: Attack, steps: int) -> Attack:
    """A copy of ``attack`` taking ``steps`` steps of the same size."""
    _require(attack, "steps")

    def make(holder: Attack) -> Attack:
        variant = copy.copy(holder)
        variant.steps = int(steps)
        return variant

    return _around(attack, make)


def fgsm_like(attack: Attack) -> Attack:
    """FGSM with the attack's radius, norm and model mode: the baseline a multi-step attack must beat."""
    _require(attack, "fgsm")
    return FGSM(eps=attack.eps, norm=attack.norm, model_mode=attack.model_mode)
