"""TRADES's inner maximisation: PGD on the divergence between clean and perturbed predictions (docs/authors-code.md §5.4).

The search increases Σ_i KL( p(x_i) ‖ p(x'_i) ), where p is the softmax of the logits and p(x) is
computed once, at the clean batch, as a constant. It needs no labels: TRADES pushes the prediction
away from the model's own clean prediction, not from the true class. Defaults follow the authors'
and Zhang et al.'s code: eval mode, a Gaussian start x + 0.001·N(0, I) that is not clipped before the
first step, 10 sign steps of 2ε/10 = ε/5, projection onto the ε-ball ∩ [0, 1] after every step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustlip.attacks.pgd import PGD, AscentObjective


def prediction_divergence(clean_logits: Tensor, perturbed_logits: Tensor) -> Tensor:
    """Per-example KL( softmax(clean) ‖ softmax(perturbed) ), TRADES's robust term."""
    return F.kl_div(
        F.log_softmax(perturbed_logits, dim=1), F.log_softmax(clean_logits, dim=1), reduction="none", log_target=True
    ).sum(dim=1)


class KLDivergencePGD(PGD):
    """PGD that ascends the KL divergence from the clean prediction (TRADES, docs/authors-code.md §5.4)."""

    def __init__(
        self,
        eps: float,
        norm: str = "inf",
        steps: int = 10,
        step_size: float | None = None,
        random_start: bool | str = "gaussian",
        model_mode: str = "eval",
    ) -> None:
        super().__init__(
            eps=eps, norm=norm, steps=steps, step_size=step_size, random_start=random_start, model_mode=model_mode
        )

    def ascent_objective(self, model: nn.Module, x: Tensor, y: Tensor) -> AscentObjective:
        with torch.no_grad():
            clean_logits = model(x).float()
        return lambda z: prediction_divergence(clean_logits, model(z).float()).sum()
