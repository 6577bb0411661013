"""The Multi-Targeted attack (Gowal et al. 2019) as the authors run it (docs/authors-code.md §6.3, §13.14).

For every class j other than the true class y, a targeted PGD run pulls the input towards j
(cross-entropy of j decreased): 20 steps of 2ε/20 = ε/10, one uniform random start, projection onto
the ε-ball ∩ [0, 1]. Of the C − 1 candidates each example keeps the most adversarial: a misclassified
candidate first, and among those (or among none) the one with the highest target probability p_j(x'_j)
— the authors' rule, argmax over j ≠ y of p_j(x'_j), with misclassification put first so that a success
is never traded for a confident near-miss.

Targets are enumerated as j = (y + k) mod C for k = 1..C−1, so no run is spent on the true class (the
authors attack it too and then discard it).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from robustlip.attacks.base import Attack
from robustlip.attacks.pgd import PGD


class MultiTargeted(Attack):
    """One targeted PGD per wrong class; per example the strongest candidate is kept."""

    def __init__(
        self,
        eps: float,
        norm: str = "inf",
        steps: int = 20,
        step_size: float | None = None,
        random_start: bool | str = True,
        model_mode: str = "eval",
    ) -> None:
        super().__init__(model_mode)
        #: The targeted PGD run once per wrong class; it holds the threat model and the steps.
        self.inner = PGD(
            eps=eps,
            norm=norm,
            steps=steps,
            step_size=step_size,
            random_start=random_start,
            targeted=True,
            model_mode=model_mode,
        )

    def __repr__(self) -> str:
        pgd = self.inner
        return (
            f"{type(self).__name__}(norm={pgd.threat.norm}, eps={self.eps}, steps={pgd.steps}, "
            f"step_size={pgd.step_size:.4g}, start={pgd.start}, model_mode={self.model_mode})"
        )

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        if self.eps == 0:
            return x
        with torch.no_grad():
            num_classes = model(x[:1]).shape[1]
        best = x
        best_score = torch.full((x.shape[0],), -1.0, device=x.device)
        for shift in range(1, num_classes):
            target = (y + shift) % num_classes
            candidate = self.inner.perturb(model, x, target)
            score = self._score(model, candidate, y, target)
            better = score > best_score
            best = torch.where(better.view(-1, *([1] * (x.dim() - 1))), candidate, best)
            best_score = torch.where(better, score, best_score)
        return best

    @staticmethod
    @torch.no_grad()
    def _score(model: nn.Module, candidate: Tensor, y: Tensor, target: Tensor) -> Tensor:
        """Misclassified counts first (+2), then the target's probability (in [0, 1])."""
        logits = model(candidate).float()
        target_probability = logits.softmax(dim=1).gather(1, target[:, None]).squeeze(1)
        return (logits.argmax(dim=1) != y).float() * 2.0 + target_probability
