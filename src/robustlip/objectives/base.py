"""The contract of a training objective (DESIGN.md, "Objectives").

An objective is a plain ``nn.Module``, independent of Lightning: ``objective(model, x, y)`` returns the
training loss, the logits used for the training accuracy, and named parts for logging. It never calls
``.backward()`` or touches an optimizer; hyper-parameters are constructor arguments with the paper's
defaults.

``fidelity`` selects between the method as the paper defines it (``paper``: mean-reduced losses,
attacks in eval mode, ...) and the behaviour of the authors' code listed in SPEC §13 (``faithful``:
sum-reduced losses, ...), so the table presets can match the published numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn

from robustlip.attacks.threat import canonical_norm
from robustlip.validation import check_choice, check_non_negative, check_positive_int

FIDELITIES = ("paper", "faithful")


def check_attack_budget(eps: float, norm: str, steps: int, step_size: float | None) -> tuple[float, str, int, float | None]:
    """Range-check an objective's inner-attack settings under their ``objective.*`` config names."""
    return (
        check_non_negative("objective.eps", eps),
        canonical_norm(norm, key="objective.norm"),
        check_positive_int("objective.steps", steps),
        None if step_size is None else check_non_negative("objective.step_size", step_size),
    )


@dataclass
class ObjectiveOutput:
    """What one objective step produces."""

    loss: Tensor
    logits: Tensor
    parts: dict[str, Tensor] = field(default_factory=dict)


class Objective(nn.Module):
    """Base class: holds the fidelity switch and the batch reduction it implies (SPEC §4, §13.4)."""

    name: str = "objective"

    def __init__(self, fidelity: str = "paper", name: str | None = None) -> None:
        super().__init__()
        self.name = name or type(self).name
        self.fidelity = check_choice("fidelity", fidelity, FIDELITIES)

    @property
    def faithful(self) -> bool:
        return self.fidelity == "faithful"

    def reduce(self, per_example: Tensor) -> Tensor:
        """Mean over the batch (``paper``) or sum, as every loss of the authors' code (``faithful``)."""
        return per_example.sum() if self.faithful else per_example.mean()

    def forward(self, model: nn.Module, x: Tensor, y: Tensor) -> ObjectiveOutput:  # pragma: no cover
        raise NotImplementedError
