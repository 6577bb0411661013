"""The contract of a training objective (docs/architecture.md, "Add an objective").

An objective is a plain ``nn.Module``, independent of Lightning: ``objective(model, x, y)`` returns the
training loss, the logits used for the training accuracy, and named parts for logging. It never calls
``.backward()`` or touches an optimizer; hyper-parameters are constructor arguments with the paper's
defaults.

``fidelity`` selects between the method as the paper defines it (``paper``: mean-reduced losses,
attacks in eval mode, ...) and the behaviour of the authors' code listed in docs/authors-code.md §13 (``faithful``:
sum-reduced losses, ...), so the table presets can match the published numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn

from robustlip.attacks.threat import canonical_norm
from robustlip.core.errors import check_non_negative, check_positive_int
from robustlip.core.fidelity import fidelity_named


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


def format_knob(value: float) -> str:
    """A hyper-parameter as the paper's row names write it: 0.5 -> '.5', 3.0 -> '3'."""
    text = f"{float(value):g}"
    return text[1:] if text.startswith("0.") else text


class Objective(nn.Module):
    """Base class: holds the fidelity switch and the batch reduction it implies (docs/authors-code.md §4, §13.4).

    Each objective also knows how the paper's tables name it (``label``, e.g. ``TRADES(β=6)``) and
    where its row goes (``sort_key``: the Tables 2–4 order, then the knob's value), so reports and
    dashboards need no list of methods.
    """

    name: str = "objective"
    #: The method's name in the paper's tables, and its row's place there (Natural, GR, LLR, AT, RST, TRADES).
    title: str = "Objective"
    table_order: int = 99

    def __init__(self, fidelity: str = "paper", name: str | None = None) -> None:
        super().__init__()
        self.name = name or type(self).name
        self.fidelity = fidelity_named(fidelity)

    def label_knobs(self) -> list[tuple[str, float]]:
        """The (symbol, value) pairs a row name shows: the knobs the paper sweeps, or any set off its default."""
        return []

    @property
    def label(self) -> str:
        """The row name of this objective in a results table, e.g. ``RST(λ=.5)``."""
        knobs = self.label_knobs()
        if not knobs:
            return self.title
        return f"{self.title}({','.join(f'{symbol}={format_knob(value)}' for symbol, value in knobs)})"

    @property
    def sort_key(self) -> tuple[int, float]:
        """Rows sort in the paper's order of methods, then by the first knob's value."""
        knobs = self.label_knobs()
        return self.table_order, float(knobs[0][1]) if knobs else 0.0

    @property
    def faithful(self) -> bool:
        return self.fidelity.faithful

    def reduce(self, per_example: Tensor) -> Tensor:
        """Mean over the batch (``paper``) or sum, as every loss of the authors' code (``faithful``)."""
        return self.fidelity.reduce(per_example)

    def forward(self, model: nn.Module, x: Tensor, y: Tensor) -> ObjectiveOutput:  # pragma: no cover
        raise NotImplementedError
