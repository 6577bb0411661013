"""Clean, adversarial and worst-case accuracy as evaluation metrics, and the probes' sum-state accumulator.

Each accuracy reports, next to its percentage, its number of examples and a Wilson 95% interval
(:mod:`robustlip.metrics.intervals`): an accuracy on n test points is a binomial proportion.

Counts (not running means) are the state, so that the numbers are exact when batches are uneven and
when Lightning shards the evaluation over several processes (torchmetrics sums the states across
ranks before ``compute``). See docs/architecture.md, "Known traps": distributed samplers pad uneven shards, so
final paper numbers come from a single-device evaluation or from sum states like these.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from robustlip.attacks.base import Attack
from robustlip.metrics.base import EvalBatch, ExampleMetric
from robustlip.metrics.intervals import Accuracy


def percent_correct(total: Tensor, count: Tensor) -> Tensor:
    """100 · correct / total, in float32 as the paper's tables (and earlier results.json files) have it."""
    return 100.0 * total.float() / count.clamp(min=1).float()


class AccuracyMetric(ExampleMetric):
    """Per-example values are 1 (correct) or 0: the number is a percentage with a Wilson interval."""

    def reduce(self, total: Tensor, count: Tensor) -> Tensor:
        return percent_correct(total, count)

    def uncertainty(self, total: float, total_sq: float, count: int) -> dict[str, Any]:
        record = Accuracy(round(total), count).as_dict()
        del record["value"]
        return record


class CleanAccuracy(AccuracyMetric):
    """``acc``: whether f(x) predicts the label (percent over the split)."""

    name = "acc"

    def per_example(self, batch: EvalBatch) -> Tensor:
        return (batch.logits.argmax(dim=1) == batch.y).double()


class AdversarialAccuracy(AccuracyMetric):
    """``adv_acc``: whether f predicts the label at ``attack``'s adversarial point (percent over the split).

    Every attack draws its random start from the same stream, ``adv_acc``, whatever the metric is named
    (``adv_acc/pgd`` among several attacks): PGD among several attacks finds what PGD alone finds.
    """

    name = "adv_acc"
    stream = "adv_acc"

    def __init__(self, attack: Attack, name: str = "adv_acc") -> None:
        self.attack = attack
        self.name = name

    def per_example(self, batch: EvalBatch) -> Tensor:
        x_adv = self.attack(batch.model, batch.x, batch.y)
        with torch.no_grad():
            logits = batch.model(x_adv)
        batch.adversarial[self.name] = logits
        return (logits.argmax(dim=1) == batch.y).double()


class WorstCaseAccuracy(AccuracyMetric):
    """``adv_acc`` over several attacks: an example counts as correct only if *every* attack failed on it.

    The pointwise worst case, as RobustBench reports an ensemble (Croce et al., "RobustBench", 2021):
    per example the minimum over the attacks, so it is at most each attack's accuracy and usually
    below their minimum. Reads the adversarial logits the named :class:`AdversarialAccuracy` metrics
    left in the batch, so it must run after them.
    """

    def __init__(self, sources: list[str], name: str = "adv_acc") -> None:
        if not sources:
            raise ValueError("WorstCaseAccuracy needs at least one attack's metric name")
        self.sources = list(sources)
        self.name = name

    def per_example(self, batch: EvalBatch) -> Tensor:
        missing = [s for s in self.sources if s not in batch.adversarial]
        if missing:
            raise RuntimeError(f"{self.name}: no adversarial logits from {missing}; run those metrics first")
        correct = torch.ones_like(batch.y, dtype=torch.bool)
        for source in self.sources:
            correct &= batch.adversarial[source].argmax(dim=1) == batch.y
        return correct.double()


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
