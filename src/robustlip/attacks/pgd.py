"""Projected gradient descent (Madry et al.) and its one-step special case, FGSM (docs/authors-code.md §6.1-6.2).

The loop follows the authors' cleverhans-style PGD: a random start, ``steps`` steepest-ascent steps,
projection after every step, and the last iterate returned. It is written once; what differs between
the adversaries of the paper is only

* the scalar that is ascended (:meth:`PGD.ascent_objective`): the cross-entropy of the true labels
  here, TRADES's KL divergence (``divergence.py``), LLR's linearity gap (``local_linearity.py``);
* the start (``random_start``): uniform in the ε-ball (PGD, docs/authors-code.md §6.1, §13.15), a Gaussian of std
  0.001 around ``x`` that is *not* clipped before the first step (TRADES and LLR, docs/authors-code.md §5.4, §5.6), or
  the clean point (FGSM);
* the threat model (norm, or an explicit :class:`ThreatModel` such as LLR's rescaling ℓ∞ ball).

The default step is 2ε/steps, the rule behind every call in the authors' code: ε/5 for the
evaluation's PGD-10 and AT/RST's training attack, ε/10 for the Multi-Targeted attack's 20 steps, and
2ε/K for TRADES's K inner steps (docs/authors-code.md §5.2, §5.4, §6.1, §6.3).

Two additions the paper's evaluation did not have, both off by default:

* ``restarts``: several random starts; per example the most adversarial result is kept (a point that
  is misclassified beats one that is not; among equals, the higher cross-entropy wins);
* ``targeted``: ``y`` is read as the target class and its cross-entropy is *decreased*.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustlip.attacks.base import Attack, input_gradient
from robustlip.attacks.threat import ThreatModel, make_threat
from robustlip.core.errors import ConfigError, check_choice, check_non_negative, check_positive_int

#: How far (in units of ε) the steps of one run may travel in total, when no step size is given.
DEFAULT_TOTAL_TRAVEL = 2.0
START_KINDS = ("uniform", "gaussian", "none")
#: TRADES's and LLR's start: x + 0.001·N(0, I) (docs/authors-code.md §5.4, §5.6).
GAUSSIAN_START_STD = 0.001

AscentObjective = Callable[[Tensor], Tensor]


def default_step_size(eps: float, steps: int) -> float:
    """2ε/steps: ε/5 for 10 steps, ε/10 for 20 (the authors' rule, see the module docstring)."""
    return DEFAULT_TOTAL_TRAVEL * eps / steps


def _start_kind(random_start: bool | str) -> str:
    if random_start is True:
        return "uniform"
    if random_start is False or random_start is None:
        return "none"
    return check_choice("attack.random_start", random_start, START_KINDS)


class PGD(Attack):
    """Untargeted (or targeted) PGD under an ℓ∞ or ℓ2 threat model."""

    def __init__(
        self,
        eps: float,
        norm: str = "inf",
        steps: int = 10,
        step_size: float | None = None,
        random_start: bool | str = True,
        restarts: int = 1,
        targeted: bool = False,
        model_mode: str = "eval",
        threat: ThreatModel | None = None,
    ) -> None:
        super().__init__(model_mode)
        self.threat = threat if threat is not None else make_threat(norm, eps)
        self.steps = check_positive_int("attack.steps", steps)
        self.step_size = (
            default_step_size(self.eps, self.steps)
            if step_size is None
            else check_non_negative("attack.step_size", step_size)
        )
        self.start = _start_kind(random_start)
        self.restarts = check_positive_int("attack.restarts", restarts)
        if self.restarts > 1 and self.start == "none":
            raise ConfigError(f"attack.restarts={restarts!r} is not allowed without a random start; use 1")
        self.targeted = bool(targeted)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(norm={self.threat.norm}, eps={self.eps}, steps={self.steps}, "
            f"step_size={self.step_size:.4g}, start={self.start}, restarts={self.restarts}"
            f"{', targeted' if self.targeted else ''}, model_mode={self.model_mode})"
        )

    def ascent_objective(self, model: nn.Module, x: Tensor, y: Tensor) -> AscentObjective:
        """The scalar the search increases, as a function of the candidate point.

        Built once per batch, so subclasses can precompute what depends only on the clean ``x``.
        Here: the summed cross-entropy of ``y`` (negated when targeted). Summed rather than mean: the
        same ascent direction per example, with gradients that do not shrink with the batch size.
        """

        def cross_entropy(z: Tensor) -> Tensor:
            loss = F.cross_entropy(model(z).float(), y, reduction="sum")
            return -loss if self.targeted else loss

        return cross_entropy

    def _initial_point(self, x: Tensor) -> Tensor:
        if self.start == "uniform":
            return self.threat.random_perturb(x)
        if self.start == "gaussian":
            return x + GAUSSIAN_START_STD * torch.randn_like(x)
        return x.clone()

    def _single_run(self, x: Tensor, objective: AscentObjective) -> Tensor:
        x_adv = self._initial_point(x)
        for _ in range(self.steps):
            _, grad = input_gradient(objective, x_adv)
            x_adv = self.threat.project(self.threat.step(x_adv, grad, self.step_size), x)
        return x_adv

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        if self.eps == 0:
            return x
        objective = self.ascent_objective(model, x, y)
        best = self._single_run(x, objective)
        if self.restarts == 1:
            return best
        best_score = self._score(model, best, y)
        for _ in range(self.restarts - 1):
            candidate = self._single_run(x, objective)
            score = self._score(model, candidate, y)
            better = score > best_score
            best = torch.where(better.view(-1, *([1] * (x.dim() - 1))), candidate, best)
            best_score = torch.maximum(score, best_score)
        return best

    @torch.no_grad()
    def _score(self, model: nn.Module, x_adv: Tensor, y: Tensor) -> Tensor:
        """How adversarial each point is: success counts first, then the attack loss."""
        logits = model(x_adv).float()
        loss = F.cross_entropy(logits, y, reduction="none")
        success = logits.argmax(1) == y if self.targeted else logits.argmax(1) != y
        loss = -loss if self.targeted else loss
        # Squash the loss into (-1, 1) so that success always dominates it.
        return success.float() * 2.0 + torch.tanh(loss)


class FGSM(PGD):
    """Fast gradient sign method (Goodfellow et al.): one full-size step from the clean input.

    The authors use it only as PGD's inner step (docs/authors-code.md §6.2); it is here as a cheap baseline attack.
    """

    def __init__(self, eps: float, norm: str = "inf", targeted: bool = False, model_mode: str = "eval") -> None:
        super().__init__(
            eps=eps, norm=norm, steps=1, step_size=eps, random_start=False, targeted=targeted, model_mode=model_mode
        )
