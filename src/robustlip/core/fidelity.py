"""The two fidelities every objective and estimator offers, and what each implies (docs/objectives.md, "Fidelity").

``paper``: the method as the paper defines it (mean-reduced losses, attacks in eval mode, Eq. 3's
maximisation, ...). ``faithful``: what the authors' code (github yangarbiter/robust-local-lipschitz)
computes, including its departures from the paper (sum-reduced losses, the Lipschitz step 0.003, ...),
so that the table presets can reproduce the published numbers.

One :class:`Fidelity` object owns what the setting means, so no module compares the raw string: an
objective asks ``fidelity.reduce(...)`` and ``fidelity.attack_mode``, the Lipschitz estimator
``fidelity.lipschitz_direction`` and ``fidelity.lipschitz_step(eps)``, the config's resolvers
``fidelity.sums_losses``. Each method's own departures (LLR's zeroed gradient, GR's step ``h``, ...) stay
in that method's module, keyed on ``fidelity.faithful``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from robustlip.core.errors import check_choice

#: The Lipschitz search's step in the authors' code: the code never passes one, so ``lolip/utils.py`` L33's
#: default applies (docs/authors-code.md §7, §13.1).
FAITHFUL_LIPSCHITZ_STEP = 0.003
#: The paper's step, relative to ε: "step size ε/5 and a total of 10 steps" (§5.1; docs/authors-code.md §14).
PAPER_RELATIVE_LIPSCHITZ_STEP = 0.2


@dataclass(frozen=True)
class Fidelity:
    """What one fidelity implies; ``str(fidelity)`` is its config spelling (``paper`` or ``faithful``)."""

    name: str
    #: Every loss is summed over the batch (the authors' code) instead of averaged (the paper).
    sums_losses: bool
    #: The mode the network is in while a training objective attacks it: the authors' code attacks in train mode.
    attack_mode: str
    #: Eq. 3's inner search: the paper maximises the ratio; the authors' code descends it (docs/authors-code.md).
    lipschitz_direction: str

    @property
    def faithful(self) -> bool:
        """The authors' code's behaviour (each method's own departures key on this)."""
        return self.name == "faithful"

    def reduce(self, per_example: Any) -> Any:
        """Mean over the batch (``paper``) or sum, as every loss of the authors' code (``faithful``)."""
        return per_example.sum() if self.sums_losses else per_example.mean()

    def lipschitz_step(self, eps: float) -> float:
        """The Lipschitz search's step: ε/5 (``paper``) or the authors' fixed 0.003 (``faithful``)."""
        return FAITHFUL_LIPSCHITZ_STEP if self.faithful else PAPER_RELATIVE_LIPSCHITZ_STEP * eps

    def __str__(self) -> str:
        return self.name


PAPER = Fidelity("paper", sums_losses=False, attack_mode="eval", lipschitz_direction="ascent")
FAITHFUL = Fidelity("faithful", sums_losses=True, attack_mode="train", lipschitz_direction="descent")
FIDELITIES = {fidelity.name: fidelity for fidelity in (PAPER, FAITHFUL)}


def fidelity_named(value: str | Fidelity, key: str = "fidelity") -> Fidelity:
    """The :class:`Fidelity` of a config value; anything but ``paper`` or ``faithful`` is one ConfigError naming ``key``."""
    if isinstance(value, Fidelity):
        return value
    return FIDELITIES[check_choice(key, value, FIDELITIES)]
