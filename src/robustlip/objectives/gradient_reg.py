"""Input-gradient regularisation by finite differences, GR ("TULIP", Finlay & Oberman 2019; docs/authors-code.md §5.5).

Penalising the squared input-gradient norm directly needs double back-propagation. TULIP replaces
the gradient norm by a forward difference along a fixed direction v, which needs only one extra
forward pass:

    d = (ℓ(x + h·v) − ℓ(x)) / h  ≈  ∇ₓℓ(x) · v          penalty = ½·d²
    L = ℓ(x) + λ·penalty

v is a constant (no gradient flows through it); the penalty's gradient flows through both
ℓ(x + h·v) and ℓ(x); x + h·v is not clipped to [0, 1]. The whole objective runs in train mode.

Fidelity:

* ``paper`` — GR as the paper cites it (Finlay & Oberman, github cfinlay/tulip, ``cifar10/train.py``,
  ``train()``): the penalised norm is the *dual* of the threat model's. For an ℓ∞ threat that is ℓ1,
  estimated along v = sign(∇ₓℓ)/√d (TULIP's ``--norm L1``), so d ≈ ‖∇ₓℓ‖₁/√d; for an ℓ2 threat
  v = ∇ₓℓ/‖∇ₓℓ‖₂ and d ≈ ‖∇ₓℓ‖₂. h = 0.01 (TULIP's default ``--h``), both terms batch means:
  L = mean ℓ + λ·mean(d²)/2, as TULIP's ``tik * dl2.mean()/2``.
* ``faithful`` — the authors' ``tulipce`` (``lolip/models/torch_utils/tulip.py`` L12-56, github
  yangarbiter/robust-local-lipschitz; docs/authors-code.md §5.5, §13.3): v = ∇ₓℓ/‖∇ₓℓ‖₂ whatever the threat, h = 1.0, and the
  cross-entropy gradient counted twice — the code back-propagates the summed CE inside the loss and
  again in the training loop, so the applied gradient is 2·∇S + λ·∇Σpenalty with S = Σ_i ℓ_i. Here
  that is one loss with the same gradient, L = 2·S + λ·Σ_i penalty_i (its *value* is S larger than
  the authors' logged loss).

An explicit ``h`` wins over the fidelity's. The input gradient is taken with ``torch.autograd.grad``,
so no parameter ``.grad`` is touched. Rows with a zero gradient get v = 0 (d = 0) in every variant.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustlip.attacks.threat import canonical_norm
from robustlip.core.errors import ConfigError, check_non_negative
from robustlip.objectives.base import Objective, ObjectiveOutput

#: Finite-difference step of the authors' ``tulipce`` (no ``ssem`` flag: ``tulip.py`` default 1.0).
FAITHFUL_H = 1.0
#: TULIP's default ``--h`` (``cifar10/argparser.py``).
PAPER_H = 0.01


def _per_example(values: Tensor, like: Tensor) -> Tensor:
    return values.view(-1, *([1] * (like.dim() - 1)))


def unit_l2_direction(grad: Tensor) -> Tensor:
    """Each example's gradient divided by its ℓ2 norm; a zero gradient stays zero."""
    norms = _per_example(grad.flatten(1).norm(dim=1), grad)
    return torch.where(norms > 0, grad / norms.clamp_min(torch.finfo(grad.dtype).tiny), grad)


def scaled_sign_direction(grad: Tensor) -> Tensor:
    """sign(∇)/√d, TULIP's ℓ1 direction: unit ℓ2 length, and ∇·v = ‖∇‖₁/√d."""
    return grad.sign() / math.sqrt(grad[0].numel())


class GradientRegularization(Objective):
    """L = CE(x) + λ·½·((CE(x + h·v) − CE(x)) / h)², v the fidelity's direction (module docstring)."""

    name = "gr"
    title = "GR"
    table_order = 1

    def __init__(
        self,
        lam: float = 1.0,
        h: float | None = None,
        norm: str = "inf",
        fidelity: str = "paper",
        name: str | None = None,
    ) -> None:
        super().__init__(fidelity, name)
        self.lam = check_non_negative("objective.lam", lam)
        if h is None:
            h = FAITHFUL_H if self.faithful else PAPER_H
        self.h = check_non_negative("objective.h", h)
        if self.h == 0:
            raise ConfigError(f"objective.h={h!r} is not allowed; the finite-difference step must be > 0")
        #: The threat model's norm; the penalised gradient norm is its dual (paper fidelity).
        self.norm = canonical_norm(norm, key="objective.norm")

    @property
    def direction(self) -> str:
        """``sign/sqrt(d)`` (the ℓ1 dual of an ℓ∞ threat) or ``l2`` (the authors' choice, and ℓ2's dual)."""
        return "sign/sqrt(d)" if not self.faithful and self.norm == "inf" else "l2"

    def label_knobs(self) -> list[tuple[str, float]]:
        return [] if self.lam == 1.0 else [("λ", self.lam)]

    def extra_repr(self) -> str:
        return f"lam={self.lam}, h={self.h}, norm={self.norm}, direction={self.direction}, fidelity={self.fidelity}"

    def forward(self, model: nn.Module, x: Tensor, y: Tensor) -> ObjectiveOutput:
        x = x.detach().requires_grad_(True)
        logits = model(x)
        natural = F.cross_entropy(logits, y, reduction="none")
        (grad,) = torch.autograd.grad(natural.sum(), x, retain_graph=True)
        grad = grad.detach()
        v = scaled_sign_direction(grad) if self.direction == "sign/sqrt(d)" else unit_l2_direction(grad)
        x_forward = (x + self.h * v).detach()
        forward_difference = (F.cross_entropy(model(x_forward), y, reduction="none") - natural) / self.h
        penalty = 0.5 * forward_difference.pow(2)
        ce_weight = 2.0 if self.faithful else 1.0
        loss = ce_weight * self.reduce(natural) + self.lam * self.reduce(penalty)
        parts = {"natural": natural.mean().detach(), "reg": penalty.mean().detach()}
        return ObjectiveOutput(loss=loss, logits=logits, parts=parts)
