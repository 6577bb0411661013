"""Extra attacks on the test set, run by the evaluator next to its own: the probe protocol and the ε sweep.

A *probe* sees every test batch the evaluation sees (after the clean and the main adversarial
forward passes, whose results it may reuse), accumulates sum-state metrics (exact across processes)
and returns a JSON-able section for ``results.json``. ``max_batches`` bounds the extra cost. Its
states are torchmetrics counts, so a stopped evaluation keeps them (:meth:`Probe.snapshot`) and a
resumed one continues from them to the same section.

``EpsSweep`` answers "how does adversarial accuracy fall with the radius?": the configured attack at
every ε of a list (``variants.with_eps``), written as ``eps_sweep.csv`` and ``eps_sweep.png`` next
to ``results.json``.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from robustlip.attacks.base import Attack
from robustlip.attacks.variants import unsupported, with_eps
from robustlip.core.errors import ConfigError
from robustlip.core.files import atomic_write
from robustlip.metrics.accuracy import CorrectFraction
from robustlip.reporting.plots import plot_curve


class Probe(nn.Module):
    """Base of the test-set probes: batch budget, reset, snapshot, and the hook the evaluator calls."""

    #: Key of this probe's section in results.json.
    section = "probe"

    def __init__(self, max_batches: int | None = None) -> None:
        super().__init__()
        self.max_batches = max_batches

    def prepare(self, attack: Attack) -> None:
        """Check, before any work, what this probe can run with ``attack``: raise ConfigError for what the user
        asked and cannot have, log a skipped part that does not apply (nothing by default)."""

    def wants(self, batch_idx: int) -> bool:
        return self.max_batches is None or batch_idx < self.max_batches

    def observe(self, model: nn.Module, x: Tensor, y: Tensor, attack: Attack, clean: Tensor, adv: Tensor | None) -> None:
        """One test batch; ``clean``/``adv`` are the logits the evaluation already computed."""
        raise NotImplementedError

    def results(self) -> dict[str, Any]:
        raise NotImplementedError

    def write_files(self, directory: Path) -> list[Path]:
        """Side files next to results.json (none by default)."""
        return []

    def report(self, section: dict[str, Any]) -> None:
        """Tell the user about this probe's section (nothing by default; the checks warn)."""

    def _metrics(self) -> dict[str, Metric]:
        return {name: module for name, module in self.named_modules() if isinstance(module, Metric)}

    def reset(self) -> None:
        for metric in self._metrics().values():
            metric.reset()

    def snapshot(self) -> dict[str, Any]:
        """Every count this probe holds, as plain values (kept on disk by a resumable evaluation)."""
        return {name: {state: value.tolist() for state, value in metric.metric_state.items()}
                for name, metric in self._metrics().items()}

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Continue from a :meth:`snapshot` of the same probe, prepared for the same attack."""
        metrics = self._metrics()
        for name, states in snapshot.items():
            for state, value in states.items():
                getattr(metrics[name], state).copy_(torch.as_tensor(value))


def adversarial_logits(model: nn.Module, attack: Attack, x: Tensor, y: Tensor) -> Tensor:
    """The logits of ``model`` at ``attack``'s adversarial points (evaluation of one variant)."""
    x_adv = attack(model, x, y)
    with torch.no_grad():
        return model(x_adv)


class AccuracyCurve(nn.Module):
    """Adversarial accuracy at a fixed list of radii; ε=0 and the main attack's ε reuse computed logits."""

    def __init__(self, eps: Sequence[float]) -> None:
        super().__init__()
        if not eps:
            raise ConfigError("eps_sweep.eps=[] is not allowed; give at least one radius")
        self.eps = sorted(float(e) for e in eps)
        self.acc = nn.ModuleList(CorrectFraction() for _ in self.eps)

    def update(
        self, model: nn.Module, x: Tensor, y: Tensor, attack: Attack, adv: Tensor | None, clean: Tensor | None = None
    ) -> None:
        for eps, metric in zip(self.eps, self.acc):
            if clean is not None and eps == 0:
                metric.update(clean, y)
            elif adv is not None and abs(eps - attack.eps) < 1e-12:
                metric.update(adv, y)
            else:
                metric.update(adversarial_logits(model, with_eps(attack, eps), x, y), y)

    def points(self) -> list[dict[str, float]]:
        return [{"eps": eps, "adv_acc": metric.compute().item()} for eps, metric in zip(self.eps, self.acc)]

    def count(self) -> int:
        return int(self.acc[0].total)


class EpsSweep(Probe):
    """Adversarial test accuracy of the configured attack for a list of ε (CSV + PNG curve)."""

    section = "eps_sweep"

    def __init__(self, eps: Sequence[float], max_batches: int | None = None, filename: str = "eps_sweep") -> None:
        super().__init__(max_batches)
        self.curve = AccuracyCurve(eps)
        self.filename = filename

    def prepare(self, attack: Attack) -> None:
        reason = unsupported(attack, "eps")
        if reason is not None:
            raise ConfigError(
                f"eps_sweep: attack={type(attack).__name__} cannot be run at other radii ({reason}); use an attack with "
                "a threat model and a step size (pgd, fgsm, multi_targeted), or eps_sweep=null"
            )

    def observe(self, model, x, y, attack, clean, adv) -> None:
        self.curve.update(model, x, y, attack, adv, clean)

    def results(self) -> dict[str, Any]:
        return {"n": self.curve.count(), "points": self.curve.points()}

    def write_files(self, directory: Path) -> list[Path]:
        points = self.curve.points()
        return [write_curve_csv(points, directory / f"{self.filename}.csv"), plot_curve(points, directory / f"{self.filename}.png")]


def write_curve_csv(points: list[dict[str, float]], path: Path) -> Path:
    with atomic_write(path) as handle:
        writer = csv.DictWriter(handle, fieldnames=["eps", "adv_acc"])
        writer.writeheader()
        # Accuracies in percent to 2 decimals, as every table robustlip prints (not float32 noise: 98.66666412353516).
        writer.writerows({"eps": round(float(p["eps"]), 6), "adv_acc": round(float(p["adv_acc"]), 2)} for p in points)
    return path
