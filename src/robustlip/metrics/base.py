"""The protocol every evaluation metric follows, so that a new metric is one file plus one config.

A metric is a small, stateless object with

* ``name``: the last part of its result key (``train/<name>``, ``test/<name>``);
* ``per_example(batch) -> Tensor``: one value per example of an :class:`EvalBatch`;
* ``reduce(total, count) -> Tensor``: the split's number from the sum and the count of those values
  (the mean by default; accuracies print it in percent);
* ``uncertainty(total, total_sq, count) -> dict``: how sure that number is, for results.json and the
  reports: the standard error of the mean by default, a Wilson 95% interval for accuracies
  (:mod:`robustlip.metrics.intervals`).

``RobustEvaluation`` keeps the (sum, count) state of every metric and split as a sum-state
torchmetric (plus the sum of squares, for the standard error), so the numbers do not depend on
batching and are exact across processes. The batch
carries what several metrics share: the clean logits (one forward pass per batch) and the
adversarial logits of each attack (reused by the ε sweep and the gradient-masking probes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from robustlip.metrics.intervals import standard_error_from_sums


@dataclass
class EvalBatch:
    """One batch under evaluation: the model (eval mode), inputs in [0, 1], labels, clean logits f(x)."""

    model: nn.Module
    x: Tensor
    y: Tensor
    logits: Tensor
    #: Adversarial logits by metric name, filled by the adversarial metrics that ran on this batch.
    adversarial: dict[str, Tensor] = field(default_factory=dict)


class ExampleMetric:
    """Base of the evaluation metrics: a name, per-example values, and the mean as reduction."""

    name: str = "metric"

    @property
    def stream(self) -> str:
        """The name of the random stream this metric draws from on each batch (robustlip.evaluation.streams)."""
        return self.name

    def per_example(self, batch: EvalBatch) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def reduce(self, total: Tensor, count: Tensor) -> Tensor:
        return total / count.clamp(min=1)

    def uncertainty(self, total: float, total_sq: float, count: int) -> dict[str, Any]:
        """The number of examples and the standard error of the mean (s/√n; None below two examples)."""
        se = standard_error_from_sums(total, total_sq, count)
        return {"n": count, "se": None if math.isnan(se) else se}


class SumState(Metric):
    """The (sum, sum of squares, count) of a metric's per-example values: float64, exact across processes."""

    full_state_update = False

    def __init__(self, metric: ExampleMetric) -> None:
        super().__init__()
        self.metric = metric
        self.add_state("sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("sum_sq", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, values: Tensor) -> None:
        values = values.detach().double()
        self.sum += values.sum()
        self.sum_sq += (values * values).sum()
        self.count += values.numel()

    def compute(self) -> Tensor:
        return self.metric.reduce(self.sum, self.count)

    def summary(self) -> tuple[float, dict[str, Any]]:
        """The number and its uncertainty record, from the states summed over every process."""
        with self.sync_context(should_sync=True, should_unsync=True):
            value = self.metric.reduce(self.sum, self.count).item()
            return value, self.metric.uncertainty(float(self.sum), float(self.sum_sq), int(self.count))
