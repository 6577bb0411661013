"""Madry adversarial training, AT (docs/authors-code.md §5.2).

L = CE(f(x'), y) with x' the PGD attack of the current model: ℓ∞ (or ℓ2), ε, 10 steps of ε/5, one
uniform random start, projection onto the ε-ball ∩ [0, 1]. The clean example is not used.

Fidelity (docs/authors-code.md §13.4, §13.6):

* ``paper``: the attack runs in eval mode (the network the attack should beat is the one that is
  evaluated), the loss is the batch mean;
* ``faithful``: the attack runs in *train* mode, as the authors' code does (dropout active, BatchNorm
  using and updating batch statistics during all attack forwards), and the loss is the batch sum.

The logits returned for the training accuracy are those of the adversarial batch, as the authors log
them (docs/authors-code.md §4): the only forward pass this objective makes.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from robustlip.attacks import PGD
from robustlip.core.fidelity import Fidelity
from robustlip.objectives.base import Objective, ObjectiveOutput, check_attack_budget


def madry_attack(eps: float, norm: str, steps: int, step_size: float | None, fidelity: Fidelity) -> PGD:
    """The training attack of AT and RST: PGD with a uniform random start, in the fidelity's model mode."""
    eps, norm, steps, step_size = check_attack_budget(eps, norm, steps, step_size)
    return PGD(
        eps=eps,
        norm=norm,
        steps=steps,
        step_size=step_size,
        random_start=True,
        model_mode=fidelity.attack_mode,
    )


class AdversarialTraining(Objective):
    """L = CE(f(PGD(x)), y), mean- or sum-reduced by fidelity."""

    name = "at"
    title = "AT"
    table_order = 3

    def __init__(
        self,
        eps: float,
        norm: str = "inf",
        steps: int = 10,
        step_size: float | None = None,
        fidelity: str = "paper",
        name: str | None = None,
    ) -> None:
        super().__init__(fidelity, name)
        self.attack = madry_attack(eps, norm, steps, step_size, self.fidelity)

    def extra_repr(self) -> str:
        return f"fidelity={self.fidelity}, attack={self.attack!r}"

    def forward(self, model: nn.Module, x: Tensor, y: Tensor) -> ObjectiveOutput:
        x_adv = self.attack(model, x, y)
        adv_logits = model(x_adv)
        robust = F.cross_entropy(adv_logits, y, reduction="none")
        return ObjectiveOutput(loss=self.reduce(robust), logits=adv_logits, parts={"robust": robust.mean().detach()})
