"""Sum-state accumulators for clean and adversarial accuracy.

Counts (not running means) are the state, so that the numbers are exact when batches are uneven and
when Lightning shards the evaluation over several processes (torchmetrics sums the states across
ranks before ``compute``). See DESIGN.md, "Known traps": distributed samplers pad uneven shards, so
final paper numbers come from a single-device evaluation or from sum states like these.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


class CorrectFraction(Metric):
    """Percentage of correct predictions, accumulated as (correct, total) sums."""

    full_state_update = False
    higher_is_better = True

    def __init__(self) -> None:
        super().__init__()
        self.add_state("correct", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, logits: Tensor, target: Tensor) -> None:
        self.correct += (logits.argmax(dim=1) == target).sum()
        self.total += target.numel()

    def compute(self) -> Tensor:
        return 100.0 * self.correct.float() / self.total.clamp(min=1).float()


class SumMean(Metric):
    """Mean of per-example values, accumulated as (sum, count) so the result does not depend on batching."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, values: Tensor) -> None:
        self.sum += values.detach().double().sum()
        self.count += values.numel()

    def compute(self) -> Tensor:
        return self.sum / self.count.clamp(min=1)
