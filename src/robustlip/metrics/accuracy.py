"""Clean and adversarial accuracy as evaluation metrics, and the sum-state accumulators the probes use.

Counts (not running means) are the state, so that the numbers are exact when batches are uneven and
when Lightning shards the evaluation over several processes (torchmetrics sums the states across
ranks before ``compute``). See DESIGN.md, "Known traps": distributed samplers pad uneven shards, so
final paper numbers come from a single-device evaluation or from sum states like these.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

from robustlip.attacks.base import Attack
from robustlip.metrics.base import EvalBatch, ExampleMetric


def percent_correct(total: Tensor, count: Tensor) -> Tensor:
    """100 · correct / total, in float32 as the paper's tables (and earlier results.json files) have it."""
    return 100.0 * total.float() / count.clamp(min=1).float()


class CleanAccuracy(ExampleMetric):
    """``acc``: whether f(x) predicts the label (percent over the split)."""

    name = "acc"

    def per_example(self, batch: EvalBatch) -> Tensor:
        return (batch.logits.argmax(dim=1) == batch.y).double()

    def reduce(self, total: Tensor, count: Tensor) -> Tensor:
        return percent_correct(total, count)


class AdversarialAccuracy(ExampleMetric):
    """``adv_acc``: whether f predicts the label at ``attack``'s adversarial point (percent over the split)."""

    name = "adv_acc"

    def __init__(self, attack: Attack, name: str = "adv_acc") -> None:
        self.attack = attack
        self.name = name

    def per_example(self, batch: EvalBatch) -> Tensor:
        x_adv = self.attack(batch.model, batch.x, batch.y)
        with torch.no_grad():
            logits = batch.model(x_adv)
        batch.adversarial[self.name] = logits
        return (logits.argmax(dim=1) == batch.y).double()

    def reduce(self, total: Tensor, count: Tensor) -> Tensor:
        return percent_correct(total, count)


class CorrectFraction(Metric):
    """Percentage of correct predictions, accumulated as (correct, total) sums (the probes' accumulator)."""

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
        return percent_correct(self.correct, self.total)
