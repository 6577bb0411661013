"""RobustEvaluation: the numbers of the paper's tables, measured by one callback (DESIGN.md).

At test time it measures, on the test set (the batches of Lightning's test loop) and on the
un-augmented training set (``datamodule.train_eval_dataloader()``, the full set unless
``data.train_eval_size`` picks a fixed subset):

    train/acc, test/acc, train/adv_acc, test/adv_acc, train/lipschitz, test/lipschitz,
    gap = train/acc - test/acc, adv_gap = train/adv_acc - test/adv_acc        (percent, as the paper)

and writes them to every logger and to ``results.json``. During fitting it can also attack the
validation set every ``val_every_n_epochs`` epochs and log ``val/adv_acc``, so a run can be watched and
checkpointed on robustness.

Exactness: the test-set states are sum-state torchmetrics, exact under any number of processes; the
training-set pass runs over the whole subset in every process (a documented single-device pass).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from robustlip.attacks.base import Attack
from robustlip.metrics.robust_accuracy import CorrectFraction, SumMean
from robustlip.results import RESULT_KEYS, write_json_atomic

log = logging.getLogger(__name__)

#: ``estimator(model, x) -> per-example local Lipschitz ratios`` (see ``metrics.lipschitz``).
LipschitzEstimator = Callable[[nn.Module, Tensor], Tensor]


class _SplitMeter(nn.Module):
    """Clean accuracy, adversarial accuracy and mean Lipschitz ratio of one split."""

    def __init__(self) -> None:
        super().__init__()
        self.acc = CorrectFraction()
        self.adv_acc = CorrectFraction()
        self.lipschitz = SumMean()

    def update(self, model: nn.Module, x: Tensor, y: Tensor, attack: Attack | None, lipschitz: LipschitzEstimator | None) -> None:
        with torch.no_grad():
            self.acc.update(model(x), y)
        if attack is not None:
            x_adv = attack(model, x, y)
            with torch.no_grad():
                self.adv_acc.update(model(x_adv), y)
        if lipschitz is not None:
            self.lipschitz.update(lipschitz(model, x))

    def compute(self, prefix: str) -> dict[str, float]:
        out = {f"{prefix}/acc": self.acc.compute().item()}
        if self.adv_acc.total > 0:
            out[f"{prefix}/adv_acc"] = self.adv_acc.compute().item()
        if self.lipschitz.count > 0:
            out[f"{prefix}/lipschitz"] = self.lipschitz.compute().item()
        return out

    def reset(self) -> None:
        for metric in (self.acc, self.adv_acc, self.lipschitz):
            metric.reset()


def with_gaps(metrics: dict[str, float]) -> dict[str, float]:
    """Add the paper's generalization gaps (train − test, in percentage points) when both sides exist."""
    out = dict(metrics)
    if "train/acc" in out and "test/acc" in out:
        out["gap"] = out["train/acc"] - out["test/acc"]
    if "train/adv_acc" in out and "test/adv_acc" in out:
        out["adv_gap"] = out["train/adv_acc"] - out["test/adv_acc"]
    return out


class RobustEvaluation(pl.Callback):
    def __init__(
        self,
        attack: Attack | None,
        lipschitz: LipschitzEstimator | None = None,
        evaluate_train: bool = True,
        results_file: str | Path | None = "results.json",
        val_every_n_epochs: int = 0,
        val_max_batches: int | None = None,
        extra_results: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.attack = attack
        self.lipschitz = lipschitz
        self.evaluate_train = evaluate_train
        self.results_file = None if results_file is None else Path(results_file)
        self.val_every_n_epochs = int(val_every_n_epochs)
        self.val_max_batches = val_max_batches
        self.extra_results = dict(extra_results or {})
        self.test_meter = _SplitMeter()
        self.val_adv_acc = CorrectFraction()
        self.metrics: dict[str, float] = {}

    # -- validation: a cheap robustness signal while training -----------------------------------
    def _validating_adversarially(self, trainer: pl.Trainer) -> bool:
        return (
            self.attack is not None
            and self.val_every_n_epochs > 0
            and not trainer.sanity_checking
            and (trainer.current_epoch + 1) % self.val_every_n_epochs == 0
        )

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not self._validating_adversarially(trainer):
            return
        if self.val_max_batches is not None and batch_idx >= self.val_max_batches:
            return
        x, y = batch
        self.val_adv_acc.to(x.device)
        x_adv = self.attack(pl_module, x, y)
        with torch.no_grad():
            self.val_adv_acc.update(pl_module(x_adv), y)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not self._validating_adversarially(trainer):
            return
        pl_module.log("val/adv_acc", self.val_adv_acc.compute(), prog_bar=True, sync_dist=False)
        self.val_adv_acc.reset()

    # -- test: the paper's numbers ----------------------------------------------------------------
    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self.test_meter.to(pl_module.device)
        self.test_meter.reset()

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        x, y = batch
        self.test_meter.update(pl_module, x, y, self.attack, self.lipschitz)

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        metrics = self.test_meter.compute("test")
        if self.evaluate_train:
            metrics.update(self.evaluate_loader(pl_module, trainer.datamodule.train_eval_dataloader(), "train"))
        self.metrics = with_gaps(metrics)
        for name, value in self.metrics.items():
            pl_module.log(name, value, sync_dist=False, rank_zero_only=True)
        if self.results_file is not None and trainer.is_global_zero:
            self.write_results(trainer)

    def evaluate_loader(self, model: pl.LightningModule, loader, prefix: str) -> dict[str, float]:
        """One pass over ``loader`` measuring the same three numbers as the test loop."""
        meter = _SplitMeter().to(model.device)
        for x, y in loader:
            x, y = x.to(model.device), y.to(model.device)
            meter.update(model, x, y, self.attack, self.lipschitz)
        return meter.compute(prefix)

    def write_results(self, trainer: pl.Trainer) -> Path:
        ordered = {key: self.metrics[key] for key in RESULT_KEYS if key in self.metrics}
        payload = {
            "metrics": ordered,
            "attack": repr(self.attack),
            "epochs_trained": trainer.current_epoch,
            **self.extra_results,
        }
        path = write_json_atomic(self.results_file, payload)
        log.info("wrote %s", path)
        return path
