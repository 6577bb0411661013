"""Input-gradient regularisation by finite differences, GR ("TULIP", Finlay & Oberman; docs/authors-code.md §5.5).

Penalising ½‖∇ₓℓ(x)‖² directly needs double back-propagation. TULIP replaces the gradient norm by a
forward difference along the normalised gradient, which needs only one extra forward pass:

    v = ∇ₓℓ / ‖∇ₓℓ‖₂ (a constant; rows with a zero gradient stay zero)
    d = (ℓ(x + h·v) − ℓ(x)) / h  ≈ ‖∇ₓℓ(x)‖₂           penalty = ½·d²
    L = ℓ(x) + λ·penalty

The direction is ℓ2-normalised whatever the threat model; x + h·v is not clipped to [0, 1]. The
penalty's gradient flows through both ℓ(x + h·v) and ℓ(x). Defaults λ = 1, h = 1.0 (the paper's
``tulipce``). The whole objective runs in train mode, as in the authors' code.

Fidelity:

* ``paper``: the cross-entropy gradient is counted once and both terms are batch means.
* ``faithful`` (docs/authors-code.md §13.3): the authors' code back-propagates the summed CE inside the loss and again
  in the training loop, so the applied gradient is 2·∇S + λ·∇Σpenalty with S = Σ_i ℓ_i. Here that is
  one loss with the same gradient, L = 2·S + λ·Σ_i penalty_i (its *value* is S larger than the
  authors' logged loss). The input gradient is taken with ``torch.autograd.grad``, so no parameter
  ``.grad`` is touched.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustlip.objectives.base import Objective, ObjectiveOutput
from robustlip.runs.errors import ConfigError, check_non_negative


def unit_l2_direction(grad: Tensor) -> Tensor:
    """Each example's gradient divided by its ℓ2 norm; a zero gradient stays zero."""
    norms = grad.flatten(1).norm(dim=1).view(-1, *([1] * (grad.dim() - 1)))
    return torch.where(norms > 0, grad / norms.clamp_min(torch.finfo(grad.dtype).tiny), grad)


class GradientRegularization(Objective):
    """L = CE(x) + λ·½·((CE(x + h·v) − CE(x)) / h)², v the unit input gradient."""

    name = "gr"
    title = "GR"
    table_order = 1

    def __init__(self, lam: float = 1.0, h: float = 1.0, fidelity: str = "paper", name: str | None = None) -> None:
        super().__init__(fidelity, name)
        self.lam = check_non_negative("objective.lam", lam)
        self.h = check_non_negative("objective.h", h)
        if self.h == 0:
            raise ConfigError(f"objective.h={h!r} is not allowed; the finite-difference step must be > 0")

    def label_knobs(self) -> list[tuple[str, float]]:
        return [] if self.lam == 1.0 else [("λ", self.lam)]

    def extra_repr(self) -> str:
        return f"lam={self.lam}, h={self.h}, fidelity={self.fidelity}"

    def forward(self, model: nn.Module, x: Tensor, y: Tensor) -> ObjectiveOutput:
        x = x.detach().requires_grad_(True)
        logits = model(x)
        natural = F.cross_entropy(logits, y, reduction="none")
        (grad,) = torch.autograd.grad(natural.sum(), x, retain_graph=True)
        x_forward = (x + self.h * unit_l2_direction(grad.detach())).detach()
        forward_difference = (F.cross_entropy(model(x_forward), y, reduction="none") - natural) / self.h
        penalty = 0.5 * forward_difference.pow(2)
        ce_weight = 2.0 if self.faithful else 1.0
        loss = ce_weight * self.reduce(natural) + self.lam * self.reduce(penalty)
        parts = {"natural": natural.mean().detach(), "reg": penalty.mean().detach()}
        return ObjectiveOutput(loss=loss, logits=logits, parts=parts)
