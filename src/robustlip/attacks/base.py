"""What every attack shares: the evaluation contexts and the input-only gradient.

An attack is a small object built from config and called as ``attack(model, x, y) -> x_adv``
(DESIGN.md, "Attacks"). The contract this base class enforces:

* no parameter ``.grad`` is touched: gradients are taken with ``torch.autograd.grad`` w.r.t. the input;
* the model runs in eval mode during the search (or train mode, for the authors' AT/RST, docs/authors-code.md §5.2)
  and its previous mode is restored afterwards;
* it works inside Lightning's validation/test loops: inference mode is switched off locally and the
  input is cloned out of any inference tensor;
* no device is cached: every tensor is created like ``x``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from robustlip.runs.errors import check_choice

MODEL_MODES = ("eval", "train")


@contextmanager
def model_mode(model: nn.Module, mode: str) -> Iterator[None]:
    """Put every submodule in ``mode`` and restore each one's own previous flag afterwards."""
    previous = [(module, module.training) for module in model.modules()]
    model.train(mode == "train")
    try:
        yield
    finally:
        for module, was_training in previous:
            module.training = was_training


@contextmanager
def attack_context() -> Iterator[None]:
    """Gradients on, inference mode off: what an input-gradient search needs inside any Lightning loop."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


def input_gradient(loss_fn: Callable[[Tensor], Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
    """Value and gradient of the scalar ``loss_fn(x)`` w.r.t. ``x`` only (parameter grads untouched)."""
    x = x.detach().requires_grad_(True)
    loss = loss_fn(x)
    (grad,) = torch.autograd.grad(loss, x)
    return loss.detach(), grad.detach()


class Attack(ABC):
    """An adversary: ``attack(model, x, y)`` returns a detached ``x_adv`` of the same shape as ``x``."""

    #: True for an attack that reports its own robustness flags (AutoAttack's ``checks``): alone, it takes
    #: the place of the gradient-masking probes, which vary PGD-like attacks (callbacks/robust_evaluation.py).
    reports_own_checks: bool = False

    def __init__(self, model_mode: str = "eval") -> None:
        self.model_mode = check_choice("attack.model_mode", model_mode, MODEL_MODES)

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        with attack_context(), model_mode(model, self.model_mode):
            # clone(): a tensor made under inference mode cannot enter autograd.
            x_adv = self.perturb(model, x.detach().clone(), y.detach().clone())
        return x_adv.detach()

    @abstractmethod
    def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """The search itself; called with gradients enabled and the model in the attack's mode."""
