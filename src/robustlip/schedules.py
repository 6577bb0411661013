"""Learning-rate schedules of the paper (docs/authors-code.md §4)."""

from __future__ import annotations

import torch
from torch.optim.lr_scheduler import MultiStepLR

from robustlip.core.errors import check_positive_int

# (largest number of epochs, milestones) from the authors' `get_scheduler`, in order.
_MILESTONES: tuple[tuple[int, list[int]], ...] = (
    (20, [10, 15]),
    (30, [15, 25]),
    (40, [20, 30]),
    (50, [25, 40]),
    (60, [30, 50]),
    (70, [40, 60]),
    (80, [30, 50, 70]),
    (120, [40, 80, 100]),
    (160, [40, 80, 120, 140]),
)


def paper_milestones(max_epochs: int) -> list[int]:
    """The epochs at which the authors divide the learning rate by 10, given the run length."""
    check_positive_int("trainer.max_epochs", max_epochs)
    for limit, milestones in _MILESTONES:
        if max_epochs <= limit:
            return list(milestones)
    return [60, 100, 140, 180]


def paper_multistep(optimizer: torch.optim.Optimizer, max_epochs: int, gamma: float = 0.1) -> MultiStepLR:
    """MultiStepLR with the paper's milestones for ``max_epochs``, stepped once per epoch."""
    return MultiStepLR(optimizer, milestones=paper_milestones(max_epochs), gamma=gamma)
