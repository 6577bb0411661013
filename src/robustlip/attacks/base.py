"""What every attack shares: the evaluation contexts and the input-only gradient.

An attack is a small object built from config and called as ``attack(model, x, y) -> x_adv``
(docs/architecture.md, "Add an attack"). The contract this base class enforces:

* no parameter ``.grad`` is touched: gradients are taken with ``torch.autograd.grad`` w.r.t. the input;
* the model runs in eval mode during the search (or train mode, for the authors' AT/RST, docs/authors-code.md §5.2)
  and its previous mode is restored afterwards;
* it works inside Lightning's validation/test loops: inference mode is switched off locally and the
  input is cloned out of any inference tensor;
* no device is cached: every tensor is created like ``x``.

What the evaluation, its probes and the reports need of an attack is declared here, with defaults,
so nothing has to guess it with ``hasattr`` (docs/architecture.md, "Add an attack"):

* ``threat``, ``steps``, ``step_size``: the threat model and the search's knobs of a PGD-like attack
  (None for an attack without them, e.g. AutoAttack, which keeps its own); ``eps`` and ``norm`` are
  read from the threat model (an attack without one overrides them, or has neither);
* ``inner``: the attack it runs inside it (Multi-Targeted: one targeted PGD per class), which then
  holds the threat model and the steps; ``search`` is whichever of the two holds them;
* ``label``: the short name of titles and tables (``PGD-10 ℓ∞ ε=0.1``); ``repr`` is results.json's;
* ``flags`` and ``seconds`` accumulated over calls (AutoAttack's own checks), their ``records`` for a
  resumed evaluation and ``reset_records``; ``reports_own_checks`` and ``expensive`` for the evaluator.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from robustlip.attacks.threat import canonical_norm
from robustlip.core.errors import check_choice

if TYPE_CHECKING:
    from robustlip.attacks.threat import ThreatModel

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

    #: The attack this one runs inside it (Multi-Targeted: its targeted PGD), None for most attacks.
    inner: Attack | None = None
    #: The threat model a PGD-like search moves in (ε-ball ∩ [0, 1]); None for an attack without one.
    threat: ThreatModel | None = None
    #: The number of steps of the search and their size; None for an attack without these knobs.
    steps: int | None = None
    step_size: float | None = None
    #: True for an attack that reports its own robustness flags (AutoAttack's ``checks``): alone, it takes
    #: the place of the gradient-masking probes, which vary PGD-like attacks (evaluation/gradient_masking.py).
    reports_own_checks: bool = False
    #: True for an attack that costs hundreds of forward passes per example (AutoAttack): the evaluation
    #: then bounds the training-set measurement by default (evaluation/evaluator.py).
    expensive: bool = False

    def __init__(self, model_mode: str = "eval") -> None:
        self.model_mode = check_choice("attack.model_mode", model_mode, MODEL_MODES)
        #: Wall time spent in this attack since the last ``reset_records`` (seconds).
        self.seconds = 0.0

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        with attack_context(), model_mode(model, self.model_mode):
            # clone(): a tensor made under inference mode cannot enter autograd.
            x_adv = self.perturb(model, x.detach().clone(), y.detach().clone())
        return x_adv.detach()

    @abstractmethod
    def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """The search itself; called with gradients enabled and the model in the attack's mode."""

    # -- what the evaluation reads ----------------------------------------------------------------
    @property
    def search(self) -> Attack:
        """The attack that holds the threat model and the steps: the innermost one."""
        return self.inner.search if self.inner is not None else self

    @property
    def eps(self) -> float | None:
        """The radius (pixel units), read from the threat model: the one place ε is stored. None without one.

        An attack without a threat model (a user's own: docs/architecture.md, "Add an attack") may still say its radius by
        assigning ``self.eps = ...``; that declared value is what the evaluation then reads.
        """
        declared = self.__dict__.get("_declared_eps")
        if declared is not None:
            return declared
        threat = self.search.threat
        return None if threat is None else threat.eps

    @eps.setter
    def eps(self, value: float | None) -> None:
        self.__dict__["_declared_eps"] = None if value is None else float(value)

    @property
    def norm(self) -> str | None:
        """The threat model's norm, canonical ("inf", "2", "1"); None for an attack without a threat model.

        As with :attr:`eps`, an attack without a threat model may declare it by assigning ``self.norm``.
        """
        declared = self.__dict__.get("_declared_norm")
        if declared is not None:
            return declared
        threat = self.search.threat
        return None if threat is None else threat.norm

    @norm.setter
    def norm(self, value: str | None) -> None:
        self.__dict__["_declared_norm"] = None if value is None else canonical_norm(value, "attack.norm")

    @property
    def title(self) -> str:
        """The attack's name in titles: its class name (AutoAttack adds its version)."""
        return type(self).__name__

    @property
    def label(self) -> str:
        """A short name for titles and tables: ``PGD-10 ℓ∞ ε=0.1``, ``FGSM ℓ∞ ε=0.1``."""
        steps = self.search.steps
        text = self.title + (f"-{steps}" if steps and steps > 1 else "")
        if self.norm is not None:
            text += " ℓ∞" if self.norm == "inf" else f" ℓ{self.norm}"
        if self.eps is not None:
            text += f" ε={self.eps:g}"
        return text

    @property
    def single_step(self) -> bool:
        """One step from the clean point (FGSM): a baseline that is expected to be weaker than a search."""
        return self.search.steps == 1

    # -- what it records over calls ----------------------------------------------------------------
    @property
    def flags(self) -> dict[str, dict[str, Any]]:
        """Robustness flags raised by the attack itself: ``{flag: {"batches": n, "message": text}}`` (none by default)."""
        return {}

    def reset_records(self) -> None:
        """Forget what was recorded so far (one evaluation's worth)."""
        self.seconds = 0.0

    def records(self) -> dict[str, Any]:
        """What was recorded so far, as plain data (kept on disk by a resumable evaluation)."""
        return {"seconds": self.seconds}

    def restore_records(self, records: dict[str, Any]) -> None:
        """Continue from ``records`` (what :meth:`records` returned in an earlier, stopped evaluation)."""
        self.seconds = float(records.get("seconds", 0.0))
