"""Variants of a configured attack: the same adversary at another radius or with more steps.

The ε sweep and the gradient-masking checks ask "what does *this* attack do at ε' / with 2× the
steps?". Rebuilding it from config would lose whatever the user set (norm, restarts, start, model
mode, a custom threat model), so the instantiated attack is copied and only the radius or the
number of steps is changed. The step size is scaled with ε (the attack keeps its step *relative* to
the radius, e.g. PGD's ε/5) and kept as it is when only the steps change (same step, longer search).

An attack that runs another one inside (the Multi-Targeted attack runs one targeted PGD per class,
``targeted_pgd``) keeps its threat model and steps there: the variant is the outer attack around a
variant of the inner one. :func:`unsupported` says, before any work, which variants an attack cannot
have (e.g. an attack with no step size has no ε variant), so a probe can skip or refuse up front.
"""

from __future__ import annotations

import copy

from robustlip.attacks.base import Attack
from robustlip.attacks.pgd import FGSM
from robustlip.runs.errors import ConfigError

#: Attributes under which an attack keeps the attack it runs inside (MultiTargeted: its targeted PGD).
INNER_ATTACKS = ("targeted_pgd",)
#: What each variant needs on the attack that holds the threat model.
NEEDS = {"eps": ("threat", "eps", "step_size"), "steps": ("steps",), "fgsm": ("threat", "eps")}


def _inner(attack: Attack) -> tuple[str | None, Attack]:
    """(attribute, attack) of the attack that holds the threat model and the steps: an inner one, or itself."""
    for name in INNER_ATTACKS:
        inner = getattr(attack, name, None)
        if isinstance(inner, Attack):
            return name, inner
    return None, attack


def unsupported(attack: Attack, variant: str) -> str | None:
    """None when ``variant`` ('eps', 'steps' or 'fgsm') can be built for ``attack``, else the reason why not."""
    _, holder = _inner(attack)
    missing = [name for name in NEEDS[variant] if not hasattr(holder, name)]
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
    """``make`` applied to the attack that holds the threat model, re-wrapped in the outer attack if there is one."""
    name, inner = _inner(attack)
    if name is None:
        return make(attack)
    outer = copy.copy(attack)
    setattr(outer, name, make(inner))
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


def steps_of(attack: Attack) -> int | None:
    """The number of steps of the attack's search (its inner attack's for Multi-Targeted), None if it has none."""
    return getattr(_inner(attack)[1], "steps", None)


def norm_of(attack: Attack) -> str | None:
    """The norm of the attack's threat model ('inf', '2'), None if it has none."""
    return getattr(getattr(_inner(attack)[1], "threat", None), "norm", None)


def fgsm_like(attack: Attack) -> Attack:
    """FGSM with the attack's radius, norm and model mode: the baseline a multi-step attack must beat."""
    _require(attack, "fgsm")
    holder = _inner(attack)[1]
    return FGSM(eps=holder.eps, norm=holder.threat.norm, model_mode=getattr(attack, "model_mode", "eval"))
