"""LLR's inner maximisation: the perturbation where the loss is least linear (Qin et al. 2019; docs/authors-code.md §5.6).

The local linearity of the loss ℓ around x is measured by the gap between ℓ and its first-order
Taylor expansion,

    γ(δ) = | ℓ(x + δ) − ℓ(x) − δᵀ∇ₓℓ(x) |,

and LLR trains on the δ in the ε-ball that maximises it. Two behaviours, chosen by ``faithful``:

* paper (``faithful=False``): per-example γ summed over the batch, ℓ(x) and ∇ₓℓ(x) computed once at the
  clean batch; the threat model's own steepest step and projection.
* faithful (docs/authors-code.md §13.2): the authors' code zeroes ∇ₓℓ(x) in place before using it and comments out
  ℓ(x), so the ascended quantity is |Σ_i ℓ_i(x + δ_i)| = Σ_i ℓ_i(x + δ_i) — a plain cross-entropy
  attack; steps are the gradient divided by its ℓ∞ norm and the projection clamps to the box then
  rescales δ with ``torch.renorm`` (:class:`LinfRenormThreat`); a zero gradient is replaced by noise,
  as the authors' is. tests/test_reference_code.py checks the whole step against a transcription.

Both start at x + 0.001·N(0, I) and take 2 steps of ε/2 by default (the authors' settings).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustlip.attacks.pgd import PGD, AscentObjective
from robustlip.attacks.threat import L2Threat, LinfRenormThreat, ThreatModel, make_threat

#: The authors' LLR step: ε/2, for their 2 steps (docs/authors-code.md §5.6).
DEFAULT_RELATIVE_STEP = 0.5


def linearity_gap(loss_perturbed: Tensor, loss_clean: Tensor, grad_clean: Tensor, delta: Tensor) -> Tensor:
    """Per-example γ = |ℓ(x+δ) − ℓ(x) − δᵀ∇ℓ(x)| from per-example losses and input gradients."""
    return (loss_perturbed - loss_clean - directional_derivative(grad_clean, delta)).abs()


def directional_derivative(grad: Tensor, delta: Tensor) -> Tensor:
    """Per-example δᵀ∇ℓ(x): the first-order change of the loss along δ."""
    return (grad * delta).flatten(1).sum(dim=1)


def _faithful_threat(norm: str, eps: float) -> ThreatModel:
    base = make_threat(norm, eps)
    # For ℓ2 the authors' normalise-then-renorm loop *is* the standard ℓ2 threat model.
    return base if isinstance(base, L2Threat) else LinfRenormThreat(eps)


class LocalLinearityPGD(PGD):
    """PGD on the local linearity gap γ (paper) or on the cross-entropy the authors' bug leaves (faithful)."""

    def __init__(
        self,
        eps: float,
        norm: str = "inf",
        steps: int = 2,
        step_size: float | None = None,
        faithful: bool = False,
        model_mode: str = "eval",
    ) -> None:
        self.faithful = bool(faithful)
        threat = _faithful_threat(norm, eps) if self.faithful else make_threat(norm, eps)
        super().__init__(
            eps=eps,
            norm=norm,
            steps=steps,
            step_size=DEFAULT_RELATIVE_STEP * threat.eps if step_size is None else step_size,
            random_start="gaussian",
            model_mode=model_mode,
            threat=threat,
        )

    def ascent_objective(self, model: nn.Module, x: Tensor, y: Tensor) -> AscentObjective:
        if self.faithful:
            return lambda z: F.cross_entropy(model(z).float(), y, reduction="sum").abs()
        x_clean = x.detach().requires_grad_(True)
        loss_clean = F.cross_entropy(model(x_clean).float(), y, reduction="none")
        (grad_clean,) = torch.autograd.grad(loss_clean.sum(), x_clean)
        loss_clean, grad_clean = loss_clean.detach(), grad_clean.detach()

        def total_gap(z: Tensor) -> Tensor:
            loss_perturbed = F.cross_entropy(model(z).float(), y, reduction="none")
            return linearity_gap(loss_perturbed, loss_clean, grad_clean, z - x).sum()

        return total_gap
