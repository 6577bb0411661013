"""Local linearity regularisation, LLR (Qin et al. 2019; docs/authors-code.md §5.6).

With γ(δ) = |ℓ(x+δ) − ℓ(x) − δᵀ∇ₓℓ(x)| and δ* the perturbation in the ε-ball that maximises it
(``attacks.LocalLinearityPGD``, eval mode, 2 steps of ε/2 from a 0.001-Gaussian start),

    paper:     L = ℓ(x) + λ·γ(δ*) + μ·|δ*ᵀ∇ₓℓ(x)|          (batch means)

The outer ∇ₓℓ(x) is computed with ``create_graph=True`` (double back-propagation), so both
regularisers train the network's input gradient, as Qin et al. define them. Defaults (λ, μ) = (4, 3);
the paper uses (3, 6) on Restricted ImageNet.

    faithful:  L = Σ_i ℓ_i(x) + λ·Σ_i ℓ_i(x + δ*_i)          (docs/authors-code.md §5.6, §13.2)

The authors' code zeroes ∇ₓℓ(x) in place before using it and comments out ℓ(x) inside γ, so γ
collapses to the summed cross-entropy at x + δ*, the μ term vanishes (μ has no effect), and the inner
attack is a 2-step normalised-gradient ascent of the cross-entropy with rescaling projection. The
result is an RST-like objective with a weak attack; it is what the paper's LLR rows measured.

The clean logits are returned for the training accuracy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustlip.attacks import LocalLinearityPGD, directional_derivative, linearity_gap
from robustlip.core.errors import check_non_negative
from robustlip.objectives.base import Objective, ObjectiveOutput, check_attack_budget


class LocalLinearity(Objective):
    """L = ℓ(x) + λ·γ(δ*) + μ·|δ*ᵀ∇ℓ(x)| (paper) or Σℓ(x) + λ·Σℓ(x+δ*) (faithful)."""

    name = "llr"
    title = "LLR"
    table_order = 2

    def __init__(
        self,
        eps: float,
        lam: float = 4.0,
        mu: float = 3.0,
        norm: str = "inf",
        steps: int = 2,
        step_size: float | None = None,
        fidelity: str = "paper",
        name: str | None = None,
    ) -> None:
        super().__init__(fidelity, name)
        self.lam = check_non_negative("objective.lam", lam)
        self.mu = check_non_negative("objective.mu", mu)
        eps, norm, steps, step_size = check_attack_budget(eps, norm, steps, step_size)
        self.attack = LocalLinearityPGD(eps=eps, norm=norm, steps=steps, step_size=step_size, faithful=self.faithful)

    def label_knobs(self) -> list[tuple[str, float]]:
        # The paper's (λ, μ) = (4, 3) is the plain "LLR" row; other settings name both.
        return [] if (self.lam, self.mu) == (4.0, 3.0) else [("λ", self.lam), ("μ", self.mu)]

    def extra_repr(self) -> str:
        return f"lam={self.lam}, mu={self.mu}, fidelity={self.fidelity}, attack={self.attack!r}"

    def forward(self, model: nn.Module, x: Tensor, y: Tensor) -> ObjectiveOutput:
        delta = self.attack(model, x, y) - x
        return self._faithful_loss(model, x, y, delta) if self.faithful else self._paper_loss(model, x, y, delta)

    def _paper_loss(self, model: nn.Module, x: Tensor, y: Tensor, delta: Tensor) -> ObjectiveOutput:
        x = x.detach().requires_grad_(True)
        logits = model(x)
        natural = F.cross_entropy(logits, y, reduction="none")
        (grad,) = torch.autograd.grad(natural.sum(), x, create_graph=True)
        perturbed = F.cross_entropy(model(x.detach() + delta), y, reduction="none")
        gamma = linearity_gap(perturbed, natural, grad, delta)
        grad_alignment = directional_derivative(grad, delta).abs()
        loss = self.reduce(natural) + self.lam * self.reduce(gamma) + self.mu * self.reduce(grad_alignment)
        parts = {"natural": natural.mean().detach(), "reg": gamma.mean().detach(), "reg_grad": grad_alignment.mean().detach()}
        return ObjectiveOutput(loss=loss, logits=logits, parts=parts)

    def _faithful_loss(self, model: nn.Module, x: Tensor, y: Tensor, delta: Tensor) -> ObjectiveOutput:
        logits = model(x)
        natural = F.cross_entropy(logits, y, reduction="none")
        perturbed = F.cross_entropy(model(x + delta), y, reduction="none")
        loss = self.reduce(natural) + self.lam * self.reduce(perturbed)
        parts = {"natural": natural.mean().detach(), "robust": perturbed.mean().detach()}
        return ObjectiveOutput(loss=loss, logits=logits, parts=parts)
