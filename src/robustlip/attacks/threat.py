"""Threat models: the set an adversary may move an input in.

Written after MadryLab `robustness`'s attack steps: a threat model knows how to *project* a candidate
back into the allowed set, how to draw a *random start* inside it, and how to take one *steepest-ascent
step* for its norm. The PGD loop (``pgd.py``) is written once on top of these three operations.

The allowed set is always the intersection of the ε-ball around the clean input and the pixel box
[0, 1] (docs/architecture.md, "Pixel space"). Clamping to the box after projecting to the ball never leaves the
ball: each coordinate only moves towards the clean value, which is itself inside the box.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from torch import Tensor

from robustlip.core.errors import check_choice, check_linf_eps, check_non_negative
from robustlip.core.norms import NORM_SPELLINGS

NORMS = ("inf", "2")


def _per_example_norm(t: Tensor, p: float) -> Tensor:
    """Norm of each example of a batch, shaped to broadcast against the batch."""
    flat = t.flatten(1)
    norms = flat.abs().amax(dim=1) if p == math.inf else flat.norm(p=p, dim=1)
    return norms.view(-1, *([1] * (t.dim() - 1)))


class ThreatModel(ABC):
    """An ε-ball of some norm, intersected with the [0, 1] pixel box."""

    norm: str

    def __init__(self, eps: float) -> None:
        self.eps = check_non_negative("eps", eps)

    @abstractmethod
    def project(self, x_adv: Tensor, x: Tensor) -> Tensor:
        """The point of the allowed set that ``x_adv`` is moved to (ball first, then box)."""

    @abstractmethod
    def random_perturb(self, x: Tensor) -> Tensor:
        """A random point of the allowed set around ``x`` (the PGD random start)."""

    @abstractmethod
    def step(self, x_adv: Tensor, grad: Tensor, step_size: float) -> Tensor:
        """One steepest-ascent step of length ``step_size`` in this norm (not yet projected)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(eps={self.eps})"


class LinfThreat(ThreatModel):
    """ℓ∞ ball: coordinate-wise clipping; the steepest step is the sign of the gradient (docs/authors-code.md §6.1-6.2)."""

    norm = "inf"

    def __init__(self, eps: float) -> None:
        super().__init__(eps)
        # Inputs are images in [0, 1] (models normalise inside): an ℓ∞ radius above 1 is no threat model at all.
        check_linf_eps("eps", eps)

    def project(self, x_adv: Tensor, x: Tensor) -> Tensor:
        delta = torch.clamp(x_adv - x, -self.eps, self.eps)
        return torch.clamp(x + delta, 0.0, 1.0)

    def random_perturb(self, x: Tensor) -> Tensor:
        noise = torch.empty_like(x).uniform_(-self.eps, self.eps)
        return torch.clamp(x + noise, 0.0, 1.0)

    def step(self, x_adv: Tensor, grad: Tensor, step_size: float) -> Tensor:
        return x_adv + step_size * grad.sign()


class L2Threat(ThreatModel):
    """ℓ2 ball: radial rescaling onto the ball; the steepest step is the normalised gradient."""

    norm = "2"

    def project(self, x_adv: Tensor, x: Tensor) -> Tensor:
        delta = x_adv - x
        norms = _per_example_norm(delta, 2.0)
        factor = torch.clamp(self.eps / (norms + 1e-12), max=1.0)
        return torch.clamp(x + delta * factor, 0.0, 1.0)

    def random_perturb(self, x: Tensor) -> Tensor:
        # Uniform in the ball: a Gaussian direction and a radius distributed as eps * U^(1/d).
        direction = torch.randn_like(x)
        direction = direction / (_per_example_norm(direction, 2.0) + 1e-12)
        dims = x[0].numel()
        radius = self.eps * torch.rand(x.shape[0], device=x.device, dtype=x.dtype) ** (1.0 / dims)
        delta = direction * radius.view(-1, *([1] * (x.dim() - 1)))
        return self.project(x + delta, x)

    def step(self, x_adv: Tensor, grad: Tensor, step_size: float) -> Tensor:
        return x_adv + step_size * grad / (_per_example_norm(grad, 2.0) + 1e-12)


class LinfRenormThreat(LinfThreat):
    """The ℓ∞ ball as the authors' LLR inner loop walks it (docs/authors-code.md §5.6, §13.2; ``fidelity=faithful``).

    Two differences from :class:`LinfThreat`, both reproduced on purpose, with the authors' arithmetic
    (``lolip/models/torch_utils/llr.py`` L51-61 at 656616a, github yangarbiter/robust-local-lipschitz):

    * the step is the gradient divided by its own ℓ∞ norm (its largest entry becomes ±1), not its sign;
      an example whose gradient is zero steps along ``randn`` instead, as theirs does;
    * projection clamps to the box first and then *rescales* the whole perturbation onto the ball with
      ``torch.renorm``'s rule: only when its norm exceeds ε, by ε / (norm + 1e-7). That 1e-7 leaves δ a
      hair inside the ball; a 1e-12 instead moved the LLR gradients by ~3e-6 (tests/test_reference_code.py).

    Rescaling towards the clean point keeps the box: both ends of the segment lie inside it.
    """

    def project(self, x_adv: Tensor, x: Tensor) -> Tensor:
        delta = torch.clamp(x_adv, 0.0, 1.0) - x
        delta = delta.renorm(p=math.inf, dim=0, maxnorm=self.eps)
        return torch.clamp(x + delta, 0.0, 1.0)

    def step(self, x_adv: Tensor, grad: Tensor, step_size: float) -> Tensor:
        norms = _per_example_norm(grad, math.inf)
        direction = grad / norms
        flat = norms.flatten() == 0
        if flat.any():
            direction[flat] = torch.randn_like(direction[flat])
        return x_adv + step_size * direction


def canonical_norm(norm: str | float, key: str = "norm", allowed: tuple[str, ...] = NORMS) -> str:
    """The norm's name ("inf", "2" or "1") for any spelling a config may hold; one of ``allowed`` or a ConfigError."""
    name = next((name for name, spellings in NORM_SPELLINGS.items() if norm in spellings), None)
    check_choice(key, name if name in allowed else norm, allowed)
    return name


def norm_order(name: str) -> float:
    """A canonical norm name as the ``ord`` of ``torch.linalg.vector_norm`` (``inf`` -> ``math.inf``)."""
    return math.inf if name == "inf" else float(name)


def make_threat(norm: str | float, eps: float) -> ThreatModel:
    """Build the threat model named by ``norm`` ("inf" or "2"; also accepts ``math.inf`` and 2)."""
    return LinfThreat(eps) if canonical_norm(norm) == "inf" else L2Threat(eps)
