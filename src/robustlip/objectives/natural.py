"""Natural training: cross-entropy on clean inputs (docs/authors-code.md §5.1)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from robustlip.objectives.base import Objective, ObjectiveOutput


class Natural(Objective):
    """L = CE(f(x), y), mean- or sum-reduced by fidelity."""

    name = "natural"
    title = "Natural"
    table_order = 0

    def forward(self, model: nn.Module, x: Tensor, y: Tensor) -> ObjectiveOutput:
        logits = model(x)
        ce = F.cross_entropy(logits, y, reduction="none")
        return ObjectiveOutput(loss=self.reduce(ce), logits=logits, parts={"natural": ce.mean().detach()})
