"""TRADES (Zhang et al. 2019), the sum version the paper runs (``strades``; docs/authors-code.md §5.4).

L = CE(f(x), y) + β · KL( p(x) ‖ p(x') ), x' = argmax over the ε-ball ∩ [0, 1] of the same KL
(``attacks.KLDivergencePGD``: eval mode, Gaussian 0.001 start, 10 sign steps of ε/5). The clean
prediction p(x) is *not* detached in the KL term: gradients flow through both arms, as in the
reference TRADES code. The paper sweeps β ∈ {1, 3, 6}; β = 0 is natural training.

Both fidelities run the train-mode forwards in TRADES' own order (Zhang et al.'s ``trades.py`` L79-82 at
6e8e11b, github yaodongyu/TRADES; the authors copy it, ``lolip/models/torch_utils/trades.py`` L81-84 at
656616a, github yangarbiter/robust-local-lipschitz): clean for the CE term, adversarial, then clean
*again* for p(x) in the KL term. The third forward matters twice over: with BatchNorm (WRN-40-10,
ResNet-50) every train-mode forward updates the running statistics, so they end on the clean batch
(not the adversarial one) and the network evaluated afterwards differs; with dropout the KL's clean
arm gets its own mask.

Fidelity:

* ``paper`` averages CE and KL over the batch, as Zhang et al.'s code does (mean CE, KL summed ÷ B);
* ``faithful`` sums both, Σ_i [CE_i + β·KL_i] (the authors' ``strades``, docs/authors-code.md §5.4,
  §13.4).

The inner loop is in eval mode in both.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from robustlip.attacks import KLDivergencePGD, prediction_divergence
from robustlip.core.errors import check_non_negative
from robustlip.objectives.base import Objective, ObjectiveOutput, check_attack_budget


class TRADES(Objective):
    """L = CE(x) + β·KL(p(x) ‖ p(x')), mean- or sum-reduced by fidelity."""

    name = "trades"
    title = "TRADES"
    table_order = 5

    def __init__(
        self,
        eps: float,
        beta: float = 1.0,
        norm: str = "inf",
        steps: int = 10,
        step_size: float | None = None,
        fidelity: str = "paper",
        name: str | None = None,
    ) -> None:
        super().__init__(fidelity, name)
        self.beta = check_non_negative("objective.beta", beta)
        eps, norm, steps, step_size = check_attack_budget(eps, norm, steps, step_size)
        self.attack = KLDivergencePGD(eps=eps, norm=norm, steps=steps, step_size=step_size, model_mode="eval")

    def label_knobs(self) -> list[tuple[str, float]]:
        return [("β", self.beta)]

    def extra_repr(self) -> str:
        return f"beta={self.beta}, fidelity={self.fidelity}, attack={self.attack!r}"

    def forward(self, model: nn.Module, x: Tensor, y: Tensor) -> ObjectiveOutput:
        x_adv = self.attack(model, x, y)
        logits = model(x)
        natural = F.cross_entropy(logits, y, reduction="none")
        adversarial_logits = model(x_adv)
        robust = prediction_divergence(model(x), adversarial_logits)
        loss = self.reduce(natural) + self.beta * self.reduce(robust)
        parts = {"natural": natural.mean().detach(), "robust": robust.mean().detach()}
        return ObjectiveOutput(loss=loss, logits=logits, parts=parts)
