"""The sum states of every metric on one split, and one batch measured by all of them.

Counts and sums (float64), not running means, are the state (:class:`robustlip.metrics.base.SumState`,
a sum-state torchmetric): the numbers do not depend on how the data is batched, are exact across
processes (the states are summed before the numbers are computed), and a stopped evaluation can keep
them on disk and continue from them to the very same numbers (:meth:`SplitMeter.snapshot`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import Tensor, nn

from robustlip.metrics.base import EvalBatch, ExampleMetric, SumState

Stream = Callable[[str], AbstractContextManager]


class SplitMeter(nn.Module):
    """The sum states of every metric on one split: ``{name: (sum, sum of squares, count)}`` of per-example values."""

    def __init__(self, metrics: Iterable[ExampleMetric]) -> None:
        super().__init__()
        self.metrics = list(metrics)
        self.states = nn.ModuleDict({metric.name: SumState(metric) for metric in self.metrics})
        #: Wall time spent in each metric on this process (the attacks' cost), seconds.
        self.seconds: dict[str, float] = {metric.name: 0.0 for metric in self.metrics}

    def update(self, model: nn.Module, x: Tensor, y: Tensor, logits: Tensor | None = None,
               stream: Stream | None = None) -> EvalBatch:
        """Measure one batch with every metric, in order; returns the batch (clean and adversarial logits).

        ``logits`` are f(x) if the caller already has them (e.g. from a Lightning ``test_step``): the
        clean forward pass is done once per batch and shared by every metric. ``stream(name)``, if given,
        is the random stream each metric runs in (its ``stream`` name, :mod:`robustlip.evaluation.streams`).
        """
        with torch.no_grad():
            clean = model(x) if logits is None else logits
        batch = EvalBatch(model, x, y, clean)
        for metric in self.metrics:
            start = time.perf_counter()
            with stream(metric.stream) if stream is not None else nullcontext():
                values = metric.per_example(batch)
            self.states[metric.name].update(values)
            self.seconds[metric.name] += time.perf_counter() - start
        return batch

    def summary(self, prefix: str) -> tuple[dict[str, float], dict[str, dict[str, Any]]]:
        """``({prefix/name: value}, {prefix/name: uncertainty})`` from the states summed over every process.

        Every process must call it (the sum is a collective); metrics that saw no example are left out.
        """
        values, records = {}, {}
        for name, state in self.states.items():
            value, record = state.summary()
            if record["n"] > 0:
                values[f"{prefix}/{name}"], records[f"{prefix}/{name}"] = value, record
        return values, records

    def compute(self, prefix: str) -> dict[str, float]:
        """This process's numbers, not summed over processes (what a stopped evaluation reports)."""
        return {f"{prefix}/{name}": state.compute().item() for name, state in self.states.items() if int(state.count) > 0}

    def count(self) -> int:
        """Examples seen on this process (by the first metric, clean accuracy: every metric sees every example)."""
        return int(next(iter(self.states.values())).count) if self.states else 0

    def reset(self) -> None:
        for state in self.states.values():
            state.reset()
        self.seconds = dict.fromkeys(self.seconds, 0.0)

    def snapshot(self) -> dict[str, Any]:
        """The states and times as plain values (float64 sums kept exactly), for a resumable evaluation."""
        return {
            "states": {name: {"sum": float(state.sum), "sum_sq": float(state.sum_sq), "count": int(state.count)}
                       for name, state in self.states.items()},
            "seconds": dict(self.seconds),
        }

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Continue from a :meth:`snapshot` of the same metrics."""
        for name, values in snapshot["states"].items():
            state = self.states[name]
            state.sum.fill_(values["sum"])
            state.sum_sq.fill_(values["sum_sq"])
            state.count.fill_(values["count"])
        self.seconds.update(snapshot["seconds"])
